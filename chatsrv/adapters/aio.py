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
