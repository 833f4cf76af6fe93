"""Uploads: receive (streamed to a temp file, capped, hashed, sniffed, thumbnailed), who may
download, signed download URLs, attachments of messages, and the orphan sweep.

Bytes never sit whole in memory: the body is written chunk by chunk to a temp file under
the data directory while its SHA-256 is computed; the blob store then takes the file (a
rename on local disk, one signed PUT on S3). Records are in the UploadStore.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import trio

from chatsrv.domain.errors import Invalid, NotFound, TooLarge
from chatsrv.domain.model import Message, new_id, parse_id, utcnow
from chatsrv.domain.ports import BlobStore, UploadStore
from chatsrv.domain.uploads import (
    IMAGE_TYPES,
    SNIFF_BYTES,
    Attachment,
    Upload,
    attachment_of,
    clean_name,
    sniff,
)
from chatsrv.services import images

log = logging.getLogger("chatsrv.uploads")
SWEEP_BATCH = 200


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_bytes: int
    quota_bytes: int  # 0: none
    max_attachments: int
    thumbnail_px: int
    max_pixels: int
    image_timeout: float
    read_timeout: float
    url_ttl: float
    orphan_ttl: float
    sweep_interval: float
    op_timeout: float  # one storage operation (DB_TIMEOUT)


class UrlSigner:
    """Download URLs that work without a bearer header (an <img src>): `?sig=` is an
    expiry and an HMAC of (upload id, variant, expiry). Anyone holding the URL may fetch
    until it expires; it is handed only to those who may read the upload."""

    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = hashlib.sha256(b"chatsrv upload urls\0" + key).digest()
        self._ttl = ttl

    def _mac(self, upload_id: str, variant: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{upload_id}:{variant}:{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:18]).decode()

    def sign(self, upload_id: str, variant: str, *, now: float) -> str:
        # expiries fall on whole multiples of ttl/4, so a frame rendered for many members
        # and a history page rendered moments apart carry the same URL (cacheable)
        step = max(1, int(self._ttl / 4))
        expires = (int(now + self._ttl) // step + 1) * step
        return f"{expires}.{self._mac(upload_id, variant, expires)}"

    def check(self, upload_id: str, variant: str, sig: str, *, now: float) -> bool:
        expires_s, _, mac = sig.partition(".")
        if not expires_s.isdigit() or len(expires_s) > 12 or int(expires_s) < now:
            return False
        return hmac.compare_digest(mac, self._mac(upload_id, variant, int(expires_s)))


def _strip_jpeg(path: Path) -> tuple[str, int] | None:
    """Blocking: `path` without its JPEG metadata, in place; its new (sha256, size), or
    None when there was nothing to strip."""
    clean = path.with_suffix(".clean")
    try:
        if not images.strip_jpeg_metadata(path, clean):
            return None
        os.replace(clean, path)
    finally:
        clean.unlink(missing_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class BlobLocks:
    """One lock per blob digest on this node, held while a blob is stored and its record
    written, or checked for use and deleted. (Across nodes the same race is left open: a
    sweep on one node deleting a blob in the instant another node stores the same bytes
    again; see docs/protocol.md, Uploads.)"""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, *digests: str | None) -> AsyncIterator[None]:
        keys = sorted({d for d in digests if d})  # one order: no deadlock between holders
        for key in keys:
            lock, users = self._locks.get(key, (trio.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        held: list[trio.Lock] = []
        try:
            for key in keys:
                lock = self._locks[key][0]
                await lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in held:
                lock.release()
            for key in keys:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class UploadService:
    def __init__(self, uploads: UploadStore, blobs: BlobStore, *, tmp_dir: Path,
                 limits: UploadLimits, signer: UrlSigner, redirect: bool = True,
                 strip_metadata: bool = True) -> None:
        self._uploads = uploads
        self._blobs = blobs
        self._tmp_dir = tmp_dir
        self.limits = limits
        self._signer = signer
        self._redirect = redirect
        self._strip_metadata = strip_metadata
        self._swept = trio.Event()  # set (and replaced) after each periodic sweep
        self._locks = BlobLocks()
        images.set_pixel_limit(limits.max_pixels)

    # ------------------------------------------------------------------ receiving

    async def receive(self, owner_id: str, *, name: str | None, chunks: AsyncIterator[bytes],
                      declared_size: int | None) -> Upload:
        """Store one upload from `chunks`. Raises TooLarge (over MAX_UPLOAD_BYTES, also when
        the body runs past what Content-Length said; or over the owner's quota, code
        `quota_exceeded`), Invalid (an empty body, a decompression bomb), Unavailable.
        Cancellable anywhere: the temp file goes."""
        lim = self.limits
        if declared_size is not None and declared_size > lim.max_bytes:
            raise TooLarge(f"upload over {lim.max_bytes} bytes (MAX_UPLOAD_BYTES)")
        await self._check_quota(owner_id, declared_size or 0)
        await trio.Path(self._tmp_dir).mkdir(parents=True, exist_ok=True)
        fd, raw_path = tempfile.mkstemp(dir=self._tmp_dir, prefix="up-", suffix=".part")
        os.close(fd)
        path = Path(raw_path)
        try:
            sha, size, head = await self._spool(chunks, path)
            if size == 0:
                raise Invalid("the upload is empty", field="file")
            await self._check_quota(owner_id, size)
            content_type = sniff(head)
            if content_type == "image/jpeg" and self._strip_metadata:
                stripped = await trio.to_thread.run_sync(_strip_jpeg, path)
                if stripped is not None:
                    sha, size = stripped
            width = height = None
            thumbnail = None
            if content_type in IMAGE_TYPES:
                info = await self._inspect(path)
                if info is not None:
                    width, height, thumbnail = info.width, info.height, info.thumbnail
            thumb_sha = hashlib.sha256(thumbnail).hexdigest() if thumbnail else None
            upload = Upload(id=new_id(), owner_id=owner_id, name=clean_name(name, content_type),
                            content_type=content_type, size=size, sha256=sha, width=width,
                            height=height, thumbnail_sha256=thumb_sha, created_at=utcnow())
            # under the blobs' locks: a sweep cannot delete a blob between our put (a no-op
            # when it exists) and the record that makes it in use
            async with self._locks.hold(sha, thumb_sha):
                if thumbnail and thumb_sha:
                    await self._store_bytes(thumbnail, thumb_sha)
                with trio.fail_after(max(lim.op_timeout, lim.read_timeout)):
                    await self._blobs.put_file(path, sha256=sha, size=size)
                with trio.fail_after(lim.op_timeout):
                    await self._uploads.create_upload(upload)
            return upload
        finally:
            with trio.move_on_after(lim.op_timeout, shield=True):
                await trio.Path(path).unlink(missing_ok=True)

    async def _check_quota(self, owner_id: str, adding: int) -> None:
        quota = self.limits.quota_bytes
        if not quota:
            return
        with trio.fail_after(self.limits.op_timeout):
            used = await self._uploads.usage(owner_id)
        if used + adding > quota:
            raise TooLarge(f"upload quota of {quota} bytes (UPLOAD_QUOTA_BYTES) exceeded: "
                           f"{used} used", code="quota_exceeded")

    async def _spool(self, chunks: AsyncIterator[bytes], path: Path
                     ) -> tuple[str, int, bytes]:
        """Write the body to `path`: (sha256 hex, size, first SNIFF_BYTES)."""
        lim = self.limits
        digest = hashlib.sha256()
        size = 0
        head = b""
        it = chunks.__aiter__()
        async with await trio.open_file(path, "wb") as f:
            while True:
                with trio.move_on_after(lim.read_timeout) as waited:
                    try:
                        chunk = await it.__anext__()
                    except StopAsyncIteration:
                        break
                if waited.cancelled_caught:
                    raise Invalid(f"the upload stalled for {lim.read_timeout:g}s",
                                  code="upload_incomplete")
                if not chunk:
                    continue
                size += len(chunk)
                if size > lim.max_bytes:
                    raise TooLarge(f"upload over {lim.max_bytes} bytes (MAX_UPLOAD_BYTES)")
                if len(head) < SNIFF_BYTES:
                    head += chunk[:SNIFF_BYTES - len(head)]
                digest.update(chunk)
                await f.write(chunk)
        return digest.hexdigest(), size, head

    async def _inspect(self, path: Path) -> images.ImageInfo | None:
        lim = self.limits
        # the thread cannot be stopped; on a deadline we stop waiting for it (it ends by
        # itself: the pixel limit bounds its work) and keep the file without a thumbnail
        with trio.move_on_after(lim.image_timeout):
            try:
                return await trio.to_thread.run_sync(
                    lambda: images.inspect(path, max_pixels=lim.max_pixels,
                                           thumbnail_px=lim.thumbnail_px),
                    abandon_on_cancel=True)
            except images.ImageRefused as exc:
                raise TooLarge(f"image refused: {exc} (MAX_IMAGE_PIXELS)",
                               code="image_too_large") from None
        log.warning("image of %s took over %.1fs; kept without a thumbnail", path.name,
                    lim.image_timeout)
        return None

    async def _store_bytes(self, data: bytes, sha: str) -> None:
        fd, raw = tempfile.mkstemp(dir=self._tmp_dir, prefix="th-", suffix=".part")
        with os.fdopen(fd, "wb") as f:  # a thumbnail is small (tens of kB)
            f.write(data)
        with trio.fail_after(self.limits.op_timeout):
            await self._blobs.put_file(Path(raw), sha256=sha, size=len(data))

    # ------------------------------------------------------------------ reading

    def urls(self, upload_id: str, *, has_thumbnail: bool) -> tuple[str, str | None]:
        """The signed download URL and thumbnail URL of an upload."""
        now = time.time()
        url = f"/api/uploads/{upload_id}?sig={self._signer.sign(upload_id, 'file', now=now)}"
        thumb = (f"/api/uploads/{upload_id}/thumbnail?sig="
                 f"{self._signer.sign(upload_id, 'thumbnail', now=now)}"
                 if has_thumbnail else None)
        return url, thumb

    def present(self, messages: Sequence[Message]) -> list[Message]:
        """Messages with fresh signed URLs on their attachments."""
        out = []
        for m in messages:
            if m.attachments:
                m = replace(m, attachments=tuple(self._with_urls(a) for a in m.attachments))
            out.append(m)
        return out

    def _with_urls(self, a: Attachment) -> Attachment:
        url, thumb = self.urls(a.id, has_thumbnail=a.has_thumbnail)
        return replace(a, url=url, thumbnail_url=thumb)

    async def readable(self, user_id: str | None, upload_id: str, *, variant: str,
                       sig: str | None) -> Upload:
        """The upload if the caller may read it: the uploader, a member of a conversation
        where it was sent, or the holder of a valid signed URL. NotFound for everyone else
        (and for a thumbnail that does not exist)."""
        try:
            upload_id = parse_id(upload_id, "upload_id")
        except Invalid:
            raise NotFound("upload not found") from None
        with trio.fail_after(self.limits.op_timeout):
            upload = await self._uploads.get_upload(upload_id)
            allowed = upload is not None and (
                (sig is not None and self._signer.check(upload_id, variant, sig,
                                                        now=time.time()))
                or (user_id is not None and (user_id == upload.owner_id
                                             or await self._uploads.can_read(upload_id,
                                                                             user_id))))
        if upload is None or not allowed:
            raise NotFound("upload not found")
        if variant == "thumbnail" and upload.thumbnail_sha256 is None:
            raise NotFound("this upload has no thumbnail")
        return upload

    def read(self, sha256: str, *, first: int = 0, last: int | None = None
             ) -> AsyncIterator[bytes]:
        return self._blobs.read(sha256, first=first, last=last)

    def redirect_url(self, sha256: str, *, content_type: str, name: str,
                     disposition: str) -> str | None:
        """A presigned URL to send the client to (S3), or None to serve the bytes here."""
        if not self._redirect:
            return None
        return self._blobs.presigned_url(sha256, ttl=self.limits.url_ttl, filename=name,
                                         content_type=content_type, disposition=disposition)

    # ------------------------------------------------------------------ attachments

    async def resolve(self, owner_id: str, upload_ids: Sequence[str]) -> tuple[Attachment, ...]:
        """The attachments of a message being sent: only the sender's own uploads, each
        once, at most MAX_ATTACHMENTS. Raises Invalid (field `attachments`)."""
        if not upload_ids:
            return ()
        if len(upload_ids) > self.limits.max_attachments:
            raise Invalid(f"at most {self.limits.max_attachments} attachments per message",
                          field="attachments")
        ids = []
        for raw in upload_ids:
            try:
                ids.append(parse_id(raw, "attachments"))
            except Invalid:
                raise Invalid("attachments must be upload ids", field="attachments") from None
        if len(set(ids)) != len(ids):
            raise Invalid("an upload is attached twice", field="attachments")
        with trio.fail_after(self.limits.op_timeout):
            found = {u.id: u for u in await self._uploads.get_uploads(ids)}
        for upload_id in ids:
            u = found.get(upload_id)
            if u is None or u.owner_id != owner_id:
                raise Invalid(f"unknown upload {upload_id}", field="attachments")
        return tuple(attachment_of(found[i]) for i in ids)

    async def release_attachments(self, message_id: str) -> int:
        """A message is deleted: its attachments go; uploads no other message carries are
        deleted with their blobs. Returns how many uploads were deleted."""
        with trio.fail_after(self.limits.op_timeout):
            released = await self._uploads.release(message_id)
        await self._drop_blobs(released)
        return len(released)

    # ------------------------------------------------------------------ orphans

    async def sweep(self) -> int:
        """Delete uploads never attached to a message within UPLOAD_ORPHAN_TTL (and their
        blobs, unless other uploads share them). Returns how many."""
        before = utcnow() - timedelta(seconds=self.limits.orphan_ttl)
        total = 0
        while True:
            with trio.fail_after(self.limits.op_timeout):
                batch = await self._uploads.orphans(before, limit=SWEEP_BATCH)
                if not batch:
                    return total
                await self._uploads.delete_uploads([u.id for u in batch])
            await self._drop_blobs(batch)
            total += len(batch)
            if len(batch) < SWEEP_BATCH:
                return total

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Forever: sweep orphans every UPLOAD_SWEEP_INTERVAL (supervised by the node)."""
        task_status.started()
        while True:
            removed = await self.sweep()
            if removed:
                log.info("removed %d orphaned uploads", removed)
            self._swept.set()
            self._swept = trio.Event()
            await trio.sleep(self.limits.sweep_interval)

    async def wait_sweep(self) -> None:
        """Until the periodic sweep has run once more."""
        await self._swept.wait()

    async def _drop_blobs(self, gone: Sequence[Upload]) -> None:
        shas = {u.sha256 for u in gone} | {u.thumbnail_sha256 for u in gone
                                            if u.thumbnail_sha256}
        for sha in shas:
            async with self._locks.hold(sha):
                with trio.fail_after(self.limits.op_timeout):
                    if not await self._uploads.blob_in_use(sha):
                        await self._blobs.delete(sha)
