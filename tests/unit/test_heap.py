"""The heap trimmer gives free heap pages back to the system (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from chatsrv.adapters.heap import HeapTrimmer, tune_malloc

GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")

# In a fresh interpreter: 64 MB of 100 KB blocks (under glibc's mmap threshold: on the heap),
# each followed by a small block that stays, then the 64 MB is freed: 640 holes between
# blocks in use, the pattern of the soak. glibc keeps those pages until malloc_trim.
FRAGMENT_AND_TRIM = """
from chatsrv.adapters.heap import HeapTrimmer

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

blocks, pins = [], []
for _ in range(640):
    blocks.append(bytearray(100_000))
    pins.append(bytearray(1_000))
del blocks
before = rss_kib()
trimmer = HeapTrimmer(60.0)
released = trimmer.trim()
after = rss_kib()
print(before, after, int(released), trimmer.trims)
"""


@GLIBC
def test_trim_returns_the_free_heap_pages_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT_AND_TRIM], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    before, after, released, trims = map(int, out)
    assert released == 1 and trims == 1
    assert before - after > 50_000, f"RSS {before} KiB -> {after} KiB: the 64 MB stayed"


def test_an_interval_of_zero_turns_the_trimmer_off() -> None:
    assert not HeapTrimmer(0).available


# In a fresh interpreter: a 300 KB block is mapped and freed (glibc then raises its dynamic
# mmap threshold above 300 KB), then 200 KB is allocated: mapped (mallinfo2's hblkhd grows) only
# while the threshold stays pinned. asyncio's 256 KiB receive buffers are this case.
AFTER_A_FREED_MAPPING = """
import ctypes, sys
from chatsrv.adapters.heap import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
pinned = tune_malloc() if sys.argv[1] == "tune" else False
big = bytearray(300_000)
del big
before = libc.mallinfo2().hblkhd
held = bytearray(200_000)
print(int(pinned), libc.mallinfo2().hblkhd - before)
"""


@GLIBC
@pytest.mark.parametrize(("mode", "mapped"), [("tune", True), ("leave", False)])
def test_a_pinned_threshold_keeps_large_buffers_off_the_heap(mode: str, mapped: bool) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", AFTER_A_FREED_MAPPING, mode], env=env,
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    pinned, newly_mapped = map(int, out)
    assert pinned == int(mapped)
    assert (newly_mapped >= 200_000) is mapped, f"{newly_mapped} bytes newly mapped"


def test_the_operators_own_glibc_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not tune_malloc()
