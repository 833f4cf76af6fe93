"""Message changes, pure: what an emoji is, who `@username` names, the change cursor, and
the payloads of the change frames (message_edited, message_deleted, reaction_update) as
they go out live and as the change log keeps them for devices that were offline."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Message, iso

EDITED = "message_edited"
DELETED = "message_deleted"
REACTION = "reaction_update"

MAX_EMOJI_BYTES = 32
# a short code as chat clients write them (:thumbsup:, :+1:, :e-mail:)
SHORT_CODE = re.compile(r":[a-z0-9_+-]{1,30}:")
# what `@username` looks like in content (usernames: 3-32 of [A-Za-z0-9_.-]); a trailing
# dot ends a sentence, not a name
MENTION = re.compile(r"(?<![A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{3,32})")
MAX_MENTIONS = 50  # names looked up per message; more is noise, not a notification list
_CURSOR = re.compile(r"c([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: its id (the cursor position) and the frame."""

    id: int
    type: str
    payload: dict[str, Any]


def check_emoji(emoji: str) -> str:
    """The emoji as stored: one grapheme cluster of at most 32 bytes of UTF-8, or a short
    code `:name:`. Raises Invalid (field `emoji`)."""
    if not isinstance(emoji, str) or not emoji:
        raise Invalid("emoji must not be empty", field="emoji")
    if emoji.startswith(":"):
        if SHORT_CODE.fullmatch(emoji):
            return emoji
        raise Invalid("a short code is :name: with 1-30 of [a-z0-9_+-]", field="emoji")
    try:
        size = len(emoji.encode("utf-8"))
    except UnicodeEncodeError:
        raise Invalid("emoji is not valid Unicode", field="emoji") from None
    if size > MAX_EMOJI_BYTES:
        raise Invalid(f"emoji is over {MAX_EMOJI_BYTES} bytes", field="emoji")
    if not _one_grapheme(emoji):
        raise Invalid("emoji must be one character (one grapheme cluster)", field="emoji")
    return emoji


def _one_grapheme(text: str) -> bool:
    """One extended grapheme cluster, close enough for emoji (UAX #29's rules that matter
    for them): a base, then only extenders — combining marks, variation selectors, skin
    tones, tag characters, ZWJ followed by another base — or a pair of regional
    indicators (a flag). Controls and whitespace never count as a base."""
    first = text[0]
    cat = unicodedata.category(first)
    if cat[0] in "CZ" or cat[0] == "M":
        return False
    if _regional(first):
        return len(text) == 2 and _regional(text[1])
    after_zwj = False
    for ch in text[1:]:
        if after_zwj:
            if unicodedata.category(ch)[0] in "CZM":
                return False
            after_zwj = False
        elif ch == "\u200d":
            after_zwj = True
        elif not _extender(ch):
            return False
    return not after_zwj


def _regional(ch: str) -> bool:
    return "\U0001F1E6" <= ch <= "\U0001F1FF"


def _extender(ch: str) -> bool:
    return (unicodedata.category(ch) in ("Mn", "Me", "Mc")
            or "\ufe00" <= ch <= "\ufe0f"            # variation selectors
            or "\U0001F3FB" <= ch <= "\U0001F3FF"    # skin tones
            or "\U000E0020" <= ch <= "\U000E007F"    # tags (subdivision flags)
            or ch == "\u20e3")                       # keycap


def mentioned_names(content: str) -> list[str]:
    """The distinct `@username`s in content, lower-cased, in order of appearance (at most
    MAX_MENTIONS)."""
    if "@" not in content:
        return []
    names: dict[str, None] = {}
    for match in MENTION.finditer(content):
        name = match.group(1).rstrip(".").lower()
        if len(name) >= 3:
            names[name] = None
            if len(names) >= MAX_MENTIONS:
                break
    return list(names)


def encode_cursor(change_id: int) -> str:
    return f"c{change_id}"


def decode_cursor(cursor: str) -> int:
    """The change id of a cursor from `ready` or `sync_result`; raises Invalid."""
    match = _CURSOR.fullmatch(cursor) if isinstance(cursor, str) else None
    if match is None:
        raise Invalid("changes_since is not a cursor this server handed out",
                      field="changes_since")
    return int(match.group(1))


def edited_payload(m: Message) -> dict[str, Any]:
    return {"message_id": m.id, "conversation_id": m.conversation_id, "seq": m.seq,
            "content": m.content, "edited_at": iso(m.edited_at), "mentions": list(m.mentions)}


def deleted_payload(m: Message) -> dict[str, Any]:
    return {"message_id": m.id, "conversation_id": m.conversation_id, "seq": m.seq,
            "deleted_at": iso(m.deleted_at), "deleted_by": m.deleted_by}


def reaction_payload(m: Message, *, user_id: str, emoji: str, add: bool,
                     counts: dict[str, int]) -> dict[str, Any]:
    return {"message_id": m.id, "conversation_id": m.conversation_id, "seq": m.seq,
            "user_id": user_id, "emoji": emoji, "add": add, "counts": counts}


def edit_window_open(created_at: datetime, *, now: datetime, window: float) -> bool:
    """`window` seconds after sending (0: forever) a message may still be edited."""
    return window <= 0 or (now - created_at).total_seconds() <= window
