"""Uploads over SQL (the UploadStore port), PostgreSQL and SQLite alike, and the pieces of
the message store that carry attachments (linking at commit, loading with messages).

Lists of ids are bound as one parameter: a uuid[] on PostgreSQL, a JSON array read with
json_each on SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from chatsrv.adapters.storage.base import Database, Op, Row, exec_, one, rows, val
from chatsrv.adapters.storage.rows import opt_ts, ts
from chatsrv.domain.model import Message
from chatsrv.domain.uploads import Upload, attachment_of

UPLOAD_COLS = ("id, owner_id, name, content_type, size, sha256, width, height, "
               "thumbnail_sha256, created_at, attached_at")
_U_COLS = ", ".join("u." + c.strip() for c in UPLOAD_COLS.split(","))
INSERT_UPLOAD = f"""INSERT INTO uploads ({UPLOAD_COLS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"""
GET_UPLOAD = f"SELECT {UPLOAD_COLS} FROM uploads WHERE id = $1"
USAGE = "SELECT COALESCE(sum(size), 0) FROM uploads WHERE owner_id = $1"
# the uploader, or a member of a conversation where a message carries the upload
CAN_READ = """SELECT 1 FROM uploads u WHERE u.id = $1 AND (u.owner_id = $2 OR EXISTS (
    SELECT 1 FROM message_attachments a
    JOIN messages m ON m.id = a.message_id
    JOIN conversation_members cm ON cm.conversation_id = m.conversation_id
    WHERE a.upload_id = u.id AND cm.user_id = $2))"""
INSERT_ATTACHMENT = """INSERT INTO message_attachments (message_id, upload_id, position)
VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"""
MARK_ATTACHED = "UPDATE uploads SET attached_at = $2 WHERE id = $1 AND attached_at IS NULL"
RELEASED = f"""SELECT {_U_COLS} FROM message_attachments a JOIN uploads u ON u.id = a.upload_id
WHERE a.message_id = $1 AND NOT EXISTS (
    SELECT 1 FROM message_attachments o WHERE o.upload_id = a.upload_id
                                          AND o.message_id <> a.message_id)"""
DELETE_ATTACHMENTS = "DELETE FROM message_attachments WHERE message_id = $1"
DELETE_UPLOAD = "DELETE FROM uploads WHERE id = $1"
ORPHANS = f"""SELECT {UPLOAD_COLS} FROM uploads WHERE attached_at IS NULL AND created_at < $1
ORDER BY created_at LIMIT $2"""
BLOB_IN_USE = """SELECT 1 FROM uploads WHERE sha256 = $1 OR thumbnail_sha256 = $1 LIMIT 1"""

_IN_SQLITE = "IN (SELECT value FROM json_each($1))"
UPLOADS_BY_ID = {
    "postgres": f"SELECT {UPLOAD_COLS} FROM uploads WHERE id = ANY($1::uuid[])",
    "sqlite": f"SELECT {UPLOAD_COLS} FROM uploads WHERE id {_IN_SQLITE}",
}
ATTACHMENTS_OF = {
    "postgres": f"""SELECT a.message_id, {_U_COLS} FROM message_attachments a
JOIN uploads u ON u.id = a.upload_id WHERE a.message_id = ANY($1::uuid[])
ORDER BY a.message_id, a.position""",
    "sqlite": f"""SELECT a.message_id, {_U_COLS} FROM message_attachments a
JOIN uploads u ON u.id = a.upload_id WHERE a.message_id {_IN_SQLITE}
ORDER BY a.message_id, a.position""",
}


def upload_of(r: Row) -> Upload:
    return Upload(
        id=str(r["id"]), owner_id=str(r["owner_id"]), name=r["name"],
        content_type=r["content_type"], size=int(r["size"]), sha256=r["sha256"],
        width=r["width"], height=r["height"], thumbnail_sha256=r["thumbnail_sha256"],
        created_at=ts(r["created_at"]), attached_at=opt_ts(r["attached_at"]))


def _ids(dialect: str, ids: Sequence[str]) -> object:
    return list(ids) if dialect == "postgres" else json.dumps(list(ids))


def link_attachments(message: Message) -> Op[None]:
    """In the transaction that stores `message`: its attachment rows, and the uploads
    marked as sent (no longer orphan candidates)."""
    for position, a in enumerate(message.attachments):
        yield exec_(INSERT_ATTACHMENT, message.id, a.id, position)
        yield exec_(MARK_ATTACHED, a.id, message.created_at)


def load_attachments(dialect: str, messages: list[Message]) -> Op[list[Message]]:
    """The messages with their attachments (one query for all of them)."""
    if not messages:
        return messages
    found = yield rows(ATTACHMENTS_OF[dialect], _ids(dialect, [m.id for m in messages]))
    if not found:
        return messages
    by_message: dict[str, list[Upload]] = {}
    for r in found:
        by_message.setdefault(str(r["message_id"]), []).append(upload_of(r))
    return [replace(m, attachments=tuple(attachment_of(u) for u in by_message[m.id]))
            if m.id in by_message else m for m in messages]


class SqlUploadStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_upload(self, upload: Upload) -> None:
        u = upload

        def op() -> Op[None]:
            yield exec_(INSERT_UPLOAD, u.id, u.owner_id, u.name, u.content_type, u.size,
                        u.sha256, u.width, u.height, u.thumbnail_sha256, u.created_at,
                        u.attached_at)

        await self.db.run(op())

    async def get_upload(self, upload_id: str) -> Upload | None:
        def op() -> Op[Upload | None]:
            row = yield one(GET_UPLOAD, upload_id)
            return None if row is None else upload_of(row)

        return await self.db.run(op(), write=False)

    async def get_uploads(self, upload_ids: Sequence[str]) -> list[Upload]:
        def op() -> Op[list[Upload]]:
            found = yield rows(UPLOADS_BY_ID[self.db.dialect], _ids(self.db.dialect, upload_ids))
            return [upload_of(r) for r in found]

        return await self.db.run(op(), write=False)

    async def usage(self, owner_id: str) -> int:
        def op() -> Op[int]:
            return int((yield val(USAGE, owner_id)) or 0)

        return await self.db.run(op(), write=False)

    async def can_read(self, upload_id: str, user_id: str) -> bool:
        def op() -> Op[bool]:
            return (yield val(CAN_READ, upload_id, user_id)) is not None

        return await self.db.run(op(), write=False)

    async def attachments_of(self, message_ids: Sequence[str]) -> dict[str, list[Upload]]:
        def op() -> Op[dict[str, list[Upload]]]:
            found = yield rows(ATTACHMENTS_OF[self.db.dialect],
                               _ids(self.db.dialect, message_ids))
            out: dict[str, list[Upload]] = {}
            for r in found:
                out.setdefault(str(r["message_id"]), []).append(upload_of(r))
            return out

        return await self.db.run(op(), write=False)

    async def release(self, message_id: str) -> list[Upload]:
        def op() -> Op[list[Upload]]:
            found = yield rows(RELEASED, message_id)
            yield exec_(DELETE_ATTACHMENTS, message_id)
            for r in found:
                yield exec_(DELETE_UPLOAD, r["id"])
            return [upload_of(r) for r in found]

        return await self.db.run(op())

    async def orphans(self, before: datetime, *, limit: int) -> list[Upload]:
        def op() -> Op[list[Upload]]:
            found = yield rows(ORPHANS, before, limit)
            return [upload_of(r) for r in found]

        return await self.db.run(op(), write=False)

    async def delete_uploads(self, upload_ids: Sequence[str]) -> None:
        def op() -> Op[None]:
            for upload_id in upload_ids:
                yield exec_(DELETE_UPLOAD, upload_id)

        await self.db.run(op())

    async def blob_in_use(self, sha256: str) -> bool:
        def op() -> Op[bool]:
            return (yield val(BLOB_IN_USE, sha256)) is not None

        return await self.db.run(op(), write=False)
