"""`python -m bench.recv_cost`: what one 256 KiB socket read costs with glibc's dynamic mmap
threshold and with it pinned at 128 KiB (chatsrv/adapters/heap.py pins it at start).

asyncio's transports read with `sock.recv(256 * 1024)`: a 256 KiB bytes object cut down to
what arrived. With the dynamic threshold (raised above 256 KiB once one mapped block has
been freed, as in any running node) it comes from the heap; pinned, it is mapped and
unmapped on every read. Each mode runs in a fresh interpreter over a socketpair carrying
200-byte writes, `--rounds` times, alternating.

    .venv/bin/python -m bench.recv_cost --reads 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

RECV = 256 * 1024  # asyncio.selector_events._SelectorSocketTransport.max_size


def measure(reads: int, pin: bool) -> float:
    """µs per 200-byte send + 256 KiB recv, in this process."""
    if pin:
        from chatsrv.adapters.heap import tune_malloc
        if not tune_malloc():
            raise SystemExit("could not pin the threshold (not glibc, or set in the environment)")
    a, b = socket.socketpair()
    payload = b"x" * 200
    freed = bytes(300_000)  # a mapped block freed: glibc raises its dynamic threshold
    del freed
    began = time.perf_counter()
    for _ in range(reads):
        a.send(payload)
        b.recv(RECV)
    return (time.perf_counter() - began) / reads * 1e6


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recv_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reads", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--one", choices=("dynamic", "pinned"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(f"{measure(args.reads, args.one == 'pinned'):.3f}")
        return 0
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    found: dict[str, list[float]] = {"dynamic": [], "pinned": []}
    for _ in range(args.rounds):
        for mode in found:
            out = subprocess.run([sys.executable, "-m", "bench.recv_cost", "--one", mode,
                                  "--reads", str(args.reads)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            found[mode].append(float(out))
    for mode, values in found.items():
        print(f"{mode:8s} {statistics.median(values):6.2f} µs per read (median of "
              f"{len(values)}: {', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
