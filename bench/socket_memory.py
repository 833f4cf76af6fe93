"""What one idle socket costs the server, and where: `python -m bench.socket_memory`.

The server runs in this process with tracemalloc on; a client process registers the users
(each in `--conversations` groups), then, on our word, opens `--sockets` sockets spread
over them (`--per-user` each) and holds them idle. Between a snapshot taken just before the
sockets connect and one taken once all of them have their `ready` (and the server's
connection count says so), every Python allocation still alive is attributed to the
innermost chatsrv frame that made it (or to the library line, with --by line), divided by
the socket count. RSS growth per socket is reported too; tracemalloc's own bookkeeping
inflates it, so run with --no-trace for the RSS figure alone.

    python -m bench.socket_memory --sockets 2000 --per-user 40 --conversations 50
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import sys
import tempfile
import tracemalloc
from collections import defaultdict
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from bench.server import LOAD_TEST_LIMITS

CHATSRV = str(Path(__file__).resolve().parents[1] / "chatsrv")


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _site(traceback: tracemalloc.Traceback, by: str) -> str:
    frames = list(traceback)  # oldest first
    if by == "line":
        frame = frames[-1]
        return f"{_short(frame.filename)}:{frame.lineno}"
    ours = [fr for fr in frames if fr.filename.startswith(CHATSRV)]
    frame = ours[-1] if ours else frames[-1]
    where = f"{_short(frame.filename)}:{frame.lineno}"
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{where}  {code[:70]}"


def _short(filename: str) -> str:
    for marker in ("/chatsrv/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1] if marker != "/chatsrv/" else \
                "chatsrv/" + filename.split(marker, 1)[1]
    return filename


def attribute(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, *,
              by: str) -> dict[str, tuple[int, int]]:
    """Bytes and blocks alive in `after` but not in `before`, by allocation site (grouped
    by traceback first: iterating the traces one by one takes minutes)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for diff in after.compare_to(before, "traceback"):
        if diff.size_diff == 0 and diff.count_diff == 0:
            continue
        row = out[_site(diff.traceback, by)]
        row[0] += diff.size_diff
        row[1] += diff.count_diff
    return {k: (v[0], v[1]) for k, v in out.items()}


async def serve_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    from chatsrv.app import serve_node
    from chatsrv.config import Settings, from_overrides

    data = tempfile.mkdtemp(prefix="chatsrv-socket-memory-")
    settings = from_overrides(Settings(
        http_host="127.0.0.1", http_port=0, data_dir=Path(data), embedded=True,
        jwt_secret="socket-memory-" + "x" * 40, bcrypt_rounds=4), LOAD_TEST_LIMITS)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            settings, bind="127.0.0.1:0", shutdown=shutdown, task_status=task_status))
        url = node.addresses[0]
        router = node.services.router
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.socket_memory", "--client", url,
             "--sockets", str(args.sockets), "--per-user", str(args.per_user),
             "--conversations", str(args.conversations)],
            stdin=-1, stdout=-1)
        assert proc.stdin is not None and proc.stdout is not None
        lines = _lines(proc.stdout)
        assert await lines.__anext__() == "set up"
        gc.collect()
        if args.trace:
            tracemalloc.start(args.depth)
        gc.collect()
        before = tracemalloc.take_snapshot() if args.trace else None
        rss0 = _rss()
        await proc.stdin.send_all(b"go\n")
        with trio.fail_after(1800):  # tracemalloc slows connecting several times
            ready = await lines.__anext__()
            while router.connection_count() < args.sockets:  # noqa: ASYNC110 (no event for it)
                await trio.sleep(0.1)  # sessions attach just after their `ready` is queued
            await trio.sleep(1.0)  # writers and flushers finish with `ready`
        gc.collect()
        rss1 = _rss()
        after = tracemalloc.take_snapshot() if args.trace else None
        await proc.stdin.send_all(b"quit\n")
        await proc.wait()
        shutdown.set()
    n = args.sockets
    report: dict[str, Any] = {
        "sockets": n, "per_user": args.per_user, "conversations": args.conversations,
        "client_said": ready, "rss_kib_per_socket": round((rss1 - rss0) / n / 1024, 2),
        "traced": args.trace}
    if before is not None and after is not None:
        sites = attribute(before, after, by=args.by)
        total = sum(b for b, _ in sites.values())
        report["python_kib_per_socket"] = round(total / n / 1024, 2)
        report["sites"] = [
            {"bytes_per_socket": round(b / n, 1), "blocks_per_socket": round(c / n, 2),
             "site": site}
            for site, (b, c) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:args.top]]
    return report


async def _lines(stream: Any) -> Any:
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.decode().strip()


async def client(args: argparse.Namespace) -> None:
    """The client process: set up users and groups, say so, connect on `go`, hold."""
    from bench import client as bc

    rest = bc.Rest(args.client)
    _say(f"registering {max(1, args.sockets // args.per_user)} users")
    users = await rest.register_many(max(1, args.sockets // args.per_user))
    _say("creating groups")
    # every user in `conversations` groups of 10 (cyclic neighbours), as a real user base
    size = min(10, len(users))
    async with trio.open_nursery() as nursery:
        for k in range(max(1, len(users) * args.conversations // size)):
            start = (k * size // args.conversations + k) % len(users)
            members = [users[(start + j) % len(users)] for j in range(size)]
            nursery.start_soon(lambda m=members: rest.conversation(m[0], m[1:], group=True))
    await rest.aclose()
    _say("set up")
    stdin = trio.lowlevel.FdStream(os.dup(0))
    out = trio.lowlevel.FdStream(os.dup(1))
    await out.send_all(b"set up\n")
    assert (await stdin.receive_some(100)).strip() == b"go"
    host, port = args.client.rsplit("//", 1)[1].split(":")
    failures: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        socks = await bc.connect_many(nursery, host, int(port),
                                      [users[i % len(users)] for i in range(args.sockets)],
                                      concurrency=100, failures=failures, kind="lean")
        await out.send_all(json.dumps({"connected": len(socks), "failures": failures}
                                      ).encode() + b"\n")
        await stdin.receive_some(100)  # quit
        await bc.close_many(socks)
        nursery.cancel_scope.cancel()


def _say(what: str) -> None:
    print(f"socket_memory client: {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.socket_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--per-user", type=int, default=40)
    p.add_argument("--conversations", type=int, default=50)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--depth", type=int, default=30, help="tracemalloc frames kept")
    p.add_argument("--by", choices=("chatsrv", "line"), default="chatsrv",
                   help="attribute to the innermost chatsrv frame, or to the allocating line")
    p.add_argument("--no-trace", dest="trace", action="store_false")
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument("--client", help=argparse.SUPPRESS)  # the client process
    args = p.parse_args(argv)
    if args.client:
        trio.run(client, args)
        return 0
    report = trio_asyncio.run(serve_and_measure, args)
    print(f"{report['sockets']} sockets ({report['per_user']} per user, users in "
          f"{report['conversations']} groups); client: {report['client_said']}")
    print(f"RSS growth: {report['rss_kib_per_socket']} KiB/socket"
          + (" (tracemalloc on: inflated)" if report["traced"] else ""))
    if "sites" in report:
        print(f"Python heap still allocated: {report['python_kib_per_socket']} KiB/socket")
        for row in report["sites"]:
            print(f"{row['bytes_per_socket']:9.1f} B {row['blocks_per_socket']:6.2f} blk  "
                  f"{row['site']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        raise SystemExit(main())
