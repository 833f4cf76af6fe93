"""The one table from domain errors to HTTP status and wire error codes."""

from __future__ import annotations

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
