"""Values every backend stores alike, refused at decode time otherwise.

PostgreSQL refuses NUL in text, no encoder takes a lone surrogate, SQLite stores both: so
both are refused everywhere, with the field. Integers are 64-bit in both databases.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from chatsrv.domain.errors import Invalid

INT64_MAX = 2**63 - 1
# Sequence numbers, offsets and cursors as both databases store them (bigint).
Seq = Annotated[int, Meta(ge=0, le=INT64_MAX)]

# What msgspec raises for input it cannot take: malformed JSON, invalid UTF-8, or nesting
# deeper than the C stack allows (RecursionError at ~3,000-5,000 levels).
UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def bad_text(value: str) -> bool:
    """NUL, or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: Any, path: str = "") -> None:
    """Raise Invalid (with the field's path) for text no database can store, anywhere in a
    decoded body: struct fields, dict keys and values, list items."""
    if isinstance(value, str):
        if bad_text(value):
            raise Invalid(f"{path or 'value'} must not contain NUL characters or unpaired "
                          "surrogates", field=path or None)
    elif isinstance(value, Struct):
        for name in value.__struct_fields__:
            check_text(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, path)
            check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            check_text(item, path)


def may_hold_bad_text(data: str | bytes) -> bool:
    """In valid JSON, NUL and surrogates can only arrive as \\u escapes (raw control
    characters and invalid UTF-8 are refused by the decoder): skip the walk otherwise."""
    return ("\\u" in data) if isinstance(data, str) else (b"\\u" in data)


def utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8"
    return str(exc)
