"""Blobs on local disk: `ROOT/ab/cd/<sha256>`, written whole then renamed into place.

The rename is atomic on one filesystem, so a reader never sees half a blob; a temp file
from another filesystem is first copied next to its target (same directory, `.part`), then
renamed. Two uploads of the same bytes end in one file (content-addressed). File I/O runs
in worker threads.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from chatsrv.domain.errors import Invalid, NotFound

CHUNK = 64 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise Invalid("not a sha256 digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def put_file(self, path: Path, *, sha256: str, size: int) -> None:
        target = self.path_of(sha256)
        await trio.to_thread.run_sync(_place, path, target)

    async def exists(self, sha256: str) -> bool:
        return await trio.to_thread.run_sync(self.path_of(sha256).is_file)

    async def read(self, sha256: str, *, first: int = 0,
                   last: int | None = None) -> AsyncIterator[bytes]:
        try:
            f = await trio.open_file(self.path_of(sha256), "rb")
        except FileNotFoundError:
            raise NotFound("blob not found") from None
        async with f:
            await f.seek(first)
            left = None if last is None else last - first + 1
            while left is None or left > 0:
                chunk = await f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    async def delete(self, sha256: str) -> None:
        await trio.to_thread.run_sync(self.path_of(sha256).unlink, True)

    def presigned_url(self, sha256: str, *, ttl: float, filename: str, content_type: str,
                      disposition: str) -> str | None:
        return None


def _place(path: Path, target: Path) -> None:
    """Move the finished file to `target` (fsynced first; an existing target stands)."""
    try:
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: the temp file is on another filesystem
                raise
            part = target.with_suffix(".part")
            shutil.copyfile(path, part)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    finally:
        path.unlink(missing_ok=True)
