"""How each call of the in-memory stores runs (package docstring): an `_atomic` body, the
`fail_next` test hook, and values refused as PostgreSQL refuses them."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import parse_id

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="_Faults")

INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class _Fault:
    error: BaseException
    committed: bool


class _Faults:
    """The fault hook shared by MemoryStore and MemoryCallLog."""

    def __init__(self) -> None:
        self._faults: dict[str, deque[_Fault]] = {}

    def fail_next(self, method: str, error: BaseException, *, committed: bool = False) -> None:
        """Test aid: the next call of `method` raises `error`, once (arm it again for more).
        committed=False: before the call changes anything (a refused or lost request);
        committed=True: after its changes are made (a COMMIT whose reply was lost).
        Raises ValueError for a name that is not a method of this store."""
        if not hasattr(getattr(type(self), method, None), "__wrapped__"):  # not _atomic
            raise ValueError(f"{type(self).__name__} has no storage method {method!r}")
        self._faults.setdefault(method, deque()).append(_Fault(error, committed))

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        return queue.popleft() if queue else None


def _atomic(
    body: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Make a synchronous body one atomic storage call (package docstring). Cancellable at
    its checkpoint only, before it starts; raises what the body raises, or an armed fault."""
    name = body.__name__

    @functools.wraps(body)
    async def call(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        await trio.lowlevel.checkpoint()
        fault = self._take_fault(name)
        if fault is not None and not fault.committed:
            raise fault.error
        result = body(self, *args, **kwargs)  # no await from here on: atomic
        if fault is not None:
            raise fault.error
        return result

    return call


# values ------------------------------------------------------------------------------------

def _refused(what: str) -> Invalid:
    return Invalid(f"the database refused a value: {what}")


def _text(value: str) -> str:
    if "\x00" in value:
        raise _refused('invalid byte sequence for encoding "UTF8": 0x00')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _refused(str(exc)) from None
    return value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _uuid(value: str, what: str) -> str:
    """A uuid column's value: canonical, or Invalid as PostgreSQL refuses it."""
    return parse_id(value, what)


def _int(value: int) -> int:
    if not INT64[0] <= value <= INT64[1]:
        raise _refused(f"{value} (value out of int64 range)")
    return value


def _count(value: int, what: str) -> int:
    """A LIMIT or OFFSET."""
    if _int(value) < 0:
        raise _refused(f"{what} must not be negative")
    return value


def _ts(value: datetime) -> datetime:
    # as both drivers store it (a naive time is taken as local time)
    return value.astimezone(UTC)


def _fold(value: str) -> str:
    return value.lower()
