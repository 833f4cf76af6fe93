"""Blocks and privacy settings over SQL (PostgreSQL and SQLite alike): the Blocks port."""

from __future__ import annotations

from datetime import datetime

from chatsrv.adapters.storage.base import Database, Op, exec_, one, rows, val
from chatsrv.adapters.storage.rows import USER_COLS, ts, user_of
from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Block, Privacy, User

USER_EXISTS = "SELECT 1 FROM users WHERE id = $1"
INSERT_BLOCK = """INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3)
ON CONFLICT (blocker_id, blocked_id) DO NOTHING"""
IS_BLOCKED = "SELECT 1 FROM blocks WHERE blocker_id = $1 AND blocked_id = $2"
DELETE_BLOCK = "DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2"
MY_BLOCKS = f"""SELECT {", ".join("u." + c.strip() for c in USER_COLS.split(","))},
       b.created_at AS blocked_at
FROM blocks b JOIN users u ON u.id = b.blocked_id
WHERE b.blocker_id = $1 ORDER BY b.created_at DESC, u.id"""
BLOCKS_EITHER_WAY = """SELECT blocker_id, blocked_id FROM blocks
WHERE blocker_id = $1 OR blocked_id = $1"""
SETTINGS = "SELECT presence_visible, read_receipts_visible FROM users WHERE id = $1"
SET_DISPLAY_NAME = "UPDATE users SET display_name = $2 WHERE id = $1"
SET_PRESENCE_VISIBLE = "UPDATE users SET presence_visible = $2 WHERE id = $1"
SET_RECEIPTS_VISIBLE = "UPDATE users SET read_receipts_visible = $2 WHERE id = $1"
GET_USER = f"SELECT {USER_COLS} FROM users WHERE id = $1"


class SqlBlocks:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def block(self, blocker_id: str, blocked_id: str, *, at: datetime) -> bool:
        def op() -> Op[bool]:
            for uid in (blocker_id, blocked_id):
                if not (yield val(USER_EXISTS, uid)):
                    raise Invalid("unknown user id", code="unknown_user", field="user_id")
            if (yield val(IS_BLOCKED, blocker_id, blocked_id)):
                return False
            yield exec_(INSERT_BLOCK, blocker_id, blocked_id, at)
            return True

        return await self.db.run(op())

    async def unblock(self, blocker_id: str, blocked_id: str) -> bool:
        def op() -> Op[bool]:
            existed = yield val(IS_BLOCKED, blocker_id, blocked_id)
            if existed:
                yield exec_(DELETE_BLOCK, blocker_id, blocked_id)
            return bool(existed)

        return await self.db.run(op())

    async def list_blocks(self, blocker_id: str) -> list[Block]:
        def op() -> Op[list[Block]]:
            found = yield rows(MY_BLOCKS, blocker_id)
            return [Block(user_of(r), ts(r["blocked_at"])) for r in found]

        return await self.db.run(op(), write=False)

    async def privacy(self, user_id: str) -> Privacy:
        def op() -> Op[Privacy]:
            pairs = yield rows(BLOCKS_EITHER_WAY, user_id)
            settings = yield one(SETTINGS, user_id)
            blocked = frozenset(str(r["blocked_id"]) for r in pairs
                                if str(r["blocker_id"]) == user_id)
            blocked_by = frozenset(str(r["blocker_id"]) for r in pairs
                                   if str(r["blocked_id"]) == user_id)
            if settings is None:
                return Privacy(blocked, blocked_by)
            return Privacy(blocked, blocked_by, bool(settings["presence_visible"]),
                           bool(settings["read_receipts_visible"]))

        return await self.db.run(op(), write=False)

    async def update_profile(self, user_id: str, *, display_name: str | None = None,
                             presence_visible: bool | None = None,
                             read_receipts_visible: bool | None = None) -> User | None:
        def op() -> Op[User | None]:
            if display_name is not None:
                yield exec_(SET_DISPLAY_NAME, user_id, display_name)
            if presence_visible is not None:
                yield exec_(SET_PRESENCE_VISIBLE, user_id, presence_visible)
            if read_receipts_visible is not None:
                yield exec_(SET_RECEIPTS_VISIBLE, user_id, read_receipts_visible)
            row = yield one(GET_USER, user_id)
            return None if row is None else user_of(row)

        return await self.db.run(op())
