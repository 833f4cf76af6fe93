"""The MessageChanges port in memory, beside a MemoryStore whose messages it changes (as
the SQL tables beside the others). Atomic per call like the store (memory/__init__.py docstring);
held to the same contract suite as the SQL adapter (tests/contract/test_changes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from chatsrv.adapters.storage.memory.base import _atomic, _count, _Faults, _text, _ts, _uuid
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.changes import (
    DELETED,
    EDITED,
    REACTION,
    Change,
    deleted_payload,
    edited_payload,
    reaction_payload,
)
from chatsrv.domain.model import Message, Reaction


class MemoryChanges(_Faults):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._s = store

    @_atomic
    def edit_message(self, message_id: str, *, content: str, mentions: Sequence[str],
                     at: datetime) -> Message | None:
        m = self._live(message_id)
        if m is None:
            return None
        m = self._store(replace(m, content=_text(content), edited_at=_ts(at),
                                mentions=tuple(_uuid(u, "mentions") for u in mentions)))
        self._s._changes = [c for c in self._s._changes
                            if not (c.type == EDITED and c.payload["message_id"] == m.id)]
        self._log(EDITED, edited_payload(m))
        return m

    @_atomic
    def delete_message(self, message_id: str, *, by: str, at: datetime) -> Message | None:
        m = self._live(message_id)
        if m is None:
            return None
        m = self._store(replace(m, content="", mentions=(), deleted_at=_ts(at),
                                deleted_by=_uuid(by, "deleted_by")))
        self._s._reactions.pop(m.id, None)
        self._s._changes = [c for c in self._s._changes if c.payload["message_id"] != m.id]
        self._log(DELETED, deleted_payload(m))
        return m

    @_atomic
    def set_reaction(self, message_id: str, *, user_id: str, emoji: str, add: bool,
                     at: datetime) -> tuple[Message, dict[str, int], bool] | None:
        m = self._live(message_id)
        if m is None:
            return None
        uid = _uuid(user_id, "user_id")
        key = (uid, _text(emoji))
        on = self._s._reactions.setdefault(m.id, {})
        changed = (key in on) != add
        if add and changed:
            on[key] = _ts(at)
        elif changed:
            del on[key]
        counts = {r.emoji: r.count for r in _summed(on, viewer=uid)}
        if changed:
            self._log(REACTION, reaction_payload(m, user_id=uid, emoji=emoji, add=add,
                                                 counts=counts))
        return m, counts, changed

    @_atomic
    def reactions(self, message_ids: Sequence[str],
                  viewer: str) -> dict[str, tuple[Reaction, ...]]:
        out = {}
        for mid in message_ids:
            on = self._s._reactions.get(_uuid(mid, "message_id"))
            if on:
                out[mid] = _summed(on, viewer=viewer)
        return out

    @_atomic
    def changes_since(self, user_id: str, after: int, *, limit: int) -> list[Change]:
        mine = self._s._memberships.get(_uuid(user_id, "user_id"), {})
        found = [c for c in self._s._changes
                 if c.id > after and c.payload["conversation_id"] in mine]
        return found[:_count(limit, "LIMIT")]

    @_atomic
    def last_change(self) -> int:
        return self._s._change_clock

    @_atomic
    def member_ids_by_username(self, conversation_id: str,
                               usernames: Sequence[str]) -> dict[str, str]:
        conv = self._s._conversations.get(_uuid(conversation_id, "conversation_id"))
        out = {}
        for name in usernames:
            uid = self._s._usernames.get(name.lower())
            if conv is not None and uid is not None and uid in conv.members:
                out[name.lower()] = uid
        return out

    @_atomic
    def mentions_unread(self, user_id: str) -> dict[str, int]:
        return self._s._mentions_unread(_uuid(user_id, "user_id"))

    def _live(self, message_id: str) -> Message | None:
        m = self._s._messages.get(_uuid(message_id, "message_id"))
        return None if m is None or m.deleted_at is not None else m

    def _store(self, m: Message) -> Message:
        """Replace the stored message everywhere the store holds it."""
        s = self._s
        s._messages[m.id] = m
        s._conversations[m.conversation_id].messages[m.seq - 1] = m
        if m.client_msg_id is not None:
            s._by_client_id[(m.sender_id, m.client_msg_id)] = m
        return m

    def _log(self, type: str, payload: dict[str, object]) -> None:
        self._s._change_clock += 1
        self._s._changes.append(Change(self._s._change_clock, type, dict(payload)))


def _summed(on: dict[tuple[str, str], datetime], *, viewer: str) -> tuple[Reaction, ...]:
    """Per emoji: count and whether the viewer is among them, in first-reaction order."""
    first: dict[str, tuple[datetime, int, bool]] = {}
    for (uid, emoji), at in on.items():
        when, n, me = first.get(emoji, (at, 0, False))
        first[emoji] = (min(when, at), n + 1, me or uid == viewer)
    ordered = sorted(first.items(), key=lambda kv: (kv[1][0], kv[0]))
    return tuple(Reaction(emoji, n, me) for emoji, (_, n, me) in ordered)


if TYPE_CHECKING:  # satisfies its port (checked by mypy)
    from chatsrv.domain.ports import MessageChanges

    _changes: MessageChanges = MemoryChanges(MemoryStore())
