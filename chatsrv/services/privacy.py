"""Blocking and privacy settings: the rules' data (PrivacyCache) and the use cases
(PrivacyService: block, unblock, list, PATCH /api/users/me).

A block (A blocked B) separates the pair either way: no new one_to_one, no messages into
theirs, no calls, no presence, typing or receipts of one to the other. Groups stay shared;
A's client collapses B's messages there (it knows whom A blocked from `ready.blocked`,
`GET /api/blocks` and the history's `blocked_senders`). The services that fan out ask the
cache (`of(user).barriers`) and leave the separated users out; a fan-out frame stays one
frame for all its recipients.

The cache is consulted on every node the same way: an entry is per user, versioned like
MembershipCache (a lookup that raced a change does not store what it read), dropped by a
change here or by a "privacy" note from another node (Directory.privacy_changed), not
trusted at all while notes may be missed (`confirmed` false), and bounded by `ttl`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

import trio

from chatsrv.domain.errors import Invalid, NotFound
from chatsrv.domain.model import Block, Conversation, Privacy, User, Watermarks, parse_id, utcnow
from chatsrv.domain.ports import Blocks, Router
from chatsrv.protocol.frames import BlockUpdate, Frame

MAX_DISPLAY_NAME = 64  # as at registration (services/auth.py)


class PrivacyCache:
    def __init__(self, blocks: Blocks, *, ttl: float, max_entries: int = 50_000,
                 notify: Callable[[list[str]], Awaitable[None]] | None = None,
                 confirmed: Callable[[], bool] = lambda: True) -> None:
        self._blocks = blocks
        self._ttl = ttl
        self._max = max_entries
        self._notify = notify
        self._confirmed = confirmed
        self._entries: dict[str, tuple[float, Privacy]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0
        self._invalidated = trio.lowlevel.ParkingLot()
        self._listeners: list[Callable[[Sequence[str]], None]] = []

    async def of(self, user_id: str) -> Privacy:
        """The user's blocks (either way) and settings now. Raises Unavailable."""
        now = trio.current_time()
        trusted = self._confirmed()
        if trusted:
            hit = self._entries.get(user_id)
            if hit is not None and hit[0] > now:
                return hit[1]
        generation = self._generation.get(user_id, 0), self._epoch
        found = await self._blocks.privacy(user_id)
        if trusted and self._confirmed() and \
                generation == (self._generation.get(user_id, 0), self._epoch):
            if len(self._entries) >= self._max:
                self._entries.clear()  # bounded; refills from the store
            self._entries[user_id] = (now + self._ttl, found)
        return found

    async def between(self, a: str, b: str) -> bool:
        """A block either way between a and b."""
        return b in (await self.of(a)).barriers

    def invalidate(self, user_ids: Sequence[str] | None) -> None:
        """Drop the users' entries (changed here or on another node); None drops all."""
        self._invalidated.unpark_all()
        for listener in self._listeners:
            if user_ids is not None:
                listener(user_ids)
        if user_ids is None:
            self._epoch += 1
            self._entries.clear()
            self._generation.clear()
            return
        for uid in user_ids:
            self._generation[uid] = self._generation.get(uid, 0) + 1
            self._entries.pop(uid, None)
        if len(self._generation) > self._max:
            self.invalidate(None)

    def on_changed(self, callback: Callable[[Sequence[str]], None]) -> None:
        """`callback(user_ids)` whenever these users' blocks or settings changed, here or
        on another node (it must not block: CallService queues and rechecks)."""
        self._listeners.append(callback)

    async def wait_uncached(self, user_id: str) -> None:
        """Until nothing is cached for the user (a change reached this node)."""
        while user_id in self._entries:
            await self._invalidated.park()

    def cached(self, user_id: str) -> bool:
        return user_id in self._entries

    async def changed(self, user_ids: list[str]) -> None:
        """Changed here: drop the entries and tell the other nodes (before the change is
        reported to the client)."""
        self.invalidate(user_ids)
        if self._notify is not None:
            await self._notify(user_ids)


