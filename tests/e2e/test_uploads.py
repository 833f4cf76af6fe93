"""Uploads end to end on a real node (SQLite and PostgreSQL, local-disk blobs): limits,
sniffing, thumbnails without EXIF, who may download, Range/ETag, attachments in message
payloads, orphans and released attachments."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import replace
from typing import Any

import pytest
import trio
from PIL import Image

from chatsrv.config import Settings
from tests.conftest import Server, start_server
from tests.helpers import Account, Client, pair
from tests.s3 import s3_endpoint  # noqa: F401 (a fixture)

PNG_AS_HTML = {"Content-Type": "text/html"}


def _jpeg_with_gps(size: tuple[int, int] = (1200, 800), orientation: int = 1) -> bytes:
    img = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x0112] = orientation
    exif[0x8825] = {2: (52.0, 31.0, 12.0), 1: "N"}  # GPS IFD: latitude
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif)
    data = out.getvalue()
    assert b"SpyCam" in data
    return data


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, (0, 120, 255, 128)).save(out, "PNG")
    return out.getvalue()


async def upload(client: Client, who: Account, data: bytes, *, name: str = "f.bin",
                 headers: dict[str, str] | None = None) -> Any:
    r = await client.http.post("/api/uploads", params={"name": name}, content=data,
                               headers={**who.headers, "Content-Type": "application/octet-stream",
                                        **(headers or {})})
    assert r.status_code == 201, r.text
    return r.json()


async def send(client: Client, who: Account, conv: str, attachments: list[str],
               content: str = "look") -> Any:
    r = await client.http.post(f"/api/conversations/{conv}/messages", headers=who.headers,
                               json={"content": content, "attachments": attachments})
    assert r.status_code == 201, r.text
    return r.json()


async def test_png_sent_as_html_is_an_image_with_thumbnail(client: Client) -> None:
    a = await client.register()
    data = _png()
    up = await upload(client, a, data, name="pic.png", headers=PNG_AS_HTML)
    assert up["content_type"] == "image/png"
    assert (up["width"], up["height"]) == (64, 48)
    assert up["size"] == len(data) and up["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["thumbnail_url"]
    r = await client.http.get(up["url"])  # the signed URL works without a header
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.headers["content-disposition"].startswith("inline")


async def test_html_sent_as_png_is_an_octet_stream_attachment(client: Client) -> None:
    a = await client.register()
    page = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    up = await upload(client, a, page, name="evil.png", headers={"Content-Type": "image/png"})
    assert up["content_type"] == "application/octet-stream"
    assert up["thumbnail_url"] is None and up["width"] is None
    r = await client.http.get(f"/api/uploads/{up['id']}", headers=a.headers)
    assert r.status_code == 200 and r.content == page
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment;")
    for svg in (b'<?xml version="1.0"?><svg onload="alert(1)"/>', b"<svg><script/></svg>"):
        assert (await upload(client, a, svg, name="x.svg"))["content_type"] == \
            "application/octet-stream"


async def test_text_and_pdf_are_sniffed(client: Client) -> None:
    a = await client.register()
    assert (await upload(client, a, "grüße\n".encode()))["content_type"] == "text/plain"
    pdf = await upload(client, a, b"%PDF-1.7\n...", name="r\u00e9sum\u00e9 \"x\".pdf")
    assert pdf["content_type"] == "application/pdf"
    r = await client.http.get(pdf["url"])
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("inline;")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.pdf" in disposition
    assert 'filename="r_sum_ _x_.pdf"' in disposition


async def test_thumbnail_has_no_exif_and_the_size_is_kept(client: Client) -> None:
    a = await client.register()
    up = await upload(client, a, _jpeg_with_gps(), name="holiday.jpg")
    assert up["content_type"] == "image/jpeg" and (up["width"], up["height"]) == (1200, 800)
    r = await client.http.get(up["thumbnail_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert b"SpyCam" not in r.content
    thumb = Image.open(io.BytesIO(r.content))
    assert max(thumb.size) == 320 and not thumb.getexif()


async def test_the_original_jpeg_loses_its_exif_but_not_its_pixels_or_orientation(
        client: Client) -> None:
    a = await client.register()
    sent = _jpeg_with_gps((300, 200), orientation=6)  # rotated 90°: shown 200 x 300
    up = await upload(client, a, sent, name="phone.jpg")
    assert (up["width"], up["height"]) == (200, 300)
    stored = (await client.http.get(up["url"])).content
    assert b"SpyCam" not in stored and len(stored) < len(sent)
    assert up["sha256"] == hashlib.sha256(stored).hexdigest() and up["size"] == len(stored)
    img = Image.open(io.BytesIO(stored))
    assert dict(img.getexif()) == {0x0112: 6}  # only the orientation is left
    assert img.tobytes() == Image.open(io.BytesIO(sent)).tobytes()  # not re-encoded


async def test_over_the_limit_is_413_with_and_without_content_length(
        server: Server, client: Client) -> None:
    a = await client.register()
    cap = server.settings.max_upload_bytes
    r = await client.http.post("/api/uploads", content=b"x" * (cap + 1), headers=a.headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    async def chunked() -> Any:
        for _ in range(cap // 65536 + 2):
            yield b"y" * 65536

    r = await client.http.post("/api/uploads", content=chunked(), headers=a.headers)
    assert r.status_code == 413
    # a Content-Length that lies (says 10, more follows): only 10 bytes are the upload,
    # the rest is not taken as part of it
    with trio.fail_after(10):
        reply = await _lying_upload(server, a, claimed=10, extra=64 * 1024)
    assert reply.startswith(b"HTTP/1.1 201") and b'"size":10' in reply
    assert (await upload(client, a, b"still fine"))["size"] == 10  # the node is alive
    assert not list((server.settings.data_dir / "uploads-tmp").glob("*"))  # no leftovers


async def _lying_upload(server: Server, who: Account, *, claimed: int, extra: int) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (f"POST /api/uploads HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {who.token}"
            f"\r\nContent-Length: {claimed}\r\n\r\n").encode()
    await stream.send_all(head + b"z" * (claimed + extra))
    reply = b""
    while b"}" not in reply:
        data = await stream.receive_some()
        if not data:
            break
        reply += data
    await trio.aclose_forcefully(stream)
    return reply


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # small limits so the tests move little data; orphans swept by hand
    return replace(settings, max_upload_bytes=256 * 1024, upload_quota_bytes=600 * 1024,
                   max_image_pixels=4_000_000, upload_sweep_interval=3600.0,
                   cors_origins=("https://chat.example",))


async def test_quota_is_413_quota_exceeded(client: Client) -> None:
    a = await client.register()
    for _ in range(2):
        await upload(client, a, b"q" * (250 * 1024))
    r = await client.http.post("/api/uploads", content=b"q" * (200 * 1024), headers=a.headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "quota_exceeded"
    b = await client.register()
    assert (await upload(client, b, b"q" * (200 * 1024)))["size"] == 200 * 1024


async def test_decompression_bomb_is_refused_and_the_node_lives(client: Client) -> None:
    a = await client.register()
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")  # 100 Mpx in ~15 kB
    r = await client.http.post("/api/uploads", content=out.getvalue(), headers=a.headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    assert (await upload(client, a, _png()))["content_type"] == "image/png"


async def test_multipart_upload(client: Client) -> None:
    a = await client.register()
    data = _png()
    r = await client.http.post("/api/uploads", headers=a.headers,
                               data={"note": "ignored"},
                               files={"file": ("ph\u00f6to.png", data, "text/plain")})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["name"] == "ph\u00f6to.png" and up["content_type"] == "image/png"
    assert (await client.http.get(up["url"])).content == data
    r = await client.http.post("/api/uploads", headers=a.headers,
                               files={"other": ("x", b"abc", "text/plain")})
    assert r.status_code == 400


async def test_who_may_download(client: Client) -> None:
    owner, member, conv = await pair(client)
    outsider, ex_member = await client.register(), await client.register()
    group = await client.conversation(owner, member, ex_member, name="g")
    up = await upload(client, owner, _png(), name="p.png")
    paths = [f"/api/uploads/{up['id']}", f"/api/uploads/{up['id']}/thumbnail"]

    async def statuses(who: Account) -> list[int]:
        return [(await client.http.get(p, headers=who.headers)).status_code for p in paths]

    assert await statuses(owner) == [200, 200]
    assert await statuses(member) == [404, 404]  # not sent anywhere yet
    await send(client, owner, group, [up["id"]])
    assert await statuses(member) == [200, 200]
    assert await statuses(ex_member) == [200, 200]
    r = await client.http.delete(f"/api/conversations/{group}/members/{ex_member.id}",
                                 headers=ex_member.headers)
    assert r.status_code in (200, 204), r.text
    assert await statuses(ex_member) == [404, 404]
    assert await statuses(outsider) == [404, 404]
    assert (await client.http.get(paths[0])).status_code == 401  # no header, no signature
    bad = up["url"].rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAAAA"
    assert (await client.http.get(bad)).status_code == 404
    # a signature is for one upload and one variant
    other = await upload(client, outsider, b"other")
    sig = up["url"].split("sig=")[1]
    assert (await client.http.get(f"/api/uploads/{other['id']}?sig={sig}")).status_code == 404
    assert (await client.http.get(f"{paths[1]}?sig={sig}")).status_code == 404
    assert (await client.http.get("/api/uploads/not-an-id", headers=owner.headers)
            ).status_code == 404
    del conv


async def test_range_etag_and_304(client: Client) -> None:
    a = await client.register()
    data = bytes(range(256)) * 64
    up = await upload(client, a, data)
    url = f"/api/uploads/{up['id']}"
    r = await client.http.get(url, headers={**a.headers, "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    r = await client.http.get(url, headers={**a.headers, "Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = await client.http.get(url, headers={**a.headers, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    r = await client.http.get(url, headers=a.headers)
    tag = r.headers["etag"]
    assert tag == f'"{up["sha256"]}"' and r.headers["accept-ranges"] == "bytes"
    r = await client.http.get(url, headers={**a.headers, "If-None-Match": tag})
    assert r.status_code == 304 and r.content == b""
    r = await client.http.get(url, headers={**a.headers, "If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == data
    # a web client on another allowed origin can read them and send Range / If-None-Match
    r = await client.http.options(url, headers={
        "Origin": "https://chat.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range, if-none-match"})
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "range" in allowed and "if-none-match" in allowed
    r = await client.http.get(url, headers={**a.headers, "Origin": "https://chat.example"})
    exposed = r.headers["access-control-expose-headers"]
    assert {"ETag", "Content-Range", "Content-Disposition"} <= set(exposed.split(", "))


async def test_attachments_in_message_payloads(client: Client) -> None:
    a, b, conv = await pair(client)
    img = await upload(client, a, _png(), name="p.png")
    doc = await upload(client, a, b"%PDF-1.4 x", name="d.pdf")
    async with client.ws(b) as ws_b, client.ws(a) as ws_a:
        ack = await ws_a.request("chat_message", {"conversation_id": conv, "content": "",
                                                  "attachments": [img["id"], doc["id"]]},
                                 "message_ack")
        assert ack["type"] == "message_ack", ack
        frame = await ws_b.expect("new_message", conversation_id=conv)
        got = frame["payload"]["attachments"]
        assert [x["id"] for x in got] == [img["id"], doc["id"]]
        assert set(got[0]) == {"id", "name", "content_type", "size", "url", "thumbnail_url",
                               "width", "height"}
        assert got[0]["width"] == 64 and got[1]["thumbnail_url"] is None
        r = await client.http.get(got[0]["thumbnail_url"])  # works in an <img src>
        assert r.status_code == 200
        # someone else's upload, an unknown id, too many
        other = await upload(client, b, b"mine")
        too_many = [str(uuid.uuid4()) for _ in range(11)]  # MAX_ATTACHMENTS is 10
        for bad in ([other["id"]], ["00000000-0000-4000-8000-000000000000"], ["nope"],
                    [img["id"], img["id"]], too_many):
            err = await ws_a.request("chat_message", {"conversation_id": conv, "content": "x",
                                                      "attachments": bad}, "message_ack")
            assert err["type"] == "error" and err["payload"]["code"] == "invalid_request"
        await ws_b.send("sync", {"conversations": {conv: 0}})
        sync = await ws_b.expect("sync_result")
        [synced] = sync["payload"]["messages"]
        assert [x["id"] for x in synced["attachments"]] == [img["id"], doc["id"]]
    resend = {"content": "again", "client_msg_id": "c-1", "attachments": [img["id"]]}
    for status in (201, 200):  # a resend answers the stored message, attachments and all
        r = await client.http.post(f"/api/conversations/{conv}/messages", headers=a.headers,
                                   json=resend)
        assert r.status_code == status and r.json()["attachments"][0]["id"] == img["id"]
    r = await client.http.get(f"/api/conversations/{conv}/messages?limit=1&before_seq=2",
                              headers=b.headers)
    [msg] = r.json()["messages"]
    assert [x["name"] for x in msg["attachments"]] == ["p.png", "d.pdf"]
    r = await client.http.get("/api/conversations", headers=b.headers)
    [listed] = [c for c in r.json()["conversations"] if c["id"] == conv]
    last = listed["last_message"]["attachments"]
    assert [x["id"] for x in last] == [img["id"]]  # the resent message
    r = await client.http.get(last[0]["thumbnail_url"], headers=b.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"


async def test_orphans_are_swept_and_released_attachments_go(server: Server,
                                                             client: Client) -> None:
    a, b, conv = await pair(client)
    svc = server.services.uploads
    kept = await upload(client, a, b"kept bytes")
    orphan = await upload(client, a, b"orphan bytes")
    shared = await upload(client, a, b"kept bytes")  # same bytes: one blob
    msg = await send(client, a, conv, [kept["id"]])
    assert await svc.sweep() == 0  # younger than UPLOAD_ORPHAN_TTL
    svc.limits = replace(svc.limits, orphan_ttl=-1)  # everything unattached is old now
    # the orphan and the unsent copy of the kept bytes (and, on the PostgreSQL database
    # this test run shares, other tests' unsent uploads)
    assert await svc.sweep() >= 2
    for gone in (orphan, shared):
        assert (await client.http.get(f"/api/uploads/{gone['id']}", headers=a.headers)
                ).status_code == 404
    r = await client.http.get(f"/api/uploads/{kept['id']}", headers=b.headers)
    assert r.content == b"kept bytes"  # its blob is still there although `shared` went
    assert await svc.release_attachments(msg["id"]) == 1
    assert (await client.http.get(f"/api/uploads/{kept['id']}", headers=a.headers)
            ).status_code == 404
    blobs = server.settings.data_dir / "blobs"
    assert not [p for p in blobs.rglob("*") if p.is_file()]


@pytest.mark.parametrize("redirect", [True, False])
@pytest.mark.parametrize("backend", ["sqlite"])  # the blob store is what differs here
async def test_on_s3(settings: Settings, request: pytest.FixtureRequest, aio_loop: None,
                     nursery: trio.Nursery, redirect: bool) -> None:
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = replace(settings, s3_endpoint=endpoint, s3_bucket=f"chat-{redirect}".lower(),
                 s3_access_key="test", s3_secret_key="test-secret", s3_redirect=redirect)
    server = await start_server(nursery, s3)
    client = server.client()
    try:
        a, b, conv = await pair(client)
        data = _jpeg_with_gps((640, 480))
        up = await upload(client, a, data, name="p.jpg")
        await send(client, a, conv, [up["id"]])
        for path in (f"/api/uploads/{up['id']}", f"/api/uploads/{up['id']}/thumbnail"):
            r = await client.http.get(path, headers=b.headers)
            if redirect:
                assert r.status_code == 302, r.text
                assert r.headers["location"].startswith(endpoint)
                r = await client.http.get(r.headers["location"])
            assert r.status_code == 200
            if path.endswith("thumbnail"):
                assert r.headers["content-type"] == "image/webp" and b"SpyCam" not in r.content
            else:
                assert r.headers["content-type"] == "image/jpeg"
                assert hashlib.sha256(r.content).hexdigest() == up["sha256"]
                assert b"SpyCam" not in r.content
        outsider = await client.register()
        r = await client.http.get(f"/api/uploads/{up['id']}", headers=outsider.headers)
        assert r.status_code == 404
        if not redirect:
            r = await client.http.get(f"/api/uploads/{up['id']}",
                                      headers={**b.headers, "Range": "bytes=2-5"})
            full = (await client.http.get(f"/api/uploads/{up['id']}", headers=b.headers)).content
            assert r.status_code == 206 and r.content == full[2:6]
    finally:
        await client.aclose()
        server.shutdown.set()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_full_size_upload_is_never_whole_in_memory(
        settings: Settings, aio_loop: None, nursery: trio.Nursery) -> None:
    """25 MiB (the default MAX_UPLOAD_BYTES) through a real node in this process: the
    Python heap's peak grows by far less than the file (tracemalloc counts every bytes
    object, the client's chunks included)."""
    import tracemalloc

    full = replace(settings, max_upload_bytes=Settings.max_upload_bytes,
                   upload_quota_bytes=0)
    server = await start_server(nursery, full)
    client = server.client()
    size = full.max_upload_bytes
    chunk = b"0123456789abcdef" * 4096  # 64 KiB, the same object every time

    async def body() -> Any:
        for _ in range(size // len(chunk)):
            yield chunk

    try:
        a = await client.register()
        tracemalloc.start()
        try:
            r = await client.http.post("/api/uploads", content=body(), headers=a.headers,
                                       timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 201, r.text
        assert r.json()["size"] == size
        assert peak < size / 4, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB upload"
    finally:
        await client.aclose()
        server.shutdown.set()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_node_sweeps_orphans_by_itself(settings: Settings, aio_loop: None,
                                                 nursery: trio.Nursery) -> None:
    fast = replace(settings, upload_orphan_ttl=1.0, upload_sweep_interval=0.1)
    server = await start_server(nursery, fast)
    client = server.client()
    try:
        a = await client.register()
        up = await upload(client, a, b"left behind")
        assert (await client.http.get(up["url"])).status_code == 200
        with trio.fail_after(10):  # UPLOAD_ORPHAN_TTL + a sweep, on a busy machine
            while (await client.http.get(f"/api/uploads/{up['id']}", headers=a.headers)
                   ).status_code != 404:
                await server.services.uploads.wait_sweep()
        assert not [p for p in (fast.data_dir / "blobs").rglob("*") if p.is_file()]
    finally:
        await client.aclose()
        server.shutdown.set()


async def test_deleting_a_message_releases_its_attachments(client: Client) -> None:
    a, b, conv = await pair(client)
    img = await upload(client, a, _png(), name="p.png")
    msg = await send(client, a, conv, [img["id"]])
    r = await client.http.get(f"/api/uploads/{img['id']}", headers=b.headers)
    assert r.status_code == 200
    r = await client.http.delete(f"/api/messages/{msg['id']}", headers=a.headers)
    assert r.status_code in (200, 204), r.text
    for who in (a, b):  # the uploader too: the upload went with the message
        r = await client.http.get(f"/api/uploads/{img['id']}", headers=who.headers)
        assert r.status_code == 404
    r = await client.http.get(f"/api/conversations/{conv}/messages", headers=b.headers)
    [shown] = [m for m in r.json()["messages"] if m["id"] == msg["id"]]
    assert shown["deleted"] is True and shown["attachments"] == [] and shown["content"] == ""
