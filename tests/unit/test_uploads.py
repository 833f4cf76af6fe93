"""Uploads' pure parts: sniffing, names, Content-Disposition, byte ranges, ETags, signed
URLs, and the streamed multipart reader."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from PIL import Image

from chatsrv.domain.errors import Invalid
from chatsrv.domain.uploads import (
    OCTET_STREAM,
    RangeNotSatisfiable,
    clean_name,
    content_disposition,
    etag_matches,
    parse_range,
    sniff,
)
from chatsrv.services.images import strip_jpeg_metadata
from chatsrv.services.uploads import BlobLocks, UrlSigner
from chatsrv.transport.http.uploads import _Multipart


def _image(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt,ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                       ("GIF", "image/gif"), ("WEBP", "image/webp"),
                                       ("BMP", "image/bmp"), ("PDF", "application/pdf")])
def test_images_and_pdf_by_their_bytes(fmt: str, ctype: str) -> None:
    assert sniff(_image(fmt)[:512]) == ctype


@pytest.mark.parametrize("head,ctype", [
    (b"PK\x03\x04rest", "application/zip"),
    (b"ID3\x04\x00", "audio/mpeg"),
    (b"OggS\x00\x02", "audio/ogg"),
    (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
    (b"\x00\x00\x00\x18ftypM4A ", "audio/mp4"),
    (b"\x1a\x45\xdf\xa3\x9f", "video/webm"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
    ("plain text, ünïcödé\n".encode(), "text/plain"),
    ("€".encode()[:2], "text/plain"),  # a character cut by the sniff window
    (b"<!DOCTYPE html><p>x", OCTET_STREAM),
    (b"\xef\xbb\xbf  <html>", OCTET_STREAM),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", OCTET_STREAM),
    (b"<?xml version='1.0'?><x/>", OCTET_STREAM),
    (b"hello <script>alert(1)</script>", OCTET_STREAM),
    (b"\x00\x01\x02binary", OCTET_STREAM),
    (b"\xff\xfe\xfdnot utf-8 at all", OCTET_STREAM),
])
def test_other_types_and_markup(head: bytes, ctype: str) -> None:
    assert sniff(head) == ctype


def test_clean_name() -> None:
    assert clean_name("../../etc/passwd", "text/plain") == "passwd"
    assert clean_name("C:\\Users\\me\\photo.jpg", "image/jpeg") == "photo.jpg"
    assert clean_name("a\u0000b\nc\u202e.txt", "text/plain") == "abc.txt"
    assert clean_name(" .. ", "image/png") == "file.png"
    assert clean_name(None, OCTET_STREAM) == "file"
    assert len(clean_name("x" * 1000, "text/plain")) == 255


def test_content_disposition_is_rfc_6266() -> None:
    assert content_disposition('r\u00e9sum\u00e9 "1";.pdf', inline=False) == (
        "attachment; filename=\"r_sum_ _1__.pdf\"; "
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22%3B.pdf")
    assert content_disposition("a.png", inline=True).startswith('inline; filename="a.png"')


def test_ranges() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several: the whole file
    assert parse_range("items=0-1", 100) is None
    assert parse_range("bytes=5-2", 100) is None
    assert parse_range("bytes=x-", 100) is None
    for bad in ("bytes=100-", "bytes=500-600", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad, 100)


def test_etags() -> None:
    assert etag_matches('"a", W/"b"', '"b"')
    assert etag_matches("*", '"x"')
    assert not etag_matches('"a"', '"b"') and not etag_matches(None, '"b"')


def test_signed_urls() -> None:
    signer = UrlSigner(b"k" * 32, ttl=3600)
    sig = signer.sign("u1", "file", now=1000.0)
    assert signer.check("u1", "file", sig, now=1000.0)
    assert signer.check("u1", "file", sig, now=1000.0 + 3600)  # at least ttl
    assert not signer.check("u1", "file", sig, now=1000.0 + 2 * 3600)  # at most ~1.25 ttl
    assert not signer.check("u2", "file", sig, now=1000.0)
    assert not signer.check("u1", "thumbnail", sig, now=1000.0)
    assert not UrlSigner(b"j" * 32, ttl=3600).check("u1", "file", sig, now=1000.0)
    assert sig == signer.sign("u1", "file", now=1010.0)  # stable within a step: cacheable
    for junk in ("", "abc", "99999999999999.x", f"{sig}x"):
        assert not signer.check("u1", "file", junk, now=1000.0)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
async def test_multipart_file_part_streams_out(size: int) -> None:
    payload = bytes(range(256)) * 20 + b"\r\n--almost"
    body = (b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
            b"hello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"a.bin\"; filename*=UTF-8''%C3%A4.bin\r\nContent-Type: x/y\r\n\r\n"
            + payload + b"\r\n--XyZ--\r\nepilogue")
    parts = _Multipart(_chunks(body, size), "XyZ")
    assert await parts.start() == "\u00e4.bin"
    got = b"".join([c async for c in parts.body()])
    assert got == payload


async def test_multipart_without_the_file_part() -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n"
    with pytest.raises(Invalid):
        await _Multipart(_chunks(body, 5), "b").start()


def test_strip_jpeg_metadata(tmp_path: Path) -> None:
    plain, commented, clean = tmp_path / "plain.jpg", tmp_path / "c.jpg", tmp_path / "out.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(plain, "JPEG")
    assert not strip_jpeg_metadata(plain, clean) and not clean.exists()  # nothing to remove
    Image.new("RGB", (8, 8), (1, 2, 3)).save(commented, "JPEG", comment=b"secret note",
                                             exif=b"Exif\x00\x00" + Image.Exif().tobytes()[6:])
    assert strip_jpeg_metadata(commented, clean)
    data = clean.read_bytes()
    assert b"secret note" not in data and data.startswith(b"\xff\xd8\xff\xe0")  # JFIF first
    assert Image.open(clean).tobytes() == Image.open(commented).tobytes()
    not_jpeg = tmp_path / "x.jpg"
    not_jpeg.write_bytes(b"\xff\xd8\xff\xe1\x00")  # cut short
    assert not strip_jpeg_metadata(not_jpeg, clean)


async def test_blob_locks_serialise_one_digest() -> None:
    locks = BlobLocks()
    order: list[str] = []
    inside = trio.Event()

    async def sweeper() -> None:
        async with locks.hold("aa"):
            order.append("sweep")
            inside.set()
            await trio.testing.wait_all_tasks_blocked()
            order.append("sweep done")

    async def uploader() -> None:
        await inside.wait()
        async with locks.hold("bb", "aa", None):
            order.append("upload")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweeper)
        nursery.start_soon(uploader)
    assert order == ["sweep", "sweep done", "upload"]
    assert locks._locks == {}  # nothing kept once nobody holds or waits
