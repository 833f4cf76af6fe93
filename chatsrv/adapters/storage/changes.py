"""Message changes over SQL (PostgreSQL and SQLite alike): the MessageChanges port.

Every change is one transaction: the message row (or the reaction row), then the change
log entry, whose id is taken from change_clock's single row (`TICK`) as the last statement
before the commit. That row lock orders the log: ids become visible in the order they were
handed out, so a reader at cursor N never misses an id below N that commits later
(sql/*/005_changes.sql). Lock order in every change: message row, reactions, clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from chatsrv.adapters.storage.base import Database, Op, exec_, one, rows, val
from chatsrv.adapters.storage.rows import MESSAGE_COLS, mentions_json, message_of
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

EDIT = f"""UPDATE messages SET content = $2, mentions = $3, edited_at = $4
WHERE id = $1 AND deleted_at IS NULL
RETURNING {MESSAGE_COLS}"""
DELETE = f"""UPDATE messages SET content = '', mentions = '[]', deleted_at = $3, deleted_by = $2
WHERE id = $1 AND deleted_at IS NULL
RETURNING {MESSAGE_COLS}"""
LIVE_MESSAGE = f"SELECT {MESSAGE_COLS} FROM messages WHERE id = $1 AND deleted_at IS NULL"
DROP_REACTIONS = "DELETE FROM reactions WHERE message_id = $1"
ADD_REACTION = """INSERT INTO reactions (message_id, user_id, emoji, created_at)
VALUES ($1, $2, $3, $4) ON CONFLICT (message_id, user_id, emoji) DO NOTHING
RETURNING 1"""
TAKE_REACTION = """DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3
RETURNING 1"""
COUNTS = """SELECT emoji, count(*) AS n FROM reactions WHERE message_id = $1
GROUP BY emoji ORDER BY min(created_at), emoji"""
# an edit supersedes the earlier edits of the message in the log; a delete everything of it
DROP_EDITS = "DELETE FROM message_changes WHERE message_id = $1 AND type = 'message_edited'"
DROP_CHANGES = "DELETE FROM message_changes WHERE message_id = $1"
TICK = "UPDATE change_clock SET last_id = last_id + 1 WHERE id = 1 RETURNING last_id"
LOG = """INSERT INTO message_changes (id, conversation_id, message_id, type, payload, created_at)
VALUES ($1, $2, $3, $4, $5, $6)"""
LAST_CHANGE = "SELECT last_id FROM change_clock WHERE id = 1"
CHANGES_SINCE = """SELECT c.id, c.type, c.payload FROM message_changes c
WHERE c.id > $2 AND c.conversation_id IN (
    SELECT conversation_id FROM conversation_members WHERE user_id = $1)
ORDER BY c.id LIMIT $3"""
MEMBERS_NAMED = """SELECT lower(u.username) AS name, u.id FROM users u
JOIN conversation_members m ON m.user_id = u.id AND m.conversation_id = $1
WHERE lower(u.username) IN ({names})"""
# the unread range of each conversation only (the (conversation_id, seq) index), matched
# against the JSON array of ids
MENTIONS_UNREAD = """SELECT x.conversation_id, count(*) AS n FROM conversation_members m
JOIN messages x ON x.conversation_id = m.conversation_id AND x.seq > m.read_seq
WHERE m.user_id = $1 AND x.deleted_at IS NULL AND x.mentions LIKE $2
GROUP BY x.conversation_id"""
MENTIONS_UNREAD_MANY_PG = """SELECT m.user_id, x.conversation_id, count(*) AS n
FROM conversation_members m
JOIN messages x ON x.conversation_id = m.conversation_id AND x.seq > m.read_seq
WHERE m.user_id = ANY($1::uuid[]) AND x.deleted_at IS NULL
  AND x.mentions LIKE '%"' || m.user_id::text || '"%'
GROUP BY m.user_id, x.conversation_id"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def mention_pattern(user_id: str) -> str:
    """LIKE pattern finding a user id in messages.mentions (ids hold no % or _)."""
    return f'%"{user_id}"%'


