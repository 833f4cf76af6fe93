"""The asyncio side of the cluster directory: every Redis command, one coroutine per
operation (each run as one trio-asyncio crossing by RedisDirectory._call, which bounds it).
What the directory (adapters/cluster/redis.py) does with them: see there.

Keys, all under `{REDIS_PREFIX}:` ("chatsrv" by default). A node *instance* is one run of
a node: NODE_ID plus a random suffix (see peers.new_instance_id).

    nodes                    hash    instance -> gRPC address, every registered instance
    node:{instance}:alive    string  its address; PX node_ttl, refreshed by its heartbeat
    node:{instance}:users    set     users with a connection on that instance
    user:{user_id}:nodes     set     instances where the user has a connection
    node:{instance}:reap     string  lock (SET NX PX node_ttl): the one node turning a dead
                                     instance's users offline
    events                   channel {"op": "up"|"down"|"on"|"off"|"members", "node", "address",
                                      "users", "conversation"}

An entry user -> instance counts only while the instance's `alive` key exists, so a node that
stops heartbeating drops out by TTL (node_ttl) even before anyone cleans up after it. The
others' node watch then reaps it: SREM takes it out of each user's set, and a user whose set
becomes empty right then is offline — exactly one node sees that transition for a user,
so nobody is announced twice (the lock only saves duplicate work).

Changes go through MULTI so a user's online/offline transition is decided atomically across
nodes (SADD/SREM then SCARD).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import msgspec
import redis.asyncio as aredis

# users per pipeline when reaping or re-registering (one MULTI per chunk)
_CHUNK = 500


class Keys:
    """Key names of one cluster (one prefix). On a Redis Cluster (`sharded`) the prefix is a
    hash tag, `{chatsrv}`: the directory's keys and its channel live in one slot, so its
    MULTI transactions (a user's set and a node's set changed together) stay on one shard.
    The directory is touched per connect, never per message (docs/cluster.md)."""

    def __init__(self, prefix: str, *, sharded: bool = False) -> None:
        prefix = f"{{{prefix}}}" if sharded else prefix
        self.prefix = prefix
        self.nodes = f"{prefix}:nodes"
        self.events = f"{prefix}:events"

    def alive(self, instance: str) -> str:
        return f"{self.prefix}:node:{instance}:alive"

    def node_users(self, instance: str) -> str:
        return f"{self.prefix}:node:{instance}:users"

    def reap(self, instance: str) -> str:
        return f"{self.prefix}:node:{instance}:reap"

    def user_nodes(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}:nodes"


class Note(msgspec.Struct, omit_defaults=True):
    """One pub/sub message: a node came up or left, users came online/offline on it, it
    changed a conversation's members (op "members": drop cached members), or it revoked
    sessions (op "revoked": close their sockets, refuse their tokens), or it changed blocks
    or privacy settings of `users` (op "privacy": drop what is cached about them)."""

    op: str
    node: str
    address: str = ""
    users: list[str] = []
    conversation: str = ""
    sessions: list[str] = []


encode = msgspec.json.Encoder().encode
decoder = msgspec.json.Decoder(Note)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class RedisOps:
    """Redis commands of one node instance. Runs on asyncio only."""

    def __init__(self, client: aredis.Redis, keys: Keys, *, instance: str, address: str,
                 ttl_ms: int, sharded: bool = False) -> None:
        self._r = client
        self._keys = keys
        # a Redis Cluster's pub/sub is sharded (SPUBLISH: the channel's slot, the channel
        # in the same slot as the keys it comes with in a MULTI)
        self._sharded = sharded
        self.instance = instance
        self.address = address
        self._ttl_ms = ttl_ms

    def note(self, op: str, *, users: Sequence[str] = (), conversation: str = "",
             sessions: Sequence[str] = ()) -> bytes:
        return encode(Note(op=op, node=self.instance, address=self.address, users=list(users),
                            conversation=conversation, sessions=list(sessions)))

    async def alive(self, instance: str) -> bool:
        return bool(await self._r.exists(self._keys.alive(instance)))

    async def publish(self, note: bytes) -> None:
        if self._sharded:
            await self._r.spublish(self._keys.events, note)
        else:
            await self._r.publish(self._keys.events, note)

    def _pub(self, pipe: Any, channel: str, note: bytes) -> None:
        if self._sharded:
            pipe.spublish(channel, note)
        else:
            pipe.publish(channel, note)

    async def set_online(self, user_id: str) -> tuple[int, int]:
        k, me = self._keys, self.instance
        async with self._r.pipeline(transaction=True) as p:
            p.sadd(k.user_nodes(user_id), me)
            p.sadd(k.node_users(me), user_id)
            p.scard(k.user_nodes(user_id))
            self._pub(p, k.events, self.note("on", users=[user_id]))
            added, _, count, _ = await p.execute()
        return added, count

    async def set_offline(self, user_id: str) -> tuple[int, int]:
        k, me = self._keys, self.instance
        async with self._r.pipeline(transaction=True) as p:
            p.srem(k.user_nodes(user_id), me)
            p.srem(k.node_users(me), user_id)
            p.scard(k.user_nodes(user_id))
            self._pub(p, k.events, self.note("off", users=[user_id]))
            removed, _, count, _ = await p.execute()
        return removed, count

    async def online(self, user_ids: list[str]) -> set[str]:
        k = self._keys
        async with self._r.pipeline(transaction=False) as p:
            for uid in user_ids:
                p.smembers(k.user_nodes(uid))
            where: list[set[str]] = await p.execute()
        instances = list(set().union(*where))
        if not instances:
            return set()
        flags = await self._r.mget([k.alive(i) for i in instances])
        alive = {i for i, flag in zip(instances, flags, strict=True) if flag is not None}
        return {uid for uid, nodes in zip(user_ids, where, strict=True) if nodes & alive}

    async def register(self, users: set[str]) -> list[str]:
        """Write this instance and exactly `users` as its users. Returns those of `users`
        that were on no instance before (back online)."""
        k, me = self._keys, self.instance
        here = sorted(users)
        stale = sorted(cast(set[str], await self._r.smembers(k.node_users(me))) - users)
        async with self._r.pipeline(transaction=True) as p:
            p.hset(k.nodes, me, self.address)
            p.set(k.alive(me), self.address, px=self._ttl_ms)
            self._pub(p, k.events, self.note("up"))
            await p.execute()
        # Every user of ours is (re)written, not only those missing: a node watch may have
        # reaped this instance in between (it stalled past NODE_TTL).
        back: list[str] = []
        for chunk in _chunks(here):
            async with self._r.pipeline(transaction=True) as p:
                for uid in chunk:
                    p.sadd(k.user_nodes(uid), me)
                    p.scard(k.user_nodes(uid))
                p.sadd(k.node_users(me), *chunk)
                self._pub(p, k.events, self.note("on", users=chunk))
                replies = (await p.execute())[:2 * len(chunk)]  # (added, count) per user
            back += [uid for uid, added, count in zip(chunk, replies[0::2], replies[1::2],
                                                      strict=True)
                     if added and count == 1]
        for chunk in _chunks(stale):
            async with self._r.pipeline(transaction=True) as p:
                for uid in chunk:
                    p.srem(k.user_nodes(uid), me)
                p.srem(k.node_users(me), *chunk)
                self._pub(p, k.events, self.note("off", users=chunk))
                await p.execute()
        return back

    async def refresh(self) -> bool:
        # XX: only if it still exists. Gone, or gone from the registry, means Redis lost this
        # instance or another node reaped it after a stall (possibly while it re-registered):
        # register again, so the others route to it and its users are listed again.
        async with self._r.pipeline(transaction=True) as p:
            p.set(self._keys.alive(self.instance), self.address, px=self._ttl_ms, xx=True)
            # HGET, not HEXISTS: redis-py's cluster transactions fail on HEXISTS' reply
            # callback (bool() given keyword arguments, redis 8.1)
            p.hget(self._keys.nodes, self.instance)
            alive, listed = await p.execute()
        return bool(alive) and listed is not None

    async def deregister(self) -> None:
        k, me = self._keys, self.instance
        left = await self._r.scard(k.node_users(me))
        async with self._r.pipeline(transaction=True) as p:
            p.delete(k.alive(me))
            if not left:
                p.hdel(k.nodes, me)
                p.delete(k.node_users(me))
            self._pub(p, k.events, self.note("down"))
            await p.execute()

    async def nodes(self) -> tuple[dict[str, str], set[str]]:
        """(registry instance -> address, the instances whose liveness key exists)."""
        k = self._keys
        registry = cast(dict[str, str], await self._r.hgetall(k.nodes))
        instances = list(registry)
        if not instances:
            return registry, set()
        flags = await self._r.mget([k.alive(i) for i in instances])
        return registry, {i for i, flag in zip(instances, flags, strict=True) if flag is not None}

    async def node_users(self, instance: str) -> set[str]:
        return cast(set[str], await self._r.smembers(self._keys.node_users(instance)))

    async def node(self, instance: str) -> tuple[str, set[str]] | None:
        """(address, users) of a live instance, or None."""
        address = cast(str | None, await self._r.get(self._keys.alive(instance)))
        if address is None:
            return None
        return address, await self.node_users(instance)

    async def view(self) -> dict[str, tuple[str, set[str]]]:
        """Every other live instance: address and users."""
        k = self._keys
        registry, alive = await self.nodes()
        live = sorted(alive - {self.instance})
        async with self._r.pipeline(transaction=False) as p:
            for instance in live:
                p.smembers(k.node_users(instance))
            users: list[set[str]] = await p.execute()
        return {i: (registry[i], set(u)) for i, u in zip(live, users, strict=True)}

    async def reap(self, instance: str) -> list[str] | None:
        """Take a dead instance out of every user's set; the users left with no instance.
        None if another node holds the reap lock."""
        k = self._keys
        if not await self._r.set(k.reap(instance), self.instance, nx=True, px=self._ttl_ms):
            return None
        users = sorted(cast(set[str], await self._r.smembers(k.node_users(instance))))
        lost: list[str] = []
        for chunk in _chunks(users):
            async with self._r.pipeline(transaction=True) as p:
                for uid in chunk:
                    p.srem(k.user_nodes(uid), instance)
                    p.scard(k.user_nodes(uid))
                replies = await p.execute()
            # removed by us and nothing left: this node announces the user offline
            lost += [uid for uid, removed, left in zip(chunk, replies[::2], replies[1::2],
                                                       strict=True) if removed and not left]
        async with self._r.pipeline(transaction=True) as p:
            p.delete(k.node_users(instance))
            p.hdel(k.nodes, instance)
            self._pub(p, k.events, encode(Note(op="down", node=instance)))
            await p.execute()
        return lost
