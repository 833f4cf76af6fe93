"""Blocks and privacy settings in memory: the Blocks port."""

from __future__ import annotations

from datetime import datetime

from chatsrv.adapters.storage.memory.base import _atomic, _Faults, _refused, _text, _ts, _uuid
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Block, Privacy, User


class MemoryBlocks(_Faults):
    """Implements domain.ports.Blocks in memory, beside a MemoryStore whose users it
    names (blocks) and changes (privacy settings, display name)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._blocks: dict[tuple[str, str], datetime] = {}  # (blocker, blocked) -> at

    @_atomic
    def block(self, blocker_id: str, blocked_id: str, *, at: datetime) -> bool:
        """Invalid `unknown_user` for an unknown id (as the SQL store checks first)."""
        pair = (_uuid(blocker_id, "user_id"), _uuid(blocked_id, "user_id"))
        if any(uid not in self._store._users for uid in pair):
            raise Invalid("unknown user id", code="unknown_user", field="user_id")
        if pair[0] == pair[1]:
            raise _refused("a user cannot block themselves (CHECK)")
        if pair in self._blocks:
            return False
        self._blocks[pair] = _ts(at)
        return True

    @_atomic
    def unblock(self, blocker_id: str, blocked_id: str) -> bool:
        pair = (_uuid(blocker_id, "user_id"), _uuid(blocked_id, "user_id"))
        return self._blocks.pop(pair, None) is not None

    @_atomic
    def list_blocks(self, blocker_id: str) -> list[Block]:
        me = _uuid(blocker_id, "user_id")
        mine = sorted(((at, other) for (who, other), at in self._blocks.items() if who == me),
                      key=lambda pair: (-pair[0].timestamp(), pair[1]))
        return [Block(self._store._users[other].entity(), at) for at, other in mine
                if other in self._store._users]

    @_atomic
    def privacy(self, user_id: str) -> Privacy:
        me = _uuid(user_id, "user_id")
        blocked = frozenset(b for (a, b) in self._blocks if a == me)
        blocked_by = frozenset(a for (a, b) in self._blocks if b == me)
        row = self._store._users.get(me)
        if row is None:
            return Privacy(blocked, blocked_by)
        return Privacy(blocked, blocked_by, row.presence_visible, row.read_receipts_visible)

    @_atomic
    def update_profile(self, user_id: str, *, display_name: str | None = None,
                       presence_visible: bool | None = None,
                       read_receipts_visible: bool | None = None) -> User | None:
        row = self._store._users.get(_uuid(user_id, "user_id"))
        if display_name is not None:
            _text(display_name)
        if row is None:
            return None
        if display_name is not None:
            row.display_name = display_name
        if presence_visible is not None:
            row.presence_visible = presence_visible
        if read_receipts_visible is not None:
            row.read_receipts_visible = read_receipts_visible
        return row.entity()
