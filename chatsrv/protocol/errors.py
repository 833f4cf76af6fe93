"""The one table from error to HTTP status, and the close codes a client may see.

Errors are typed by meaning in the domain (domain/errors.py) and mapped here once: a REST
answer gets `HTTP_STATUS`, a WebSocket `error` frame carries the error's `code`. Close codes
say why a socket ended and what the client should do (after Centrifuge's disconnect table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatsrv.domain.errors import (
    ChatError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)

HTTP_STATUS: dict[type[ChatError], int] = {
    TooLarge: 413,
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RateLimited: 429,
    Unavailable: 503,
}


def http_status(err: ChatError) -> int:
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]  # type: ignore[index]
    return 500  # Internal, or a ChatError without a meaning of its own


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


def error_of(err: ChatError) -> dict[str, Any]:
    return error_body(err.code, err.message, **err.details)


@dataclass(frozen=True, slots=True)
class CloseCode:
    code: int
    meaning: str
    reconnect: bool  # should the client reconnect (then `sync`)?


GOING_AWAY = CloseCode(1001, "server shutting down, or heartbeat timeout", True)
PROTOCOL_ERROR = CloseCode(1002, "WebSocket protocol violation", False)
INVALID_DATA = CloseCode(1007, "a text frame that is not UTF-8", False)
MESSAGE_TOO_BIG = CloseCode(1009, "a message far over the limit", False)
TRY_AGAIN_LATER = CloseCode(1013, "the outbox overflowed: the client read too slowly", True)
UNAUTHORIZED = CloseCode(4401, "session revoked, or token expired without `auth`: get a "
                               "new token first", True)
CLOSE_CODES = {c.code: c for c in (GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG,
                                   TRY_AGAIN_LATER, UNAUTHORIZED)}
