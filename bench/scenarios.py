"""The scenarios. Each one sets up its own accounts and conversations, measures inside a
window (CPU and RSS of the server over exactly that window), tears its sockets down and
returns {"params", "rows", ...}: one row per case for the table, with latency summaries
(ms), counts, rates and its target.

Latency is measured with perf_counter_ns stamps: the send time rides in the frame's `ref`
(echoed in `message_ack`) and at the head of the message content (seen by receivers).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed

from bench.client import (
    CONNECT_FAILURES,
    User,
    Ws,
    chat_frame,
    close_many,
    decode_ack,
    decode_error,
    decode_message,
    decode_sync,
    idle_client,
    ping_frame,
    stamp_of,
    stamped,
    sync_frame,
)
from bench.runner import Ctx, Scale, wait_until
from bench.stats import Timeline, rate, stage_breakdown, stage_histograms, summarize
from chatsrv.protocol import frames

Frame = Callable[[frames.Envelope, int], None]


def _ms(ns: int) -> float:
    return ns / 1e6


def _pad(ctx: Ctx) -> int:
    return max(0, ctx.scale.content_chars - 20)


async def _pump(ws: Ws, on_frame: Frame, closed: list[int] | None = None) -> None:
    """Feed every frame of `ws` to on_frame until the socket closes. A close that is not
    our own normal one (1000) has its code appended to `closed` (1013: evicted as a slow
    consumer)."""
    try:
        while True:
            env, t = await ws.recv()
            on_frame(env, t)
    except ConnectionClosed as exc:
        code = exc.reason.code if exc.reason else 0
        if closed is not None and code != 1000:
            closed.append(code)


async def _send(ws: Ws, text: str) -> None:
    # Shielded: a send cancelled half-way would leave a torn frame on the socket.
    with trio.CancelScope(shield=True):
        await ws.send(text)


def _target(text: str, measured: Any, ok: bool | None) -> dict[str, Any]:
    return {"text": text, "measured": measured, "ok": ok}


def _lat_ok(summary: dict[str, Any], key: str, limit_ms: float) -> bool | None:
    value = summary.get(key)
    return None if value is None else value <= limit_ms


# ---------------------------------------------------------------------------- 1


async def _send_stages(ctx: Ctx) -> dict[str, dict[str, Any]]:
    """The server's per-stage send histograms now ({} from a server without them)."""
    try:
        r = await ctx.rest.http.get("/metrics")
        return stage_histograms(r.text) if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


