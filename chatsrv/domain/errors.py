"""Errors typed by meaning. Transports map them once, at the edge (transport/errors.py)."""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error a client can cause; `code` is the stable machine-readable name."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class Invalid(ChatError):
    code = "invalid_request"


class TooLarge(Invalid):
    code = "too_large"


class Unauthorized(ChatError):
    code = "unauthorized"


class Forbidden(ChatError):
    code = "forbidden"


class NotFound(ChatError):
    code = "not_found"


class Conflict(ChatError):
    code = "conflict"


class RateLimited(ChatError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=round(retry_after, 3))
        self.retry_after = retry_after


class Unavailable(ChatError):
    """A dependency (database, Redis, a peer node) cannot serve right now; try again."""

    code = "unavailable"


class Internal(ChatError):
    """A bug on our side; logged with its traceback where it was caught."""

    code = "internal"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
