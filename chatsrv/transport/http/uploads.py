"""Uploads over REST: POST /api/uploads (raw body or multipart field `file`), downloads of
the bytes and the thumbnail.

The upload body bypasses Quart's body buffer: Quart reads a request body into memory as it
arrives (capped by MAX_BODY_BYTES for JSON), with no back-pressure. `streamed_uploads`
wraps the ASGI app so that for `POST /api/uploads` Quart sees an empty body and the
handler reads the real ASGI `receive` itself, one message at a time: Hypercorn's bounded
queue then holds the TCP stream back while the file is written.

Downloads are served to the uploader and to members of a conversation where the upload
was sent (Bearer header), or to the holder of a signed URL (`?sig=`, what message payloads
carry, for <img src>); everyone else gets 404. They never render as a document of this
origin: `X-Content-Type-Options: nosniff`, `Content-Security-Policy: sandbox`, markup
sniffs as application/octet-stream, and only images, PDF, audio and video are inline.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import trio
from quart import Response, request

from chatsrv.domain.errors import Invalid, TooLarge
from chatsrv.domain.uploads import (
    INLINE_TYPES,
    THUMBNAIL_TYPE,
    RangeNotSatisfiable,
    content_disposition,
    etag,
    etag_matches,
    parse_range,
)
from chatsrv.protocol import rest
from chatsrv.protocol.render import render_upload
from chatsrv.services.uploads import UploadService
from chatsrv.transport.http.api import Api, json_response
from chatsrv.transport.http.edge import Edge

UPLOAD_PATH = "/api/uploads"
RECEIVE_KEY = "chatsrv.receive"  # where the wrapper leaves the real ASGI receive
DOWNLOAD_CSP = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'"
MULTIPART_HEAD_LIMIT = 16 * 1024  # bytes of part headers
MIN_DOWNLOAD_RATE = 32 * 1024  # bytes/s a download may be as slow as before it is cut
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def streamed_uploads(app: ASGIApp) -> ASGIApp:
    """`app` with the body of POST /api/uploads left for the handler to stream."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            scope = {**scope, RECEIVE_KEY: receive}
            handed = False

            async def empty() -> dict[str, Any]:
                nonlocal handed
                if not handed:
                    handed = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                # the handler reads the real stream, and sees the disconnect there
                await trio.sleep_forever()
                raise AssertionError  # unreachable

            await app(scope, empty, send)
        else:
            await app(scope, receive, send)

    return asgi


async def _raw_body(receive: Any, *, cap: int) -> AsyncIterator[bytes]:
    """The request body from ASGI, chunk by chunk; TooLarge after `cap` bytes in all."""
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Invalid("the client went away during the upload", code="upload_incomplete")
        body = message.get("body", b"")
        total += len(body)
        if total > cap:
            raise TooLarge(f"upload over {cap} bytes (MAX_UPLOAD_BYTES)")
        if body:
            yield body
        if not message.get("more_body", False):
            return


class _Multipart:
    """The `file` part of a multipart/form-data body, streamed (RFC 7578). Other parts are
    skipped. `start()` reads up to the part's headers and returns its file name."""

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str, field: str = "file") -> None:
        self._chunks = chunks
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buf = b"\r\n"  # the first delimiter has no CRLF of its own
        self._field = field
        self._done = False

    async def _more(self) -> None:
        try:
            self._buf += await self._chunks.__anext__()
        except StopAsyncIteration:
            raise Invalid("multipart body ended early", field="file") from None

    async def _skip_to_delimiter(self) -> None:
        while (i := self._buf.find(self._delimiter)) < 0:
            self._buf = self._buf[-len(self._delimiter):]
            await self._more()
        self._buf = self._buf[i + len(self._delimiter):]

    async def start(self) -> str | None:
        await self._skip_to_delimiter()
        while True:
            while len(self._buf) < 2:
                await self._more()
            if self._buf.startswith(b"--"):
                raise Invalid("multipart body has no `file` part", field="file")
            while (end := self._buf.find(b"\r\n\r\n")) < 0:
                if len(self._buf) > MULTIPART_HEAD_LIMIT:
                    raise Invalid("multipart part headers too long", field="file")
                await self._more()
            head = self._buf[2:end].decode("utf-8", "replace")
            self._buf = self._buf[end + 4:]
            name, filename = _disposition(head)
            if name == self._field:
                return filename
            await self._skip_to_delimiter()

    async def body(self) -> AsyncIterator[bytes]:
        keep = len(self._delimiter)
        while True:
            i = self._buf.find(self._delimiter)
            if i >= 0:
                if i:
                    yield self._buf[:i]
                self._buf = b""
                break
            if len(self._buf) > keep:
                out, self._buf = self._buf[:-keep], self._buf[-keep:]
                yield out
            await self._more()
        # the rest of the body (other parts, the epilogue) is read and dropped
        async for _ in self._chunks:
            pass


def _disposition(head: str) -> tuple[str | None, str | None]:
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        params: dict[str, str] = {}
        for part in value.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        filename = params.get("filename")
        if "filename*" in params and params["filename*"].lower().startswith("utf-8''"):
            filename = unquote(params["filename*"][7:])
        return params.get("name"), filename
    return None, None


