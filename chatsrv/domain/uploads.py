"""Uploads as the domain sees them: the record, content sniffing, file names, byte ranges.

All pure: no I/O, tested without Trio. The bytes live in a BlobStore (ports.py), keyed by
their SHA-256; the record says who uploaded them, under which name, and what they are.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

OCTET_STREAM = "application/octet-stream"
SNIFF_BYTES = 512  # enough for every signature below and for the text/markup look
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# served with Content-Disposition: inline (a browser shows them; none of them runs script
# under `Content-Security-Policy: sandbox`); everything else is an attachment
INLINE_TYPES = IMAGE_TYPES | {"application/pdf", "audio/mpeg", "audio/ogg", "audio/wav",
                              "audio/flac", "audio/mp4", "video/mp4", "video/webm",
                              "video/quicktime"}
MAX_NAME_CHARS = 255
THUMBNAIL_TYPE = "image/webp"  # every thumbnail (WebP keeps transparency, and is small)


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    owner_id: str
    name: str
    content_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    thumbnail_sha256: str | None  # the thumbnail's blob (THUMBNAIL_TYPE), if any
    created_at: datetime
    attached_at: datetime | None = None  # first sent in a message; None: an orphan candidate


@dataclass(frozen=True, slots=True)
class Attachment:
    """An upload as a message carries it (what every member may see)."""

    id: str
    name: str
    content_type: str
    size: int
    width: int | None
    height: int | None
    has_thumbnail: bool
    url: str = ""  # signed download URLs, filled in when a message is handed out
    thumbnail_url: str | None = None


def attachment_of(u: Upload) -> Attachment:
    return Attachment(id=u.id, name=u.name, content_type=u.content_type, size=u.size,
                      width=u.width, height=u.height, has_thumbnail=u.thumbnail_sha256 is not None)


# (offset, signature, content type). Checked in order; the first that matches wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),  # an empty archive
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\xff\xfb", "audio/mpeg"),
    (0, b"\xff\xf3", "audio/mpeg"),
    (0, b"\xff\xf2", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),  # Matroska/WebM (EBML)
    (0, b"BM", "image/bmp"),
)
# markup a browser could run script from, if it ever rendered it: never served as itself
_ACTIVE = re.compile(rb"^\s*(?:<!doctype\s+html|<html|<head|<body|<script|<svg|<\?xml|<!--"
                     rb"|<iframe|<object|<embed|<meta|<link|<style|<title|<div|<a\s|<img"
                     rb"|<table|<p\b|<br|<h\d)", re.IGNORECASE)


def sniff(head: bytes) -> str:
    """The content type of a file from its first bytes (SNIFF_BYTES), never from what the
    client claims. Markup (HTML, SVG, XML) and anything unrecognised binary is
    application/octet-stream; UTF-8 text without markup is text/plain."""
    for offset, signature, ctype in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    if _ACTIVE.match(body) or b"<script" in body.lower() or b"<html" in body.lower():
        return OCTET_STREAM
    if _is_text(body):
        return "text/plain"
    return OCTET_STREAM


def _is_text(data: bytes) -> bool:
    if not data or b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the end of the sniffed window is still text
        if exc.start < len(data) - 3:
            return False
    return all(b >= 0x20 or b in b"\t\n\r\f" for b in data)


def clean_name(raw: str | None, content_type: str) -> str:
    """A display file name: the client's, without a path, control characters or
    surrounding dots and spaces, at most MAX_NAME_CHARS; "file" (with an extension for the
    type) when nothing is left."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip(" .")[:MAX_NAME_CHARS]
    if not name:
        name = "file" + _EXTENSIONS.get(content_type, "")
    return name


_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif",
               "image/webp": ".webp", "application/pdf": ".pdf", "text/plain": ".txt",
               "application/zip": ".zip"}


def content_disposition(name: str, *, inline: bool) -> str:
    """RFC 6266: an ASCII fallback `filename` (quotes, backslashes and non-ASCII replaced)
    and the exact name as RFC 5987 `filename*=UTF-8''…`."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%;' else "_" for c in name)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class RangeNotSatisfiable(Exception):
    """416: the Range header asks for nothing inside the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """RFC 9110 §14.2 for one range: (first, last) inclusive, or None to send it all (no
    header, one we do not handle: several ranges, another unit). Raises
    RangeNotSatisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first_s == "":
            suffix = int(last_s)
            if suffix <= 0:
                raise RangeNotSatisfiable
            return max(0, size - suffix), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


def etag(sha256: str, *, thumbnail: bool = False) -> str:
    return f'"{"t-" if thumbnail else ""}{sha256}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """If-None-Match (weak comparison, `*` matches anything)."""
    if not if_none_match:
        return False
    candidates = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in candidates or tag in candidates