async def latency_1to1(ctx: Ctx) -> dict[str, Any]:
    """10 pairs in one_to_one conversations; 20 msg/s in total, paced (open loop), each
    pair's two users taking turns; send -> ack and send -> receive latency, and the
    server's own breakdown of the same sends by stage (chatsrv_send_stage_seconds)."""
    s = ctx.scale
    pairs = s.latency_pairs
    users = await ctx.register(2 * pairs)
    cids = await ctx.rest.pairs(users)
    total = int(s.latency_rate * s.latency_duration)
    acks: list[float] = []
    recv: list[float] = []
    errors: list[str] = []

    def on_frame(env: frames.Envelope, t: int) -> None:
        if env.type == "message_ack":
            acks.append(_ms(t - int(env.ref)))  # type: ignore[arg-type]
        elif env.type == "new_message":
            recv.append(_ms(t - stamp_of(decode_message(env.payload).content)))
        elif env.type == "error":
            errors.append(decode_error(env.payload).code)

    async with trio.open_nursery() as nursery:
        socks = await ctx.connect_many(nursery, users)
        for w in socks:
            nursery.start_soon(_pump, w, on_frame)
        sent = 0
        stages_before = await _send_stages(ctx)
        with ctx.status_during(lambda: f"sent {sent}/{total} acked {len(acks)} "
                               f"received {len(recv)}"):
            window = ctx.begin()
            start = trio.current_time()
            for i in range(total):
                await trio.sleep_until(start + i / s.latency_rate)
                p, turn = i % pairs, (i // pairs) % 2
                t = time.perf_counter_ns()
                await _send(socks[2 * p + turn], chat_frame(
                    cids[p], stamped(t, _pad(ctx)), ref=t, client_msg_id=f"l{i}"))
                sent += 1
            await wait_until(lambda: len(acks) >= total and len(recv) >= total, 10)
            usage = ctx.end(window)
        stages = stage_breakdown(stages_before, await _send_stages(ctx))
        await close_many(socks)
        nursery.cancel_scope.cancel()

    ack_s, recv_s = summarize(acks), summarize(recv)
    counts = {"sent": total, "acked": len(acks), "received": len(recv), "errors": len(errors),
              "sockets": len(users)}
    return {
        "params": {"pairs": pairs, "rate_per_s": s.latency_rate,
                   "duration_s": s.latency_duration},
        "rows": [
            {"case": "send → ack", "latency_ms": ack_s, "counts": counts, "usage": usage,
             "target": _target("p99 ≤ 5 ms", ack_s["p99"], _lat_ok(ack_s, "p99", 5))},
            {"case": "send → receive", "latency_ms": recv_s, "counts": counts, "usage": usage,
             "target": _target("p99 ≤ 5 ms", recv_s["p99"], _lat_ok(recv_s, "p99", 5))},
        ],
        "error_codes": sorted(set(errors)),
        "send_stages": stages,
    }


# ---------------------------------------------------------------------------- 2


async def throughput_1to1(ctx: Ctx) -> dict[str, Any]:
    """Pairs in one_to_one conversations; in each stage N senders each keep `window`
    un-acked messages in flight (closed loop) for stage_duration seconds. Stages grow N until
    two in a row add under 5%; the best stage is the saturation point. Every stage drains
    (all acked, all delivered) before the next."""
    s = ctx.scale
    most = max(s.throughput_stages)
    users = await ctx.register(2 * most)
    cids = await ctx.rest.pairs(users)
    win_size = s.throughput_window
    # parallel arrays: (send ns, ack ns) and (send ns, receive ns)
    ack_sent: list[int] = []
    ack_at: list[int] = []
    rcv_sent: list[int] = []
    rcv_at: list[int] = []
    errors: list[str] = []
    closed: list[int] = []
    duplicates = 0
    windows = [trio.Semaphore(win_size) for _ in range(most)]
    timeline = Timeline(time.perf_counter_ns())

    def on_sender(i: int) -> Frame:
        def on_frame(env: frames.Envelope, t: int) -> None:
            nonlocal duplicates
            if env.type == "message_ack":
                duplicates += decode_ack(env.payload).duplicate
                ack_sent.append(int(env.ref))  # type: ignore[arg-type]
                ack_at.append(t)
                timeline.add("acked", t)
                windows[i].release()
            elif env.type == "error":
                errors.append(decode_error(env.payload).code)
                windows[i].release()
        return on_frame

    def on_receiver(env: frames.Envelope, t: int) -> None:
        if env.type == "new_message":
            rcv_sent.append(stamp_of(decode_message(env.payload).content))
            rcv_at.append(t)
            timeline.add("delivered", t)

    sent = 0

    numbering = [itertools.count() for _ in range(most)]  # client_msg_ids span the stages

    async def sender(i: int, ws: Ws) -> None:
        nonlocal sent
        for k in numbering[i]:
            await windows[i].acquire()
            t = time.perf_counter_ns()
            await _send(ws, chat_frame(cids[i], stamped(t, _pad(ctx)), ref=t,
                                       client_msg_id=f"t{i}.{k}"))
            sent += 1

    stages: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        socks = await ctx.connect_many(nursery, users)
        for i in range(most):
            nursery.start_soon(_pump, socks[2 * i], on_sender(i), closed)
            nursery.start_soon(_pump, socks[2 * i + 1], on_receiver, closed)
        best: dict[str, Any] | None = None
        flat = 0
        for n in s.throughput_stages:
            def show(n: int = n) -> str:
                return f"{n} senders: sent {sent} acked {len(ack_at)} delivered {len(rcv_at)}"

            with ctx.status_during(show):
                async with trio.open_nursery() as load:
                    for i in range(n):
                        load.start_soon(sender, i, socks[2 * i])
                    await trio.sleep(s.warmup)
                    window = ctx.begin()
                    t0 = time.perf_counter_ns()
                    await trio.sleep(s.throughput_stage_duration)
                    t1 = time.perf_counter_ns()
                    usage = ctx.end(window)
                    load.cancel_scope.cancel()
                drained = await wait_until(
                    lambda: all(w.value == win_size for w in windows)
                    and len(rcv_at) >= len(ack_at), 15)
            stage = _stage(n, t0, t1, ack_sent, ack_at, rcv_sent, rcv_at, usage)
            stage["drained"] = drained
            stage["window_s"] = [round((t - timeline.t0_ns) / 1e9, 2) for t in (t0, t1)]
            stages.append(stage)
            ctx.progress.log(f"  {n} senders: {stage['acked_per_s']} acked/s, "
                             f"{stage['delivered_per_s']} delivered/s, ack p99 "
                             f"{stage['ack_ms']['p99']} ms")
            if best is None or stage["acked_per_s"] > best["acked_per_s"] * 1.05:
                best, flat = stage, 0
            else:
                flat += 1
                if flat >= 2:
                    break
        await close_many(socks)
        nursery.cancel_scope.cancel()

    assert best is not None
    persisted = min(best["acked_per_s"], best["delivered_per_s"])
    counts = {"sent": sent, "acked": len(ack_at), "received": len(rcv_at),
              "errors": len(errors), "duplicate_acks": duplicates,
              "closed_by_server": len(closed), "senders": best["senders"],
              "in_flight": best["senders"] * win_size}
    return {
        "params": {"stages": list(s.throughput_stages), "window": win_size,
                   "stage_duration_s": s.throughput_stage_duration},
        "stages": [{k: v for k, v in st.items() if k not in ("ack_ms", "receive_ms")}
                   | {"ack_ms": _no_cdf(st["ack_ms"]), "receive_ms": _no_cdf(st["receive_ms"])}
                   for st in stages],
        "rows": [
            {"case": f"send → ack at saturation ({best['senders']} senders x {win_size} in flight)",
             "latency_ms": best["ack_ms"], "counts": counts, "usage": best["usage"],
             "rate": {"acked_per_s": best["acked_per_s"],
                      "delivered_per_s": best["delivered_per_s"]},
             "target": _target("≥ 3,000 persisted msg/s", persisted, persisted >= 3000)},
            {"case": "send → receive at saturation", "latency_ms": best["receive_ms"],
             "counts": counts, "usage": best["usage"],
             "rate": {"acked_per_s": best["acked_per_s"],
                      "delivered_per_s": best["delivered_per_s"]}},
        ],
        "timeline": timeline.rates(),
        "error_codes": sorted(set(errors)),
    }


def _stage(n: int, t0: int, t1: int, ack_sent: list[int], ack_at: list[int],
           rcv_sent: list[int], rcv_at: list[int], usage: dict[str, Any]) -> dict[str, Any]:
    seconds = (t1 - t0) / 1e9
    acked = sum(1 for t in ack_at if t0 <= t < t1)
    delivered = sum(1 for t in rcv_at if t0 <= t < t1)
    ack_ms = [_ms(b - a) for a, b in zip(ack_sent, ack_at, strict=True) if t0 <= a < t1]
    rcv_ms = [_ms(b - a) for a, b in zip(rcv_sent, rcv_at, strict=True) if t0 <= a < t1]
    return {"senders": n, "seconds": round(seconds, 2), "acked": acked,
            "delivered": delivered, "acked_per_s": rate(acked, seconds),
            "delivered_per_s": rate(delivered, seconds), "ack_ms": summarize(ack_ms),
            "receive_ms": summarize(rcv_ms), "usage": usage}


def _no_cdf(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "cdf"}


# ---------------------------------------------------------------------------- 3


async def group_fanout(ctx: Ctx) -> dict[str, Any]:
    """A group of N members (one per size), one sender, one message at a time: the time from
    send until the last of the N-1 other members has it. Members connect before the group
    is created, so set-up does not include N² presence announcements."""
    s = ctx.scale
    rows = []
    for size in s.fanout_sizes:
        rows.append(await _fanout_one(ctx, size))
        if size >= 500:
            ctx.closed_many()
        await ctx.settle()
    return {"params": {"sizes": list(s.fanout_sizes), "messages": s.fanout_messages,
                       "duration_s": s.fanout_duration}, "rows": rows}


async def _fanout_one(ctx: Ctx, size: int) -> dict[str, Any]:
    s = ctx.scale
    users = await ctx.register(size, f"{size} members")
    others = size - 1
    member_ms: list[float] = []
    all_ms: list[float] = []
    ack_ms: list[float] = []
    state = {"stamp": 0, "got": 0, "last": 0}
    done = trio.Event()
    closed: list[int] = []
    incomplete = 0

    def on_member(env: frames.Envelope, t: int) -> None:
        if env.type != "new_message":
            return
        st = stamp_of(decode_message(env.payload).content)
        member_ms.append(_ms(t - st))
        if st == state["stamp"]:
            state["got"] += 1
            state["last"] = max(state["last"], t)
            if state["got"] == others:
                done.set()

    def on_sender(env: frames.Envelope, t: int) -> None:
        if env.type == "message_ack":
            ack_ms.append(_ms(t - int(env.ref)))  # type: ignore[arg-type]

    # cluster mode: each member's latency also by whether it is on the sender's node
    split = len(ctx.nodes) > 1
    by_node: dict[bool, list[float]] = {False: [], True: []}  # cross-node? -> ms

    def on_member_at(remote: bool) -> Frame:
        def on_frame(env: frames.Envelope, t: int) -> None:
            before = len(member_ms)
            on_member(env, t)
            if len(member_ms) > before:
                by_node[remote].append(member_ms[-1])
        return on_frame

    async with trio.open_nursery() as nursery:
        with ctx.status_during(lambda: f"{size} members: connecting"):
            socks = await ctx.connect_many(nursery, users)
        home = ctx.node_of(users[0])
        cid = await ctx.rest.conversation(users[0], users[1:], group=True,
                                          name=f"fanout {size}")
        nursery.start_soon(_pump, socks[0], on_sender)
        for w in socks[1:]:
            nursery.start_soon(_pump, w, on_member if not split
                               else on_member_at(ctx.node_of(w.user) != home), closed)
        warm = 3
        sent = 0
        with ctx.status_during(lambda: f"{size} members: message {sent}/{s.fanout_messages}, "
                               f"last all-have-it {all_ms[-1] if all_ms else 0:.1f} ms"):
            window = None
            deadline = trio.current_time() + s.fanout_duration
            for k in range(warm + s.fanout_messages):
                if k == warm:
                    window = ctx.begin()
                    member_ms.clear()
                    ack_ms.clear()
                    by_node[False].clear()
                    by_node[True].clear()
                    deadline = trio.current_time() + s.fanout_duration
                elif k > warm and trio.current_time() >= deadline:
                    break
                done = trio.Event()
                t = time.perf_counter_ns()
                state.update(stamp=t, got=0, last=0)
                await _send(socks[0], chat_frame(cid, stamped(t, _pad(ctx)), ref=t,
                                                 client_msg_id=f"f{k}"))
                with trio.move_on_after(10):
                    await done.wait()
                if k >= warm:
                    sent += 1
                    if done.is_set():
                        all_ms.append(_ms(state["last"] - t))
                    else:
                        incomplete += 1
            assert window is not None
            usage = ctx.end(window)
        await close_many(socks)
        nursery.cancel_scope.cancel()

    summary = summarize(all_ms)
    limit = 15.0 if size <= 50 else 150.0 if size <= 1000 else None
    nodes = {"same_node_member_latency_ms": summarize(by_node[False]),
             "cross_node_member_latency_ms": summarize(by_node[True])} if split else {}
    return nodes | {
        "case": f"{size} members: send → all {others} have it",
        "members": size,
        "latency_ms": summary,
        "member_latency_ms": summarize(member_ms),
        "ack_latency_ms": summarize(ack_ms),
        "counts": {"messages": sent, "deliveries": len(member_ms), "incomplete": incomplete,
                   "sockets": size, "closed_by_server": len(closed)},
        "rate": {"deliveries_per_s": rate(len(member_ms), usage["wall_s"])},
        "usage": usage,
        "target": (_target(f"p99 ≤ {limit:.0f} ms", summary["p99"],
                           _lat_ok(summary, "p99", limit) and incomplete == 0)
                   if limit and size in (50, 1000) else None),
    }


# ---------------------------------------------------------------------------- 4


async def broadcast_throughput(ctx: Ctx) -> dict[str, Any]:
    """4 senders in a 50-member group, each with at most `window` messages that some member
    has not received yet (closed loop on full delivery, so no member's outbox can overflow);
    deliveries per second across all 50 sockets."""
    s = ctx.scale
    size, n_send, win_size = s.broadcast_members, s.broadcast_senders, s.broadcast_window
    users = await ctx.register(size, f"{size} members")
    others = size - 1
    windows = [trio.Semaphore(win_size) for _ in range(n_send)]
    pending: dict[str, list[int]] = {}  # client_msg_id -> [deliveries missing, sender]
    ack_ms: list[float] = []
    rcv_sent: list[int] = []
    rcv_at: list[int] = []
    closed: list[int] = []
    errors: list[str] = []
    acked = 0
    timeline = Timeline(time.perf_counter_ns())

    def on_frame(env: frames.Envelope, t: int) -> None:
        nonlocal acked
        if env.type == "new_message":
            m = decode_message(env.payload)
            rcv_sent.append(stamp_of(m.content))
            rcv_at.append(t)
            timeline.add("deliveries", t)
            entry = pending.get(m.client_msg_id or "")
            if entry is not None:
                entry[0] -= 1
                if entry[0] == 0:
                    del pending[m.client_msg_id or ""]
                    windows[entry[1]].release()
        elif env.type == "message_ack":
            acked += 1
            ack_ms.append(_ms(t - int(env.ref)))  # type: ignore[arg-type]
            timeline.add("acked", t)
        elif env.type == "error":
            errors.append(decode_error(env.payload).code)

    async def sender(i: int, ws: Ws) -> None:
        for k in itertools.count():
            await windows[i].acquire()
            t = time.perf_counter_ns()
            cmid = f"b{i}.{k}"
            pending[cmid] = [others, i]
            await _send(ws, chat_frame(cid, stamped(t, _pad(ctx)), ref=t, client_msg_id=cmid))

    async with trio.open_nursery() as nursery:
        socks = await ctx.connect_many(nursery, users)
        cid = await ctx.rest.conversation(users[0], users[1:], group=True, name="broadcast")
        for w in socks:
            nursery.start_soon(_pump, w, on_frame, closed)
        with ctx.status_during(lambda: f"acked {acked} deliveries {len(rcv_at)}"):
            async with trio.open_nursery() as load:
                for i in range(n_send):
                    load.start_soon(sender, i, socks[i])
                await trio.sleep(s.warmup)
                window = ctx.begin()
                t0 = time.perf_counter_ns()
                acked0 = acked
                await trio.sleep(s.broadcast_duration)
                t1 = time.perf_counter_ns()
                usage = ctx.end(window)
                acked1 = acked
                load.cancel_scope.cancel()
            drained = await wait_until(lambda: not pending, 15)
        await close_many(socks)
        nursery.cancel_scope.cancel()

    seconds = (t1 - t0) / 1e9
    delivered = sum(1 for t in rcv_at if t0 <= t < t1)
    rcv_ms = [_ms(b - a) for a, b in zip(rcv_sent, rcv_at, strict=True) if t0 <= a < t1]
    per_s = rate(delivered, seconds)
    summary = summarize(rcv_ms)
    return {
        "params": {"members": size, "senders": n_send, "window": win_size,
                   "duration_s": s.broadcast_duration},
        "rows": [{
            "case": f"{n_send} senders → {size}-member group: send → receive",
            "latency_ms": summary,
            "ack_latency_ms": summarize(ack_ms),
            "counts": {"acked": acked, "deliveries": len(rcv_at),
                       "expected_deliveries": acked * others, "undelivered": len(pending),
                       "drained": drained, "closed_by_server": len(closed),
                       "errors": len(errors), "sockets": size},
            "rate": {"deliveries_per_s": per_s,
                     "messages_per_s": rate(acked1 - acked0, seconds)},
            "usage": usage,
            "target": _target("≥ 60,000 deliveries/s", per_s, per_s >= 60_000),
        }],
        "timeline": timeline.rates(),
        "error_codes": sorted(set(errors)),
    }


# ---------------------------------------------------------------------------- 5


async def idle_connections(ctx: Ctx) -> dict[str, Any]:
    """Authenticated sockets of users with no conversations, held idle: 2,000, then 8,000
    more (10,000 in all). Each level is held `hold` seconds (long enough for the server's
    WebSocket pings, which trio-websocket answers); server RSS growth per socket since
    before the first socket; at the end of each hold every socket so far must answer a
    `ping` frame with `pong`. Sockets are spread over at most idle_users_max accounts (more
    sockets than that: users with several devices)."""
    s = ctx.scale
    counts = sorted(s.idle_counts)
    accounts = await ctx.lonely_users(min(max(counts), s.idle_users_max))
    rows = await _idle_levels(ctx, counts, lambda i: accounts[i % len(accounts)])
    return {"params": {"counts": counts, "hold_s": s.idle_hold,
                       "users_max": s.idle_users_max}, "rows": rows}


async def idle_multi_device(ctx: Ctx) -> dict[str, Any]:
    """The multi-device population: `multi_per_user` sockets per user (phones, laptops,
    tabs), every user in `multi_conversations` groups of 10, so each connect announces
    presence to contacts and its `ready` lists 50 conversations. 2,000 sockets, then
    10,000, held idle as in idle_connections: memory per socket and connect time."""
    s = ctx.scale
    counts = sorted(s.multi_counts)
    users = await ctx.register(max(1, -(-max(counts) // s.multi_per_user)), "devices' users")
    size = min(10, len(users))
    groups = max(1, len(users) * s.multi_conversations // size)
    made = 0

    async def group(k: int) -> None:
        nonlocal made
        start = (k * size // s.multi_conversations + k) % len(users)
        members = [users[(start + j) % len(users)] for j in range(size)]
        await ctx.rest.conversation(members[0], members[1:], group=True, name=f"g{k}")
        made += 1

    with ctx.status_during(lambda: f"creating groups {made}/{groups}"):
        async with trio.open_nursery() as nursery:
            for k in range(groups):
                nursery.start_soon(group, k)
    rows = await _idle_levels(  # socket i is user i // per_user's: 40 per user at every level
        ctx, counts, lambda i: users[i // s.multi_per_user], per_socket_target=16,
        connect_targets={2000: 2.0, 10000: 8.0})
    return {"params": {"counts": counts, "hold_s": s.idle_hold, "per_user": s.multi_per_user,
                       "conversations": s.multi_conversations, "users": len(users)},
            "rows": rows}


async def _idle_levels(ctx: Ctx, counts: list[int], owner: Callable[[int], User], *,
                       per_socket_target: float | None = None,
                       connect_targets: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """Open sockets level by level (each level adds to the last), hold each idle."""
    await ctx.settle()
    rss0 = ctx.rss()
    rows = []
    socks: list[Ws] = []
    failures: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        for n in counts:
            users = [owner(i) for i in range(len(socks), n)]

            def show(n: int = n) -> str:
                return f"connecting up to {n} sockets"

            with ctx.status_during(show):
                t0 = time.perf_counter_ns()
                # a client with a reader of its own whatever --client says (not the lean
                # one): it answers the server's heartbeat pings while the socket idles
                socks += await ctx.connect_many(nursery, users, queue=4,
                                            concurrency=100, failures=failures,
                                            kind=idle_client())
                connect_s = (time.perf_counter_ns() - t0) / 1e9
            row = await _idle_hold(ctx, n, socks, len({w.user.id for w in socks}), failures,
                                   rss0, connect_s, len(users))
            if per_socket_target is not None:
                per = row["memory"]["kib_per_connection"]
                limit = (connect_targets or {}).get(n)
                fast = limit is None or connect_s <= limit
                row["target"] = _target(
                    f"≤ {per_socket_target:g} KiB/socket"
                    + (f", ready in ≤ {limit:g} s" if limit else "") + ", all alive",
                    per, per is not None and per <= per_socket_target and fast
                    and row["counts"]["answered_ping"] == n)
            rows.append(row)
        with ctx.status_during(lambda: f"closing {len(socks)} sockets"):
            await close_many(socks)
        nursery.cancel_scope.cancel()
    ctx.closed_many()
    return rows


async def _idle_hold(ctx: Ctx, n: int, socks: list[Ws], users: int,
                     failures: dict[str, int], rss0: int | None, connect_s: float,
                     added: int) -> dict[str, Any]:
    s = ctx.scale
    window = ctx.begin()
    end = trio.current_time() + s.idle_hold
    with ctx.status_during(lambda: f"{len(socks)} sockets held, "
                           f"{max(0, end - trio.current_time()):.0f}s left"):
        await trio.sleep_until(end)
    rss1 = ctx.rss()
    usage = ctx.end(window)
    open_at_end = sum(1 for w in socks if not w.closed)
    alive = 0
    with ctx.status_during(lambda: f"{len(socks)} sockets: ping/pong {alive}"):
        alive = await _ping_all(socks)
    held = len(socks)
    per_conn = (None if rss0 is None or rss1 is None or not held
                else round((rss1 - rss0) / held / 1024, 2))
    target = None
    if n >= 10_000:
        target = _target("≤ 25 KiB/conn, all alive", per_conn,
                         per_conn is not None and per_conn <= 25 and alive == n)
    return {
        "case": f"{n} idle sockets ({users} users) held {s.idle_hold:.0f}s",
        "sockets": n,
        "counts": {"sockets": n, "users": users, "connected": held,
                   "connect_failures": sum(failures.values()), "failures": dict(failures),
                   "open_at_end": open_at_end, "answered_ping": alive},
        "memory": {"rss_before_mib": _mib(rss0), "rss_after_mib": _mib(rss1),
                   "kib_per_connection": per_conn},
        "connect_s": round(connect_s, 2),
        "rate": {"connects_per_s": rate(added, connect_s)},
        "usage": usage,
        "target": target,
    }


def _mib(x: int | None) -> float | None:
    return None if x is None else round(x / 2**20, 1)


async def _ping_all(socks: Sequence[Ws], *, concurrency: int = 500) -> int:
    """How many sockets answer a `ping` frame with `pong` within 10 s."""
    limit = trio.CapacityLimiter(concurrency)
    alive = 0

    async def one(i: int, w: Ws) -> None:
        nonlocal alive
        async with limit:
            with trio.move_on_after(10):
                try:
                    await w.send(ping_frame(i))
                    while True:
                        env, _ = await w.recv()
                        if env.type == "pong" and env.ref == i:
                            alive += 1
                            return
                except ConnectionClosed:
                    return

    async with trio.open_nursery() as nursery:
        for i, w in enumerate(socks):
            nursery.start_soon(one, i, w)
    return alive


# ---------------------------------------------------------------------------- 6


async def connect_storm(ctx: Ctx) -> dict[str, Any]:
    """N sockets with tokens issued beforehand all start connecting at the same instant;
    the time until the last `ready`, per-socket connect -> ready latency, failures."""
    s = ctx.scale
    n = s.storm_count
    users = await ctx.lonely_users(n)
    await ctx.settle()
    ready_ms: list[float] = []
    failures: dict[str, int] = {}
    socks: list[Ws] = []
    async with trio.open_nursery() as nursery:
        go = trio.Event()
        t0 = 0

        async def one(u: User) -> None:
            await go.wait()
            try:
                w = await ctx.connect(nursery, u, queue=4)
            except CONNECT_FAILURES as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            ready_ms.append(_ms(time.perf_counter_ns() - t0))
            socks.append(w)

        with ctx.status_during(lambda: f"{len(ready_ms)}/{n} ready, "
                               f"{sum(failures.values())} failed"):
            async with trio.open_nursery() as storm:
                for u in users:
                    storm.start_soon(one, u)
                await trio.sleep(0.5)  # every task is parked on `go`
                window = ctx.begin()
                t0 = time.perf_counter_ns()
                go.set()
            all_ready_s = (time.perf_counter_ns() - t0) / 1e9
            usage = ctx.end(window)
        await close_many(socks)
        ctx.closed_many()
        nursery.cancel_scope.cancel()
    failed = sum(failures.values())
    summary = summarize(ready_ms)
    target = None
    if n >= 5000:
        target = _target("5,000 in ≤ 10 s, 0 failures", round(all_ready_s, 2),
                         all_ready_s <= 10 and failed == 0)
    return {
        "params": {"sockets": n},
        "rows": [{
            "case": f"{n} sockets at once: start → ready",
            "latency_ms": summary,
            "counts": {"sockets": n, "ready": len(ready_ms), "failed": failed,
                       "failures": failures},
            "rate": {"all_ready_s": round(all_ready_s, 2),
                     "connects_per_s": rate(len(ready_ms), all_ready_s)},
            "usage": usage,
            "target": target,
        }],
    }


# ---------------------------------------------------------------------------- 7


class _Conv:
    __slots__ = ("applied", "ids", "pending")

    def __init__(self) -> None:
        self.applied = 0  # every seq up to here received (the client's sync position)
        self.ids: dict[int, str] = {}  # seq -> message id, applied
        self.pending: dict[int, str] = {}  # received ahead of a gap


class Gate:
    """Receivers reconnect only while the gate is open (closed during an outage)."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()

    def close(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def open(self) -> None:
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()


class Receiver:
    """A member that keeps receiving: on every (re)connect it sends `sync` with its
    contiguous position per conversation and pages until has_more is false, while live
    `new_message` frames keep arriving. Messages are applied in seq order; what arrives
    twice (live and in a sync page) is dropped by seq, as a client does.

    Server-side violations are counted separately: the same message twice on one
    connection's live stream, a sync page holding a seq at or below what was asked for,
    or two different ids for one seq."""

    def __init__(self, user: User, cids: Sequence[str]) -> None:
        self.user = user
        self.convs = {cid: _Conv() for cid in cids}
        self.ws: Ws | None = None
        self.connections = 0
        self.connect_failures = 0
        self.close_codes: dict[int, int] = {}
        self.synced = False
        self.synced_ms: list[float] = []  # reconnect start -> last sync page
        self.live_ms: list[float] = []
        self.live = 0
        self.from_sync = 0
        self.overlap = 0
        self.dup = 0
        self.reordered = 0
        self.conflicts = 0
        self.errors: list[str] = []
        self._refs = itertools.count()

    def caught_up(self, last: dict[str, int]) -> bool:
        return all(self.convs[c].applied >= seq for c, seq in last.items() if c in self.convs)

    def _apply(self, cid: str, seq: int, mid: str) -> None:
        conv = self.convs[cid]
        known = conv.ids.get(seq) or conv.pending.get(seq)
        if known is not None:
            if known != mid:
                self.conflicts += 1
            else:
                self.overlap += 1
            return
        if seq != conv.applied + 1:
            conv.pending[seq] = mid
            return
        conv.ids[seq] = mid
        conv.applied = seq
        while conv.applied + 1 in conv.pending:
            conv.applied += 1
            conv.ids[conv.applied] = conv.pending.pop(conv.applied)

    async def run(self, ctx: Ctx, gate: Gate) -> None:
        """Forever: connect when the gate is open, receive until the socket dies."""
        while True:
            await gate.wait_open()
            t_start = time.perf_counter_ns()
            try:
                async with trio.open_nursery() as nursery:
                    ws = await ctx.connect(nursery, self.user)
                    self.ws = ws
                    self.connections += 1
                    await self._session(ws, t_start)
                    nursery.cancel_scope.cancel()
            except* CONNECT_FAILURES:
                self.connect_failures += 1
                await trio.sleep(0.1)
            finally:
                self.ws = None

    async def _session(self, ws: Ws, t_start: int) -> None:
        live_seen: set[tuple[str, int]] = set()
        live_last: dict[str, int] = {}
        asked: dict[str, int] = {}
        ref: int | None = None

        async def sync() -> None:
            nonlocal asked, ref
            asked = {cid: conv.applied for cid, conv in self.convs.items()}
            ref = next(self._refs)
            await ws.send(sync_frame(asked, ref=ref))

        self.synced = False
        try:
            await sync()
            while True:
                env, t = await ws.recv()
                if env.type == "new_message":
                    m = decode_message(env.payload)
                    key = (m.conversation_id, m.seq)
                    if key in live_seen:
                        self.dup += 1
                    live_seen.add(key)
                    if m.seq < live_last.get(m.conversation_id, 0):
                        self.reordered += 1
                    live_last[m.conversation_id] = max(m.seq, live_last.get(m.conversation_id, 0))
                    self.live += 1
                    self.live_ms.append(_ms(t - stamp_of(m.content)))
                    self._apply(m.conversation_id, m.seq, m.id)
                elif env.type == "sync_result" and env.ref == ref:
                    page = decode_sync(env.payload)
                    seen: set[tuple[str, int]] = set()
                    for m in page.messages:
                        key = (m.conversation_id, m.seq)
                        if m.seq <= asked.get(m.conversation_id, 0) or key in seen:
                            self.dup += 1
                        seen.add(key)
                        self.from_sync += 1
                        self._apply(m.conversation_id, m.seq, m.id)
                    if page.has_more:
                        await sync()
                    else:
                        ref = None
                        self.synced = True
                        self.synced_ms.append(_ms(t - t_start))
                elif env.type == "error":
                    self.errors.append(decode_error(env.payload).code)
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else 0
            self.close_codes[code] = self.close_codes.get(code, 0) + 1


async def receivers_setup(ctx: Ctx, snd_users: Sequence[User], rcv_users: Sequence[User],
                          name: str) -> tuple[str, dict[tuple[int, int], str], list[Receiver]]:
    """One group with every sender and receiver, a one_to_one per (sender i, receiver j)
    and a Receiver per receiving user over its conversations: (group, o2o, receivers)."""
    group = await ctx.rest.conversation(snd_users[0], [*snd_users[1:], *rcv_users], group=True,
                                        name=name)
    o2o: dict[tuple[int, int], str] = {}

    async def make_o2o(si: int, ri: int) -> None:
        o2o[si, ri] = await ctx.rest.conversation(snd_users[si], [rcv_users[ri]], group=False)

    async with trio.open_nursery() as nursery:
        for si in range(len(snd_users)):
            for ri in range(len(rcv_users)):
                nursery.start_soon(make_o2o, si, ri)
    receivers = [Receiver(u, [group, *(o2o[si, ri] for si in range(len(snd_users)))])
                 for ri, u in enumerate(rcv_users)]
    return group, o2o, receivers


async def run_receivers(nursery: trio.Nursery, ctx: Ctx, receivers: Sequence[Receiver],
                        gate: Gate) -> bool:
    """Every receiver's task in `nursery`; True once all have connected and synced (30 s)."""
    for r in receivers:
        nursery.start_soon(r.run, ctx, gate)
    return await wait_until(lambda: all(r.synced for r in receivers), 30)


async def reconnect_storm_loss(ctx: Ctx) -> dict[str, Any]:
    """Receivers in one group plus a one_to_one with each sender keep receiving while
    senders send at a steady rate (half into the group, half round the one_to_ones). At
    evenly spaced moments every receiver's socket is cut at once (TCP RST), kept down for
    the outage, then all reconnect together and `sync`. Afterwards every acked message must
    be applied exactly once by every member, in seq order, with no holes."""
    s = ctx.scale
    n_rcv, n_send = s.reconnect_members, s.reconnect_senders
    users = await ctx.register(n_rcv + n_send)
    rcv_users, snd_users = users[:n_rcv], users[n_rcv:]
    group, o2o, receivers = await receivers_setup(ctx, snd_users, rcv_users, "reconnect")
    acked: dict[str, dict[int, str]] = {c: {} for c in [group, *o2o.values()]}
    windows = [trio.Semaphore(64) for _ in range(n_send)]
    sent = 0
    errors: list[str] = []
    sender_closed: list[int] = []
    gate = Gate()

    def on_sender(i: int) -> Frame:
        def on_frame(env: frames.Envelope, t: int) -> None:
            if env.type == "message_ack":
                a = decode_ack(env.payload)
                acked[a.conversation_id][a.seq] = a.id
                windows[i].release()
            elif env.type == "error":
                errors.append(decode_error(env.payload).code)
                windows[i].release()
        return on_frame

    async def sender(si: int, ws: Ws, start: float) -> None:
        nonlocal sent
        per_sender = s.reconnect_rate / n_send
        for k in itertools.count():
            await trio.sleep_until(start + k / per_sender)
            await windows[si].acquire()
            cid = group if k % 2 == 0 else o2o[si, (k // 2) % n_rcv]
            t = time.perf_counter_ns()
            await _send(ws, chat_frame(cid, stamped(t, _pad(ctx)), ref=t,
                                       client_msg_id=f"r{si}.{k}"))
            sent += 1

    def total_acked() -> int:
        return sum(len(v) for v in acked.values())

    cuts = 0
    async with trio.open_nursery() as nursery:
        snd_socks = await ctx.connect_many(nursery, snd_users)
        for i, w in enumerate(snd_socks):
            nursery.start_soon(_pump, w, on_sender(i), sender_closed)
        await run_receivers(nursery, ctx, receivers, gate)
        window = ctx.begin()
        with ctx.status_during(lambda: f"sent {sent} acked {total_acked()} cuts {cuts} "
                               f"connected {sum(1 for r in receivers if r.ws)}/{n_rcv}"):
            async with trio.open_nursery() as load:
                start = trio.current_time()
                for si, w in enumerate(snd_socks):
                    load.start_soon(sender, si, w, start)
                slots = len(s.reconnect_outages) + 1
                for k, outage in enumerate(s.reconnect_outages):
                    await trio.sleep_until(start + s.reconnect_duration * (k + 1) / slots)
                    gate.close()
                    async with trio.open_nursery() as cutting:
                        for r in receivers:
                            if r.ws is not None:
                                cutting.start_soon(r.ws.cut)
                    cuts += 1
                    await trio.sleep(outage)
                    gate.open()
                await trio.sleep_until(start + s.reconnect_duration)
                load.cancel_scope.cancel()
            await wait_until(lambda: all(w.value == 64 for w in windows), 15)
            last = {cid: max(seqs) for cid, seqs in acked.items() if seqs}
            caught_up = await wait_until(lambda: all(r.caught_up(last) for r in receivers), 30)
        usage = ctx.end(window)
        await close_many([*snd_socks, *(r.ws for r in receivers if r.ws is not None)])
        nursery.cancel_scope.cancel()

    tally = receivers_tally(receivers, acked)
    ok = tally.pop("ok")
    lost, duplicated = tally["lost"], tally["duplicated"]
    received, expected = tally["received"], tally["expected_deliveries"]
    synced_ms = [x for r in receivers for x in r.synced_ms[1:]]  # reconnects only
    counts = {
        "sent": sent, "acked": total_acked(), "unacked": sent - total_acked(), **tally,
        "cuts": cuts, "sender_sockets_lost": len(sender_closed),
        "errors": len(errors) + sum(len(r.errors) for r in receivers),
        "caught_up": caught_up,
    }
    return {
        "params": {"members": n_rcv, "senders": n_send, "rate_per_s": s.reconnect_rate,
                   "duration_s": s.reconnect_duration, "outages_s": list(s.reconnect_outages)},
        "lost": lost,
        "duplicated": duplicated,
        "rows": [
            {"case": f"{n_rcv} members, {cuts} cuts: reconnect → synced",
             "latency_ms": summarize(synced_ms),
             "live_latency_ms": summarize(x for r in receivers for x in r.live_ms),
             "counts": counts, "usage": usage,
             "target": _target("0 lost, 0 duplicated", f"{received}/{expected} received, "
                               f"{lost} lost, {duplicated} dup", ok)},
        ],
        "error_codes": sorted({*errors, *(e for r in receivers for e in r.errors)}),
    }


def receivers_tally(receivers: Sequence[Receiver], acked: dict[str, dict[int, str]]
                    ) -> dict[str, Any]:
    """Every acked message ({conversation: {seq: id}}) against what each receiver applied:
    `received` = `expected_deliveries` and `lost` = `duplicated` = 0 when nothing went
    missing or arrived twice (`ok`)."""
    expected = lost = mismatched = extra = holes = 0
    for r in receivers:
        for cid, conv in r.convs.items():
            want = acked.get(cid, {})
            expected += len(want)
            for seq, mid in want.items():
                got = conv.ids.get(seq)
                if got is None:
                    lost += 1
                elif got != mid:
                    mismatched += 1
            extra += len(conv.ids.keys() - want.keys())
            holes += len(conv.pending)
    received = expected - lost - mismatched
    duplicated = sum(r.dup + r.conflicts for r in receivers)
    return {
        "expected_deliveries": expected, "received": received, "lost": lost,
        "duplicated": duplicated, "mismatched": mismatched, "unacked_received": extra,
        "stuck_behind_gap": holes, "reordered_live": sum(r.reordered for r in receivers),
        "overlap_dropped": sum(r.overlap for r in receivers),
        "live_frames": sum(r.live for r in receivers),
        "sync_frames": sum(r.from_sync for r in receivers),
        "connections": sum(r.connections for r in receivers),
        "connect_failures": sum(r.connect_failures for r in receivers),
        "close_codes": _merge(r.close_codes for r in receivers),
        "ok": lost == 0 and duplicated == 0 and mismatched == 0 and received == expected,
    }


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[str(k)] = out.get(str(k), 0) + v
    return out


# ---------------------------------------------------------------------------- registry


def _cap_registration(n: int) -> float:
    return n / 40 + 30  # registration runs at 100-150/s on two shared cores


REGISTRY: dict[str, tuple[Any, Callable[[Scale], float]]] = {
    "latency_1to1": (latency_1to1, lambda s: _cap_registration(2 * s.latency_pairs)
                     + s.latency_duration + 60),
    "throughput_1to1": (throughput_1to1, lambda s: _cap_registration(
        2 * max(s.throughput_stages)) + len(s.throughput_stages)
        * (s.throughput_stage_duration + s.warmup + 20) + 60),
    "group_fanout": (group_fanout, lambda s: sum(
        _cap_registration(n) + s.fanout_duration + 15 * 3 + n / 50 + 60 for n in s.fanout_sizes)),
    "broadcast_throughput": (broadcast_throughput, lambda s: _cap_registration(
        s.broadcast_members) + s.broadcast_duration + 90),
    "idle_connections": (idle_connections, lambda s: _cap_registration(max(s.idle_counts))
                         + sum(n / 100 + s.idle_hold + 90 for n in s.idle_counts)),
    "idle_multi_device": (idle_multi_device, lambda s: _cap_registration(
        max(s.multi_counts) // s.multi_per_user + 1) + max(s.multi_counts) // 10
        + sum(n / 100 + s.idle_hold + 90 for n in s.multi_counts)),
    "connect_storm": (connect_storm, lambda s: _cap_registration(s.storm_count) + 120),
    "reconnect_storm_loss": (reconnect_storm_loss, lambda s: _cap_registration(
        s.reconnect_members * (1 + s.reconnect_senders)) + s.reconnect_duration + 120),
}
SCENARIOS = list(REGISTRY)
