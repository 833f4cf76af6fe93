"""Fault injection for tests: make one call of a live component fail, once."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import trio


class Injected(RuntimeError):
    """The failure a test injected (stands for a bug nobody foresaw)."""


class Injection:
    """`raised` is set when the injected failure was raised, `recovered` when the function
    was called again afterwards (its owner went on, or was restarted)."""

    def __init__(self) -> None:
        self.raised = trio.Event()
        self.recovered = trio.Event()

    def is_set(self) -> bool:
        return self.raised.is_set()

    def should_fail(self) -> bool:
        if self.raised.is_set():
            self.recovered.set()
            return False
        self.raised.set()
        return True


def fail_once(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> Injection:
    """Replace `target.name` so that its next call raises Injected; later calls behave as
    before. Works for sync and async functions, on instances and on classes."""
    original = getattr(target, name)
    injection = Injection()

    if inspect.iscoroutinefunction(original):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if injection.should_fail():
                await trio.lowlevel.checkpoint()
                raise Injected(f"injected failure in {name}")
            return await original(*args, **kwargs)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            if injection.should_fail():
                raise Injected(f"injected failure in {name}")
            return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return injection
