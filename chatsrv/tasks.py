"""Lifetimes of long-lived tasks: supervision, background nurseries, retries.

- `supervised` is the one boundary a node's long-lived tasks run under: an unexpected
  exception is logged once with its traceback, counted, and the task starts again after a
  back-off; it never takes the node down. Work items inside those tasks have their own,
  narrower boundaries (a failed commit batch fails its senders; the writer goes on).
- `open_background` is a nursery for the tasks a component owns while its `async with`
  block runs, with the block's own exception coming out as itself (not wrapped in an
  ExceptionGroup), so callers can catch ConfigError, StartupError or ChatError as usual.
- `retry` runs a connection attempt until it succeeds, a permanent error, or a deadline,
  with jittered exponential back-off and one log line per failed attempt.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

log = logging.getLogger("chatsrv.tasks")

T = TypeVar("T")
MAX_RESTART_DELAY = 30.0


class StartupError(Exception):
    """The node cannot start (a port taken, a dependency unreachable or refusing us). The
    message is the one line the operator sees; it names the address or setting at fault."""


async def supervised(name: str, fn: Callable[..., Awaitable[object]], *args: Any,
                     failures: Counter[str], first_delay: float,
                     task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """Run `fn(*args, task_status=...)` forever. `task_status` is handed to the first run
    only: a failure before that run reports started is a start-up failure and raises.

    A run that returns ends the supervision. After a start, an exception other than Cancelled is logged once with its traceback,
    counted in `failures[name]`, and `fn` runs again after `first_delay` seconds, doubling
    per consecutive failure up to 30 s (a run that lasted longer than its delay resets it).
    Cancellation passes through untouched.
    """
    started = False

    def report(value: Any = None) -> None:
        nonlocal started
        started = True
        task_status.started(value)

    class _Status:
        def started(self, value: Any = None) -> None:
            report(value)

    delay = first_delay
    status: Any = _Status()
    while True:
        began = trio.current_time()
        try:
            await fn(*args, task_status=status)
        except Exception as exc:
            if not started:
                raise
            failures[name] += 1
            log.error("background task %s failed (%s: %s); restarting in %.1fs", name,
                      type(exc).__name__, exc, delay, exc_info=exc)
        else:
            return  # finished by itself (e.g. a peer link that flushed and closed)
        status = trio.TASK_STATUS_IGNORED
        if trio.current_time() - began > delay:
            delay = first_delay
        await trio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(max(delay * 2, 0.05), MAX_RESTART_DELAY)


@asynccontextmanager
async def open_background() -> AsyncIterator[trio.Nursery]:
    """A nursery for the background tasks of a component, cancelled when the block ends.

    An exception raised by the block itself propagates as itself; a background task's own
    failure still comes out as the nursery's ExceptionGroup (supervised tasks do not fail).
    """
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:  # re-raised below, outside the nursery
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error


async def retry(attempt: Callable[[], Awaitable[T]], *, what: str, deadline: float,
                transient: tuple[type[BaseException], ...],
                describe: Callable[[BaseException], str] = str,
                first_delay: float = 0.2, max_delay: float = 2.0) -> T:
    """`await attempt()` until it returns. An exception in `transient` is logged (one line)
    and retried after a jittered, doubling delay, for at most `deadline` seconds in all;
    then StartupError. Any other exception is permanent and raised at once."""
    give_up = trio.current_time() + deadline
    delay = first_delay
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except transient as exc:
            left = give_up - trio.current_time()
            if left <= 0:
                raise StartupError(f"{what}: {describe(exc)} (gave up after {tries} attempts "
                                   f"in {deadline:g}s, CONNECT_RETRY_DEADLINE)") from exc
            wait = min(delay * random.uniform(0.5, 1.5), left)
            log.warning("%s: %s; retrying in %.1fs", what, describe(exc), wait)
            await trio.sleep(wait)
            delay = min(delay * 2, max_delay)


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception in a (nested) group, in order."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def as_startup_error(group: BaseExceptionGroup[BaseException]) -> StartupError:
    """One StartupError standing for the start-up failures of a nursery (`except*` at the
    nursery's owner): the failure itself when there is one, else their messages joined."""
    found = leaves(group)
    if len(found) == 1 and isinstance(found[0], StartupError):
        return found[0]
    error = StartupError("; ".join(dict.fromkeys(str(e) for e in found)))
    error.__cause__ = group
    return error


def live_tasks() -> int:
    """Trio tasks alive in this run (the root task and everything under it), for the
    `tasks` gauge: what a soak watches for leaks. O(tasks); read at scrape time."""
    try:
        stack = [trio.lowlevel.current_root_task()]
    except RuntimeError:  # read outside a Trio run
        return 0
    count = 0
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count
