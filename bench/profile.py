"""Optional: sample the server with py-spy during a scenario (`--profile NAME`) and
summarise where its time went, py-spy-top style. py-spy is not a dependency: `pip install
py-spy`. Profile in a run of its own: py-spy pauses the server for each sample, which
perturbs the numbers of the run it watches."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

RATE = 100  # samples per second


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def recording(pid: int, folded: Path, *, cap: float) -> AsyncIterator[None]:
    """py-spy records `pid` into `folded` (collapsed stacks) while the block runs.
    Raises RuntimeError when py-spy is not installed."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    proc = await trio.lowlevel.open_process(
        [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--threads",
         "--output", str(folded), "--duration", str(int(cap) + 1)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        with trio.move_on_after(15, shield=True):
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


def summarize(folded: Path, *, top: int = 25) -> str:
    """Text summary of collapsed stacks (recorded with --threads): samples per thread, then
    for the event-loop thread (MainThread) the functions with the most samples on top of the
    stack (own time) and anywhere in it (total time), in % of that thread's samples.

    py-spy samples threads that are not idle, whether or not they are on a CPU at that
    moment: a syscall that wakes another process on these 2 shared cores (a send to
    PostgreSQL or to the load generator) often gets the thread preempted, and shows up as
    time in that send."""
    threads: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    main = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, _, rest = stack.partition(";")
        name = thread.partition(": ")[2] or thread
        threads[name] += n
        if name != "MainThread" or not rest:
            continue
        main += n
        frames = rest.split(";")
        layers[_layer(frames)] += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not main:
        return "no samples of the main thread\n"
    all_samples = sum(threads.values())
    lines = [f"{all_samples} samples at {RATE} Hz over {all_samples / RATE:.0f} thread-seconds; "
             "per thread:"]
    lines += [f"  {n:6d}  {t}" for t, n in threads.most_common(8)]
    lines += ["", "MainThread by layer (a sample goes to the innermost frame of a known layer; "
              "trio and syscall frames below it count for that layer):"]
    lines += [f"{100 * n / main:6.1f}%  {name}" for name, n in layers.most_common()]
    lines += ["", "MainThread (the event loop), own time (top of stack), % of its samples:"]
    lines += [f"{100 * n / main:6.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "MainThread, total time (anywhere in the stack), % of its samples:"]
    shown = [(f, n) for f, n in total.most_common() if not f.startswith(ROOT_FRAMES)]
    lines += [f"{100 * n / main:6.1f}%  {f}" for f, n in shown[:top * 2]]
    return "\n".join(lines) + "\n"


LAYERS = (  # innermost match wins
    (("asyncpg/", "asyncio/", "trio_asyncio/"), "PostgreSQL: asyncpg + asyncio bridge"),
    (("sqlite3", "adapters/storage/sqlite"), "SQLite driver"),
    (("msgspec", "json/"), "JSON encode/decode"),
    (("wsproto/",), "wsproto (WebSocket frames)"),
    (("h11/",), "h11 (HTTP)"),
    (("quart/", "quart_trio/", "werkzeug/"), "Quart (REST)"),
    (("hypercorn/",), "Hypercorn (connection I/O, protocol)"),
    (("jwt/", "passlib/", "bcrypt"), "auth (JWT, bcrypt)"),
    (("chatsrv/",), "chatsrv (services, transport)"),
)


ROOT_FRAMES = ("<module>", "_run_module_as_main", "_run_code", "main (chatsrv/cli.py",
               "_serve (chatsrv/cli.py", "main (chatsrv/app.py", "_main (chatsrv/app.py")


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        if frame.startswith(ROOT_FRAMES):
            continue
        for markers, name in LAYERS:
            if any(m in frame for m in markers):
                return name
    if frames[-1].startswith("EpollIOManager.get_events"):
        return "idle (waiting in epoll)"
    return "trio scheduler (no application frame)"