def shown_marks(viewer: Privacy, viewer_id: str, user_id: str, marks: Watermarks,
                users: Mapping[str, User]) -> Watermarks:
    """A member's watermarks as `viewer_id` may see them: nothing of a user with a block
    either way; delivered only (read_seq 0) of a user who hides read receipts."""
    if user_id == viewer_id:
        return marks
    if user_id in viewer.barriers:
        return Watermarks(0, 0)
    user = users.get(user_id)
    if user is not None and not user.read_receipts_visible:
        return Watermarks(marks.delivered_seq, 0)
    return marks


def shown_conversation(conv: Conversation, viewer: Privacy, viewer_id: str,
                       users: Mapping[str, User]) -> Conversation:
    """The conversation with its members' watermarks as the viewer may see them."""
    members = []
    for m in conv.members:
        marks = shown_marks(viewer, viewer_id, m.user_id,
                            Watermarks(m.delivered_seq, m.read_seq), users)
        members.append(m if (marks.delivered_seq, marks.read_seq) == (m.delivered_seq, m.read_seq)
                       else replace(m, delivered_seq=marks.delivered_seq,
                                    read_seq=marks.read_seq))
    return replace(conv, members=tuple(members))


class Visibility(Protocol):
    """What PrivacyService needs from presence (PresenceService implements it)."""

    async def separated(self, a: str, b: str) -> None: ...
    async def rejoined(self, a: str, b: str) -> None: ...
    async def visibility_changed(self, user: User) -> None: ...


class PrivacyService:
    def __init__(self, store_users: Callable[[str], Awaitable[User | None]], blocks: Blocks,
                 cache: PrivacyCache, presence: Visibility, router: Router) -> None:
        self._get_user = store_users
        self._router = router
        self._blocks = blocks
        self._cache = cache
        self._presence = presence

    async def block(self, user_id: str, other_id: str) -> None:
        """Block `other_id` (idempotent). Raises Invalid (yourself), NotFound (no such
        user). My devices get `block_update`; both sides' devices stop hearing the other's
        presence at once."""
        other = await self._other(user_id, other_id)
        if await self._blocks.block(user_id, other, at=utcnow()):
            await self._cache.changed([user_id, other])
            self._router.publish([user_id], Frame(BlockUpdate(user_id=other, blocked=True)))
            await self._presence.separated(user_id, other)

    async def unblock(self, user_id: str, other_id: str) -> None:
        """Lift my block of `other_id` (idempotent); a block the other made stays."""
        other = await self._other(user_id, other_id)
        if await self._blocks.unblock(user_id, other):
            await self._cache.changed([user_id, other])
            self._router.publish([user_id], Frame(BlockUpdate(user_id=other, blocked=False)))
            if not await self._cache.between(user_id, other):
                await self._presence.rejoined(user_id, other)

    async def blocks(self, user_id: str) -> list[Block]:
        return await self._blocks.list_blocks(user_id)

    async def blocked(self, user_id: str) -> list[str]:
        """Whom the user blocked (their client collapses these users' group messages)."""
        return sorted((await self._cache.of(user_id)).blocked)

    async def update_profile(self, user_id: str, *, display_name: str | None = None,
                             presence_visible: bool | None = None,
                             read_receipts_visible: bool | None = None) -> User:
        """Change my display name and privacy settings (the fields given). Switching
        presence_visible tells my contacts at once (offline, or my real status)."""
        if display_name is not None:
            display_name = display_name.strip()
            if not 1 <= len(display_name) <= MAX_DISPLAY_NAME:
                raise Invalid(f"display_name must be 1-{MAX_DISPLAY_NAME} characters",
                              field="display_name")
        before = await self._get_user(user_id)
        if before is None:
            raise NotFound("user not found")
        user = await self._blocks.update_profile(
            user_id, display_name=display_name, presence_visible=presence_visible,
            read_receipts_visible=read_receipts_visible)
        if user is None:
            raise NotFound("user not found")
        if (user.presence_visible, user.read_receipts_visible) != \
                (before.presence_visible, before.read_receipts_visible):
            await self._cache.changed([user_id])
        if user.presence_visible != before.presence_visible:
            await self._presence.visibility_changed(user)
        return user

    async def _other(self, user_id: str, other_id: str) -> str:
        other = parse_id(other_id, "user_id")
        if other == user_id:
            raise Invalid("you cannot block yourself", field="user_id")
        if await self._get_user(other) is None:
            raise NotFound("user not found")
        return other
