"""Presence: online while a user has a live connection anywhere; last_seen persisted.

Owns the node's PresenceBook. `run()` is the one task that turns expired grace periods
into `offline` (it lives in the services nursery); connection handlers call `connected` /
`disconnected`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import trio

from chatsrv.domain.errors import Unavailable
from chatsrv.domain.model import Privacy, User, iso, unix_ms, utcnow
from chatsrv.domain.ports import Directory, Router, Store, Subscriber
from chatsrv.domain.presence import PresenceBook, Status
from chatsrv.protocol.frames import Frame, PresenceUpdate
from chatsrv.services.privacy import PrivacyCache

log = logging.getLogger(__name__)


class PresenceService:
    def __init__(self, store: Store, router: Router, directory: Directory, *,
                 grace: float, cleanup_deadline: float,
                 privacy: PrivacyCache | None = None) -> None:
        self._store = store
        # blocks and presence_visible (None: no rules, as in bare service tests)
        self._privacy = privacy
        self._cleanup_deadline = cleanup_deadline
        self._router = router
        self._directory = directory
        self._book = PresenceBook(grace=grace)
        self._wakeup = trio.Event()

    async def connected(self, sub: Subscriber, contacts: Sequence[str] | None = None) -> None:
        """Attach a connection for delivery; the user turns online on its first one.
        `contacts`, when the caller has them already, spare a lookup for the announcement."""
        self._router.attach(sub)
        # The directory says whether the user was offline on every node (cluster: a user
        # already online elsewhere is not announced again).
        if self._book.connect(sub.user_id, sub.connection_id) and \
                await self._directory.set_online(sub.user_id):
            await self._announce(sub.user_id, Status.ONLINE, last_seen=None, contacts=contacts)

    def disconnected(self, sub: Subscriber) -> None:
        """Detach at once; the user turns offline after the grace period (see run)."""
        self._router.detach(sub)
        if self._book.disconnect(sub.user_id, sub.connection_id, now=trio.current_time()):
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: turn users whose grace ran out offline. Cancelled with the services;
        then everyone still here goes offline (shielded, within the clean-up deadline).
        A user whose offline transition fails is logged and skipped (their contacts see
        them offline on their next presence change), the others go on."""
        task_status.started()
        try:
            while True:
                deadline = self._book.next_deadline()
                with trio.move_on_at(deadline if deadline is not None else float("inf")):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                for user_id in self._book.expire(now=trio.current_time()):
                    await self._go_offline_logged(user_id)
        except trio.Cancelled:
            # Shutdown (not a failure: the supervisor restarts those with the book intact):
            # everyone still here goes offline with a persisted last_seen.
            with trio.move_on_after(self._cleanup_deadline, shield=True):
                for user_id in self._book.online_users():
                    await self._go_offline_logged(user_id)
            raise

    async def _go_offline_logged(self, user_id: str) -> None:
        try:
            await self._go_offline(user_id)
        except Unavailable as exc:
            log.warning("offline of %s not announced: %s", user_id, exc.message)
        except Exception:
            log.exception("offline of %s failed", user_id)

    async def node_lost(self, user_ids: Sequence[str]) -> None:
        """Cluster: users whose last connection was on a node that stopped heartbeating.
        The directory has taken them out already and hands each user to one node only;
        persist last_seen and tell their contacts. Users connected here are skipped."""
        for user_id in user_ids:
            if not self._book.is_online(user_id):
                await self._went_offline(user_id)

    async def users_back(self, user_ids: Sequence[str]) -> None:
        """Cluster: users of this node that the others had taken for gone (this node stalled
        past the node TTL and was reaped, which announced them offline). Still connected
        here: announce them online again."""
        for user_id in user_ids:
            if self._book.is_online(user_id):
                await self._announce(user_id, Status.ONLINE, last_seen=None)

    async def _go_offline(self, user_id: str) -> None:
        # Offline here; announced only if the user has no connection on another node either.
        if await self._directory.set_offline(user_id):
            await self._went_offline(user_id)

    async def _went_offline(self, user_id: str) -> None:
        now = utcnow()
        try:
            await self._store.set_last_seen(user_id, now)
        except Unavailable:
            # Storage down: presence still changes; last_seen is best effort here.
            log.warning("could not persist last_seen for %s: storage unavailable", user_id)
        await self._announce(user_id, Status.OFFLINE, last_seen=iso(now))

    async def _announce(self, user_id: str, status: Status, *, last_seen: str | None,
                        contacts: Sequence[str] | None = None) -> None:
        """To the user's own devices the truth; to contacts only while the user's presence
        is visible, and never to a contact with a block between them."""
        if contacts is None:
            try:
                contacts = await self._store.contacts(user_id)
            except Unavailable:
                # Storage down: only the user's own devices hear it; others see it on their
                # next GET /api/users or presence change.
                log.warning("presence of %s not announced: storage unavailable", user_id)
                contacts = []
        if contacts and self._privacy is not None:
            try:
                mine = await self._privacy.of(user_id)
            except Unavailable:
                log.warning("presence of %s not announced: storage unavailable", user_id)
                mine = Privacy(presence_visible=False)
            contacts = [c for c in contacts if c not in mine.barriers] \
                if mine.presence_visible else []
        self._router.publish([*contacts, user_id], self._frame(user_id, status, last_seen))

    @staticmethod
    def _frame(user_id: str, status: Status, last_seen: str | None) -> Frame:
        ms = unix_ms(utcnow())
        return Frame(PresenceUpdate(user_id=user_id, status=status.value,  # type: ignore[arg-type]
                                    timestamp=ms // 1000, last_seen=last_seen,
                                    timestamp_ms=ms))

    # ------------------------------------------------------------------ privacy

    async def separated(self, a: str, b: str) -> None:
        """A block now stands between a and b: each side's devices see the other offline
        (with no last_seen) from here on."""
        if b not in await self._store.contacts(a):
            return  # they never heard each other's presence
        self._router.publish([b], self._frame(a, Status.OFFLINE, None))
        self._router.publish([a], self._frame(b, Status.OFFLINE, None))

    async def rejoined(self, a: str, b: str) -> None:
        """No block between a and b any more: each side sees the other's status again
        (if that one's presence is visible)."""
        if b not in await self._store.contacts(a):
            return
        users = {u.id: u for u in await self._store.get_users([a, b])}
        online = await self._directory.online([a, b])
        for user_id, viewer in ((a, b), (b, a)):
            user = users.get(user_id)
            if user is not None and user.presence_visible:
                self._router.publish([viewer], self._current(user, online))

    async def visibility_changed(self, user: User) -> None:
        """The user switched presence_visible: contacts (but those with a block between
        them) see the real status now, or offline without last_seen."""
        contacts = await self._store.contacts(user.id)
        if self._privacy is not None:
            barriers = (await self._privacy.of(user.id)).barriers
            contacts = [c for c in contacts if c not in barriers]
        frame = (self._current(user, await self._directory.online([user.id]))
                 if user.presence_visible else self._frame(user.id, Status.OFFLINE, None))
        self._router.publish(contacts, frame)

    def _current(self, user: User, online: set[str]) -> Frame:
        if user.id in online:
            return self._frame(user.id, Status.ONLINE, None)
        return self._frame(user.id, Status.OFFLINE, iso(user.last_seen))

    async def seen(self, users: Sequence[User], *, viewer: str, members: bool = False,
                   ) -> tuple[dict[str, User], dict[str, str | None]]:
        """The users as `viewer` may see them: their status (`statuses`), and with
        `last_seen` withheld where the viewer may not see their presence. `members`: they
        all share a conversation with the viewer (no contacts lookup needed)."""
        statuses = await self.statuses(users, viewer=None if members else viewer,
                                       hidden_to=viewer)
        shown = {}
        for u in users:
            visible = u.id == viewer or (statuses[u.id] is not None
                                         and await self._visible(u, viewer))
            shown[u.id] = u if visible or u.last_seen is None else replace(u, last_seen=None)
        return shown, statuses

    async def _visible(self, user: User, viewer: str) -> bool:
        if not user.presence_visible:
            return False
        return self._privacy is None or not await self._privacy.between(viewer, user.id)

    async def statuses(self, users: Sequence[User], *, viewer: str | None = None,
                       hidden_to: str | None = None) -> dict[str, str | None]:
        """online/offline per user; with `viewer`, None for users who share no conversation
        with the viewer (presence goes to contacts only, as over the WebSocket). Offline
        for users who hide their presence or with a block between them and `viewer` (or
        `hidden_to`), but to themselves."""
        visible: set[str] | None = None
        if viewer is not None and any(u.id != viewer for u in users):
            visible = set(await self._store.contacts(viewer)) | {viewer}
        shown = [u for u in users if visible is None or u.id in visible]
        looker = viewer or hidden_to
        if looker is not None:
            shown = [u for u in shown if u.id == looker or await self._visible(u, looker)]
        online = await self._directory.online([u.id for u in shown]) if shown else set()
        out: dict[str, str | None] = {u.id: None for u in users}
        for u in users:
            if visible is None or u.id in visible:
                out[u.id] = (Status.ONLINE if u.id in online else Status.OFFLINE).value
        return out

    def is_local_online(self, user_id: str) -> bool:
        return self._book.is_online(user_id)

    def connections_here(self, user_id: str) -> int:
        """The user's connections attached on this node right now."""
        return len(self._router.local(user_id))
