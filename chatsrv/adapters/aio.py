"""The asyncio side of trio-asyncio, as the node owns it.

trio-asyncio's default exception handler re-raises whatever asyncio reports without a
caller (a "Future exception was never retrieved", an error in a callback) into the loop's
nursery, which ends the whole node: seen when asyncpg's reconnect raced a PostgreSQL
shutdown (`ConnectionError: unexpected connection_lost() call`). Those errors belong to no
request; the work they were part of has already failed to its caller. So the node logs
them (one line, traceback at DEBUG) and counts them instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import trio_asyncio

log = logging.getLogger("chatsrv.asyncio")


def contain_asyncio_errors(failures: Counter[str]) -> None:
    """Install the handler on the running trio-asyncio loop (no loop: nothing to do)."""
    try:
        loop = trio_asyncio.current_loop.get()
    except LookupError:
        return
    if loop is None:
        return

    def handler(_loop: Any, context: dict[str, Any]) -> None:
        failures["asyncio"] += 1
        exc = context.get("exception")
        log.warning("asyncio: %s%s", context.get("message", "error"),
                    f" ({type(exc).__name__}: {exc})" if exc else "",
                    exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)

    loop.set_exception_handler(handler)


def raised_inside(exc: BaseException, *packages: str) -> bool:
    """True if exc was raised by code of one of these packages (the innermost frame of its
    traceback is in a module named `package` or `package.*`). For a driver's own bug on a
    connection it is dropping (an AttributeError on a connection object already set to
    None), which means "the dependency is down" there and "our bug" anywhere else."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return any(module == p or module.startswith(p + ".") for p in packages)
