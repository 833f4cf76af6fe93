"""Cluster directory on Redis: who is online on which node, node liveness, and the pub/sub
feed that keeps every node's routing view (adapters/peers.py) current.

Key layout, and how a dead instance's users go offline exactly once: redis_ops.py.

Redis holds nothing acknowledged: if it is down, this node keeps serving (routing to other
nodes stalls, clients heal by sync), remembers its own users, and re-registers them when
Redis answers again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aredis
import trio
from trio_asyncio import aio_as_trio

from chatsrv.adapters.cluster.peers import ClusterRouter
from chatsrv.adapters.cluster.redis_client import _redis_down, describe_url
from chatsrv.adapters.cluster.redis_ops import Keys, RedisOps, decoder
from chatsrv.config import Settings
from chatsrv.domain.errors import Unavailable
from chatsrv.metrics import Metrics
from chatsrv.tasks import StartupError, open_background, supervised

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_CAP = 0.5  # seconds between tries to subscribe again while Redis is down


class RedisDirectory:
    """The Directory port on Redis for one node instance, and the tasks that keep it and the
    router's view current (heartbeat, pub/sub listener, node watch). Owned by
    open_redis_directory; never raises Unavailable from the port's methods (it degrades to
    what this node knows and re-registers later)."""

    def __init__(self, client: aredis.Redis, router: ClusterRouter, *, address: str,
                 settings: Settings) -> None:
        self._r = client
        self._router = router
        self.instance = router.instance
        self.address = address
        self._sharded = settings.redis_cluster
        self._keys = Keys(settings.redis_prefix, sharded=self._sharded)
        self._ops = RedisOps(client, self._keys, instance=self.instance, address=address,
                             sharded=self._sharded,
                             ttl_ms=max(1, int(settings.node_ttl * 1000)))
        self._interval = settings.node_heartbeat_interval
        self._timeout = settings.redis_timeout
        # Users with a connection here: what Redis is made to match after an outage.
        self._here: set[str] = set()
        # Redis missed some of our changes (it was down): re-register at the next heartbeat.
        self._dirty = False
        # set_online/set_offline and re-registration run one at a time, so a re-registration
        # never writes back a change made while it ran.
        self._lock = trio.Lock()
        # instances the node watch found without a liveness key once (see _watch_once)
        self._suspects: set[str] = set()
        self._members_changed: Callable[[str | None], None] | None = None
        self._sessions_revoked: Callable[[list[str]], None] | None = None
        self._privacy_changed: Callable[[list[str] | None], None] | None = None
        # subscribed to the cluster's notes right now (see `confirmed`)
        self._subscribed = False
        self.outages = 0  # times Redis was lost (for /metrics)
        self._users_back: Callable[[list[str]], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ Directory port

    async def set_online(self, user_id: str) -> bool:
        self._here.add(user_id)
        # first instance anywhere to hold the user: announce online
        return await self._transition(self._ops.set_online, user_id, left=1)

    async def set_offline(self, user_id: str) -> bool:
        self._here.discard(user_id)
        # last instance let go (changed == 0 means a node watch took the user out, and
        # announced it, already)
        return await self._transition(self._ops.set_offline, user_id, left=0)

    async def _transition(self, change: Callable[[str], Awaitable[tuple[int, int]]],
                          user_id: str, *, left: int) -> bool:
        """Apply this node's change for the user in Redis; True if it changed the user's
        state cluster-wide (this node changed the set and `left` instances remain)."""
        async with self._lock:
            if not self._dirty:
                try:
                    changed, count = await self._call(change, user_id)
                    return bool(changed) and count == left
                except Unavailable as exc:
                    self._lost_redis(exc)
        # Redis down: say what this node sees (a repeated announcement is harmless).
        return True

    async def online(self, user_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(user_ids))
        here = self._here.intersection(ids)
        if not ids:
            return here
        if not self._dirty:
            try:
                return here | await self._call(self._ops.online, ids)
            except Unavailable as exc:
                self._lost_redis(exc)
        return here | self._router.remote_online(ids)

    async def instance_alive(self, instance: str) -> bool:
        if instance == self.instance:
            return True
        try:
            return bool(await self._call(self._ops.alive, instance))
        except Unavailable as exc:
            self._lost_redis(exc)
            return instance in self._router.nodes()  # what this node last saw

    async def members_changed(self, conversation_id: str) -> None:
        try:
            await self._call(self._ops.publish, self._ops.note("members", conversation=conversation_id))
        except Unavailable as exc:
            # the other nodes' caches expire by themselves (MembershipCache ttl)
            self._lost_redis(exc)

    def on_members_changed(self, callback: Callable[[str | None], None]) -> None:
        self._members_changed = callback

    @property
    def confirmed(self) -> bool:
        """Subscribed, and Redis took every change of ours: no note can be missing."""
        return self._subscribed and not self._dirty

    async def sessions_revoked(self, session_ids: list[str]) -> None:
        try:
            await self._call(self._ops.publish, self._ops.note("revoked", sessions=session_ids))
        except Unavailable as exc:
            # the other nodes read it from the database within SESSION_POLL_INTERVAL
            self._lost_redis(exc)

    def on_sessions_revoked(self, callback: Callable[[list[str]], None]) -> None:
        self._sessions_revoked = callback

    async def privacy_changed(self, user_ids: list[str]) -> None:
        try:
            await self._call(self._ops.publish, self._ops.note("privacy", users=user_ids))
        except Unavailable as exc:
            # the other nodes' caches expire by themselves (PrivacyCache ttl)
            self._lost_redis(exc)

    def on_privacy_changed(self, callback: Callable[[list[str] | None], None]) -> None:
        self._privacy_changed = callback

    def on_users_back(self, callback: Callable[[list[str]], Awaitable[None]]) -> None:
        """`callback(user_ids)` after a re-registration found users of this node on no
        instance (they may have been announced offline meanwhile)."""
        self._users_back = callback

    # ------------------------------------------------------------------ lifetime

    async def register(self) -> None:
        """Write this instance and all its users to Redis: at start, and again when Redis
        lost them (restart, expiry) or missed changes. Raises Unavailable."""
        async with self._lock:
            back = await self._call(self._ops.register, set(self._here))
            if self._dirty:
                log.info("Redis reachable again: instance %s re-registered with %d users",
                         self.instance, len(self._here))
            self._dirty = False
        if back and self._users_back is not None:
            # on no instance until now: the others may have announced them offline (this
            # node stalled and was reaped), so say they are online
            await self._users_back(back)

    async def deregister(self) -> None:
        """Leave the cluster (shutdown): the others stop routing here at once. Users still
        registered here (presence could not finish) are turned offline by the others' node
        watch. Raises Unavailable."""
        await self._call(self._ops.deregister)

    async def run_heartbeat(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: refresh this instance's liveness every node_heartbeat_interval, and
        re-register when Redis lost it or missed changes. Survives Redis outages."""
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            try:
                refreshed = await self._call(self._ops.refresh)
                if not refreshed:
                    log.warning("instance %s was gone from Redis (Redis restarted, or this node "
                                "stalled past NODE_TTL): registering again", self.instance)
                if not refreshed or self._dirty:
                    await self.register()
            except Unavailable as exc:
                self._lost_redis(exc)

    async def run_listener(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: apply what the other nodes publish to the router's view.

        Reports started once subscribed with the view loaded (raises Unavailable if that
        fails). After a lost connection it subscribes again and reloads the view, so what
        was published meanwhile is not missed.
        """
        started = False
        delay = 0.2
        while True:
            pubsub = self._r.pubsub()
            try:
                with trio.fail_after(self._timeout):
                    subscribe = pubsub.ssubscribe if self._sharded else pubsub.subscribe
                    await aio_as_trio(subscribe)(self._keys.events)
                async for message in aio_as_trio(self._messages(pubsub)):
                    if message["type"] in ("subscribe", "ssubscribe"):
                        # Subscribed (again): load the view; messages from here on apply on
                        # top of it (each sets one fact, so replaying older ones converges).
                        self._router.replace_view(await self._call(self._ops.view))
                        self._subscribed = True
                        if started and self._members_changed is not None:
                            self._members_changed(None)  # notes may have been missed
                        if started and self._privacy_changed is not None:
                            self._privacy_changed(None)
                        if started and self._dirty:
                            # Redis is back: register the users who came meanwhile now,
                            # not at the next heartbeat (the others hear "on" notes)
                            try:
                                await self.register()
                            except Unavailable as exc:
                                self._lost_redis(exc)
                        if not started:
                            started = True
                            task_status.started()
                        delay = 0.2
                    elif message["type"] in ("message", "smessage"):
                        try:
                            await self._apply(message["data"])
                        except Exception:  # one bad note must not stop the feed
                            log.exception("applying a cluster event failed: %r",
                                          message["data"][:200])
            except Exception as exc:
                if not isinstance(exc, Unavailable) and not _redis_down(exc):
                    raise
                self._subscribed = False
                if not started:
                    raise Unavailable(
                        f"Redis pub/sub unavailable: {exc or type(exc).__name__}") from exc
                log.warning("Redis pub/sub lost (%s); subscribing again in %.1fs",
                            exc or type(exc).__name__, delay)
            finally:
                self._subscribed = False
                with trio.move_on_after(self._timeout, shield=True):
                    await aio_as_trio(pubsub.aclose)()
            await trio.sleep(delay)
            # capped low: a node finds Redis back within RECONNECT_CAP (one PING-sized try)
            delay = min(delay * 2, RECONNECT_CAP)

    def _messages(self, pubsub: Any) -> AsyncIterator[dict[str, Any]]:
        """The subscription's messages (asyncio side): a sharded one is read shard by
        shard (Redis Cluster), a plain one with listen()."""
        if not self._sharded:
            return pubsub.listen()  # type: ignore[no-any-return]

        async def sharded() -> AsyncIterator[dict[str, Any]]:
            while True:
                message = await pubsub.get_sharded_message(timeout=1.0)
                if message is not None:
                    yield message

        return sharded()

    async def watch_nodes(self, on_lost: Callable[[list[str]], Awaitable[None]], *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever, every node_heartbeat_interval: stop routing to instances whose liveness
        key expired, pick up instances the pub/sub feed missed, and reap dead instances:
        `on_lost` gets the users whose last connection was there (each user goes to one node
        only). Survives Redis outages; raises what `on_lost` raises, except Unavailable."""
        task_status.started()
        while True:
            try:
                await self._watch_once(on_lost)
            except Unavailable as exc:
                self._lost_redis(exc)
            await trio.sleep(self._interval)

    async def _watch_once(self, on_lost: Callable[[list[str]], Awaitable[None]]) -> None:
        known = self._router.nodes()
        registry, alive = await self._call(self._ops.nodes)
        # Stop routing to an instance missing twice in a row: after a Redis restart every
        # instance is missing until its next heartbeat re-registers it. (A dead instance's
        # users are reaped on its TTL alone, below.)
        gone = known - alive
        for instance in gone & self._suspects:
            log.info("instance %s stopped heartbeating: no longer routing to it", instance)
            self._router.drop_node(instance)
        self._suspects = gone - self._suspects
        for instance in alive - self._router.nodes() - {self.instance}:
            users = await self._call(self._ops.node_users, instance)
            self._router.set_node(instance, registry[instance], users)
        for instance in registry.keys() - alive - {self.instance}:
            lost = await self._call(self._ops.reap, instance)
            if lost is None:
                continue  # another node is reaping it
            log.info("reaped dead instance %s: %d users offline", instance, len(lost))
            if lost:
                try:
                    await on_lost(lost)
                except Unavailable as exc:
                    log.warning("users of dead instance %s not announced offline: %s",
                                instance, exc.message)

    # ------------------------------------------------------------------ helpers (Trio side)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one asyncio coroutine function against Redis, bounded by redis_timeout.
        Raises Unavailable when Redis is down, unreachable or too slow."""
        try:
            with trio.fail_after(self._timeout):
                return await aio_as_trio(fn)(*args)  # type: ignore[no-any-return]
        except Exception as exc:
            if not _redis_down(exc):
                raise
            raise Unavailable(f"Redis unavailable: {exc or type(exc).__name__}") from exc

    def _lost_redis(self, exc: Unavailable) -> None:
        if not self._dirty:
            self.outages += 1
            log.warning("%s; this node keeps serving its own users and re-registers them "
                        "when Redis is back", exc.message)
        self._dirty = True

    def register_metrics(self, metrics: Metrics) -> None:
        metrics.gauge("redis_up", "1 while this node hears every cluster note (subscribed, "
                      "nothing unwritten), else 0", lambda: float(self.confirmed))
        metrics.counter("redis_outages", "times this node lost Redis", lambda: self.outages)

    async def _apply(self, data: str | bytes) -> None:
        try:
            note = decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed cluster event: %r", data[:200])
            return
        if note.node == self.instance:
            return
        if note.op == "members":
            if self._members_changed is not None and note.conversation:
                self._members_changed(note.conversation)
        elif note.op == "privacy":
            if self._privacy_changed is not None and note.users:
                self._privacy_changed(note.users)
        elif note.op == "revoked":
            if self._sessions_revoked is not None and note.sessions:
                self._sessions_revoked(note.sessions)
        elif note.op == "down":
            self._router.drop_node(note.node)
        elif note.op == "up":
            self._router.set_node(note.node, note.address)
        elif note.op in ("on", "off"):
            if note.node not in self._router.nodes():
                # Not in the view (it was dropped, or joined unseen): load it whole first.
                try:
                    known = await self._call(self._ops.node, note.node)
                except Unavailable as exc:
                    self._lost_redis(exc)
                    return
                if known is None:
                    return
                self._router.set_node(note.node, *known)
            self._router.users_changed(note.node, note.users, online=note.op == "on")



@asynccontextmanager
async def open_redis_directory(client: aredis.Redis, settings: Settings, router: ClusterRouter,
                               *, address: str,
                               failures: Counter[str]) -> AsyncIterator[RedisDirectory]:
    """Own the directory's tasks for the block (supervised).

    On entry: subscribe and load the view, register this instance at `address`, start
    heartbeating (raises StartupError if Redis fails meanwhile). On exit: leave the cluster
    (shielded, REDIS_TIMEOUT).
    """
    directory = RedisDirectory(client, router, address=address, settings=settings)
    supervise = partial(supervised, failures=failures, first_delay=settings.task_restart_delay)
    async with open_background() as nursery:
        try:
            await nursery.start(supervise, "redis-listener", directory.run_listener)
            await directory.register()
        except Unavailable as exc:
            raise StartupError(f"{describe_url(settings.redis_url or '')}: {exc.message}") from exc
        await nursery.start(supervise, "redis-heartbeat", directory.run_heartbeat)
        log.info("cluster member %s at %s (Redis prefix %r)", directory.instance, address,
                 settings.redis_prefix)
        try:
            yield directory
        finally:
            with trio.move_on_after(settings.redis_timeout, shield=True):
                try:
                    await directory.deregister()
                except Unavailable as exc:
                    log.warning("could not leave the cluster cleanly: %s", exc.message)