def register(api: Api, edge: Edge, *, uploads: UploadService) -> None:
    limits = uploads.limits

    @api.route("POST", UPLOAD_PATH, summary="Upload a file: the raw body (name in ?name=) or "
               "the multipart/form-data field `file`; type sniffed from the bytes",
               response=rest.UploadOut, status=201, query=("name",))
    async def uploads_create() -> Response:
        uid = await edge.user_id()
        await edge.limits.take(edge.limits.expensive, uid)
        receive = request.scope.get(RECEIVE_KEY)
        if receive is None:  # not through streamed_uploads (a test app): nothing to read
            raise Invalid("no request body", field="file")
        # multipart framing adds a little; the file itself is capped in the service
        chunks = _raw_body(receive, cap=limits.max_bytes + MULTIPART_HEAD_LIMIT * 4)
        ctype = request.headers.get("Content-Type", "")
        name = request.args.get("name")
        declared = request.content_length
        if ctype.lower().startswith("multipart/form-data"):
            m = _BOUNDARY.search(ctype)
            if m is None:
                raise Invalid("multipart/form-data without a boundary", field="file")
            if declared is not None and declared > limits.max_bytes + MULTIPART_HEAD_LIMIT * 4:
                raise TooLarge(f"upload over {limits.max_bytes} bytes (MAX_UPLOAD_BYTES)")
            parts = _Multipart(chunks, m.group(1))
            name = await parts.start() or name
            chunks, declared = parts.body(), None
        upload = await uploads.receive(uid, name=name, chunks=chunks, declared_size=declared)
        url, thumb = uploads.urls(upload.id, has_thumbnail=upload.thumbnail_sha256 is not None)
        return json_response(render_upload(upload, url, thumb), 201)

    api.paths[UPLOAD_PATH]["post"]["requestBody"] = {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}},
    }}

    async def download(upload_id: str, variant: str) -> Response:
        sig = request.args.get("sig")
        uid = None
        if sig is None or request.headers.get("Authorization"):
            uid = await edge.user_id()
        upload = await uploads.readable(uid, upload_id, variant=variant, sig=sig)
        thumbnail = variant == "thumbnail"
        sha = upload.thumbnail_sha256 if thumbnail else upload.sha256
        assert sha is not None  # readable() refuses a thumbnail that does not exist
        ctype = THUMBNAIL_TYPE if thumbnail else upload.content_type
        inline = ctype in INLINE_TYPES
        disposition = content_disposition(upload.name, inline=inline)
        tag = etag(upload.sha256, thumbnail=thumbnail)
        headers = {"ETag": tag, "Cache-Control": "private, max-age=3600",
                   "Content-Security-Policy": DOWNLOAD_CSP, "Content-Disposition": disposition,
                   "Cross-Origin-Resource-Policy": "same-origin"}
        if etag_matches(request.headers.get("If-None-Match"), tag):
            return Response(b"", status=304, headers=headers)
        redirect = uploads.redirect_url(sha, content_type=ctype, name=upload.name,
                                        disposition=disposition)
        if redirect is not None:
            return Response(b"", status=302, headers={**headers, "Location": redirect})
        headers["Content-Type"] = ctype
        if thumbnail:  # small; its size is not recorded: sent whole
            return Response(uploads.read(sha), status=200, headers=headers)
        # Quart cuts a response after RESPONSE_TIMEOUT (60 s): a big file to a slow client
        # gets as long as MIN_DOWNLOAD_RATE needs
        timeout = max(60.0, upload.size / MIN_DOWNLOAD_RATE)
        headers["Accept-Ranges"] = "bytes"
        try:
            wanted = parse_range(request.headers.get("Range"), upload.size)
        except RangeNotSatisfiable:
            return Response(b"", status=416, headers={
                **headers, "Content-Range": f"bytes */{upload.size}"})
        if wanted is None:
            headers["Content-Length"] = str(upload.size)
            resp = Response(uploads.read(sha), status=200, headers=headers)
            resp.timeout = timeout
            return resp
        first, last = wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{upload.size}"
        headers["Content-Length"] = str(last - first + 1)
        resp = Response(uploads.read(sha, first=first, last=last), status=206, headers=headers)
        resp.timeout = timeout
        return resp

    @api.route("GET", "/api/uploads/<upload_id>", summary="The bytes of an upload (Range, "
               "ETag; Bearer or the signed `sig` of its `url`); 404 unless the caller may "
               "read it", query=("sig",), also={206: "a byte range", 302: "presigned object "
                                                "storage URL", 304: "not modified"})
    async def uploads_get(upload_id: str) -> Response:
        return await download(upload_id, "file")

    @api.route("GET", "/api/uploads/<upload_id>/thumbnail", summary="An image upload's "
               "thumbnail (WebP, longest side THUMBNAIL_PX); 404 unless the caller may read "
               "it", query=("sig",), also={302: "presigned object storage URL",
                                           304: "not modified"})
    async def uploads_thumbnail(upload_id: str) -> Response:
        return await download(upload_id, "thumbnail")

    for path in ("/api/uploads/{upload_id}", "/api/uploads/{upload_id}/thumbnail"):
        op = api.paths[path]["get"]
        op["responses"]["200"] = {"description": "the bytes", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
        op["security"] = [{"bearer": []}, {}]  # or a signed URL