class SqlChanges:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def edit_message(self, message_id: str, *, content: str, mentions: Sequence[str],
                           at: datetime) -> Message | None:
        def op() -> Op[Message | None]:
            row = yield one(EDIT, message_id, content, mentions_json(mentions), at)
            if row is None:
                return None
            m = message_of(row)
            yield exec_(DROP_EDITS, message_id)
            yield from _log(m, EDITED, edited_payload(m), at)
            return m

        return await self.db.run(op())

    async def delete_message(self, message_id: str, *, by: str,
                             at: datetime) -> Message | None:
        def op() -> Op[Message | None]:
            row = yield one(DELETE, message_id, by, at)
            if row is None:
                return None
            m = message_of(row)
            yield exec_(DROP_REACTIONS, message_id)
            yield exec_(DROP_CHANGES, message_id)
            yield from _log(m, DELETED, deleted_payload(m), at)
            return m

        return await self.db.run(op())

    async def set_reaction(self, message_id: str, *, user_id: str, emoji: str, add: bool,
                           at: datetime) -> tuple[Message, dict[str, int], bool] | None:
        # PostgreSQL: lock the message row first, so a concurrent delete either happens
        # before (we see it deleted) or waits for this reaction (and removes it)
        lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""

        def op() -> Op[tuple[Message, dict[str, int], bool] | None]:
            row = yield one(LIVE_MESSAGE + lock, message_id)
            if row is None:
                return None
            m = message_of(row)
            if add:
                done = yield val(ADD_REACTION, message_id, user_id, emoji, at)
            else:
                done = yield val(TAKE_REACTION, message_id, user_id, emoji)
            counts = {r["emoji"]: int(r["n"]) for r in (yield rows(COUNTS, message_id))}
            changed = done is not None
            if changed:
                yield from _log(m, REACTION, reaction_payload(
                    m, user_id=user_id, emoji=emoji, add=add, counts=counts), at)
            return m, counts, changed

        return await self.db.run(op())

    async def reactions(self, message_ids: Sequence[str],
                        viewer: str) -> dict[str, tuple[Reaction, ...]]:
        if not message_ids:
            return {}
        marks = ", ".join(f"${i + 2}" for i in range(len(message_ids)))
        query = f"""SELECT message_id, emoji, count(*) AS n,
       max(CASE WHEN user_id = $1 THEN 1 ELSE 0 END) AS me
FROM reactions WHERE message_id IN ({marks})
GROUP BY message_id, emoji ORDER BY message_id, min(created_at), emoji"""

        def op() -> Op[dict[str, tuple[Reaction, ...]]]:
            out: dict[str, list[Reaction]] = {}
            for r in (yield rows(query, viewer, *message_ids)):
                out.setdefault(str(r["message_id"]), []).append(
                    Reaction(r["emoji"], int(r["n"]), bool(r["me"])))
            return {k: tuple(v) for k, v in out.items()}

        return await self.db.run(op(), write=False)

    async def changes_since(self, user_id: str, after: int, *, limit: int) -> list[Change]:
        def op() -> Op[list[Change]]:
            found = yield rows(CHANGES_SINCE, user_id, after, limit)
            return [Change(int(r["id"]), r["type"], _decode(r["payload"])) for r in found]

        return await self.db.run(op(), write=False)

    async def last_change(self) -> int:
        def op() -> Op[int]:
            return int((yield val(LAST_CHANGE)) or 0)

        return await self.db.run(op(), write=False)

    async def member_ids_by_username(self, conversation_id: str,
                                     usernames: Sequence[str]) -> dict[str, str]:
        if not usernames:
            return {}
        names = ", ".join(f"${i + 2}" for i in range(len(usernames)))

        def op() -> Op[dict[str, str]]:
            found = yield rows(MEMBERS_NAMED.format(names=names), conversation_id,
                               *[u.lower() for u in usernames])
            return {r["name"]: str(r["id"]) for r in found}

        return await self.db.run(op(), write=False)

    async def mentions_unread(self, user_id: str) -> dict[str, int]:
        def op() -> Op[dict[str, int]]:
            return (yield from mentions_unread_op(user_id))

        return await self.db.run(op(), write=False)


def mentions_unread_op(user_id: str) -> Op[dict[str, int]]:
    found = yield rows(MENTIONS_UNREAD, user_id, mention_pattern(user_id))
    return {str(r["conversation_id"]): int(r["n"]) for r in found}


def mentions_unread_many_pg(user_ids: Sequence[str]) -> Op[dict[str, dict[str, int]]]:
    """mentions_unread of several users in one statement (PostgreSQL: connects coalesced)."""
    out: dict[str, dict[str, int]] = {u: {} for u in user_ids}
    for r in (yield rows(MENTIONS_UNREAD_MANY_PG, list(user_ids))):
        out[str(r["user_id"])][str(r["conversation_id"])] = int(r["n"])
    return out


def _log(m: Message, type: str, payload: dict[str, Any], at: datetime) -> Op[None]:
    change_id = yield val(TICK)
    yield exec_(LOG, change_id, m.conversation_id, m.id, type, _encode(payload).decode(), at)
