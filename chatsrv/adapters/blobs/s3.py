"""Blobs in an S3-compatible bucket (AWS, MinIO, Ceph RGW, Garage, moto), path-style
requests signed with AWS Signature Version 4 over httpx.

Objects are `blobs/ab/<sha256>`. A PUT is atomic in S3 (an object appears whole or not at
all), so no temp key is needed; the payload hash signed is the blob's own SHA-256, which
S3 verifies. Downloads can skip the node: `presigned_url` is a GET signed in the query
string (X-Amz-Expires), with the response's Content-Type and Content-Disposition fixed by
`response-content-*` parameters so the bucket serves them like the node would.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import trio

from chatsrv.domain.errors import Invalid, NotFound, Unavailable

CHUNK = 64 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _uri_encode(text: str, *, slash: bool = True) -> str:
    return quote(text, safe="-_.~" + ("/" if slash else ""))


class SigV4:
    """AWS Signature Version 4 for one service and region (pure: takes `now`)."""

    def __init__(self, *, access_key: str, secret_key: str, region: str,
                 service: str = "s3") -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.service = service

    def _scope(self, day: str) -> str:
        return f"{day}/{self.region}/{self.service}/aws4_request"

    def _signature(self, canonical: str, amz_date: str) -> str:
        day = amz_date[:8]
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, self._scope(day),
                             hashlib.sha256(canonical.encode()).hexdigest()))
        key = _hmac(_hmac(_hmac(_hmac(("AWS4" + self.secret_key).encode(), day),
                                self.region), self.service), "aws4_request")
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _canonical(method: str, path: str, query: Mapping[str, str],
                   headers: Mapping[str, str], payload: str) -> tuple[str, str]:
        q = "&".join(f"{_uri_encode(k, slash=False)}={_uri_encode(v, slash=False)}"
                     for k, v in sorted(query.items()))
        names = sorted(h.lower() for h in headers)
        lower = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        canonical_headers = "".join(f"{n}:{lower[n]}\n" for n in names)
        signed = ";".join(names)
        return "\n".join((method, _uri_encode(path), q, canonical_headers, signed,
                          payload)), signed

    def sign_headers(self, method: str, host: str, path: str, query: Mapping[str, str],
                     *, payload_sha256: str, now: datetime,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers to send (Authorization included)."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        headers = {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256,
                   **(extra or {})}
        canonical, signed = self._canonical(method, path, query, headers, payload_sha256)
        signature = self._signature(canonical, amz_date)
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{self._scope(amz_date[:8])}, "
            f"SignedHeaders={signed}, Signature={signature}")
        del headers["host"]  # httpx sends it
        return headers

    def presign(self, method: str, host: str, path: str, query: Mapping[str, str], *,
                expires: int, now: datetime) -> dict[str, str]:
        """The query string of a presigned URL (the X-Amz-* parameters added)."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        q = {**query, "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
             "X-Amz-Credential": f"{self.access_key}/{self._scope(amz_date[:8])}",
             "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires),
             "X-Amz-SignedHeaders": "host"}
        canonical, _ = self._canonical(method, path, q, {"host": host}, UNSIGNED)
        q["X-Amz-Signature"] = self._signature(canonical, amz_date)
        return q


class S3BlobStore:
    def __init__(self, client: httpx.AsyncClient, *, endpoint: str, bucket: str,
                 signer: SigV4, close_deadline: float = 2.0) -> None:
        self._client = client
        self._close_deadline = close_deadline  # a response's shielded close (CLEANUP_DEADLINE)
        parts = urlsplit(endpoint.rstrip("/"))
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._prefix = parts.path  # an endpoint behind a path (rare)
        self.bucket = bucket
        self._signer = signer

    def _path(self, sha256: str | None = None) -> str:
        if sha256 is None:
            return f"{self._prefix}/{self.bucket}"
        if not _SHA256.fullmatch(sha256):
            raise Invalid("not a sha256 digest")
        return f"{self._prefix}/{self.bucket}/blobs/{sha256[:2]}/{sha256}"

    def _request(self, method: str, path: str, *, payload: str = EMPTY_SHA256,
                 extra: Mapping[str, str] | None = None, content: object = None
                 ) -> httpx.Request:
        headers = self._signer.sign_headers(method, self._host, path, {},
                                            payload_sha256=payload,
                                            now=datetime.now(UTC), extra=extra)
        return self._client.build_request(method, self._base + _uri_encode(path),
                                          headers=headers, content=content)  # type: ignore[arg-type]

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return await self._client.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise Unavailable(f"object storage: {type(exc).__name__}") from exc

    @staticmethod
    def _check(resp: httpx.Response, *ok: int) -> None:
        if resp.status_code not in ok:
            raise Unavailable(f"object storage answered {resp.status_code}")

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (a fresh MinIO or test server)."""
        resp = await self._send(self._request("HEAD", self._path()))
        if resp.status_code == 404:
            resp = await self._send(self._request("PUT", self._path()))
            self._check(resp, 200, 409)  # 409: created meanwhile
        else:
            self._check(resp, 200)

    async def put_file(self, path: Path, *, sha256: str, size: int) -> None:
        try:
            if await self.exists(sha256):
                return

            async def body() -> AsyncIterator[bytes]:
                async with await trio.open_file(path, "rb") as f:
                    while chunk := await f.read(CHUNK):
                        yield chunk

            request = self._request("PUT", self._path(sha256), payload=sha256,
                                    extra={"content-length": str(size),
                                           "content-type": "application/octet-stream"},
                                    content=body())
            resp = await self._send(request)
            self._check(resp, 200)
        finally:
            await trio.Path(path).unlink(missing_ok=True)

    async def exists(self, sha256: str) -> bool:
        resp = await self._send(self._request("HEAD", self._path(sha256)))
        if resp.status_code == 404:
            return False
        self._check(resp, 200)
        return True

    async def read(self, sha256: str, *, first: int = 0,
                   last: int | None = None) -> AsyncIterator[bytes]:
        extra = {}
        if first or last is not None:
            extra["range"] = f"bytes={first}-{'' if last is None else last}"
        resp = await self._send(self._request("GET", self._path(sha256), extra=extra),
                                stream=True)
        try:
            if resp.status_code == 404:
                raise NotFound("blob not found")
            self._check(resp, 200, 206)
            try:
                async for chunk in resp.aiter_bytes(CHUNK):
                    yield chunk
            except httpx.HTTPError as exc:
                raise Unavailable(f"object storage: {type(exc).__name__}") from exc
        finally:
            with trio.move_on_after(self._close_deadline, shield=True):
                await resp.aclose()

    async def delete(self, sha256: str) -> None:
        resp = await self._send(self._request("DELETE", self._path(sha256)))
        self._check(resp, 200, 204, 404)

    def presigned_url(self, sha256: str, *, ttl: float, filename: str, content_type: str,
                      disposition: str) -> str | None:
        path = self._path(sha256)
        query = self._signer.presign(
            "GET", self._host, path,
            {"response-content-type": content_type,
             "response-content-disposition": disposition},
            expires=max(1, int(ttl)), now=datetime.now(UTC))
        q = "&".join(f"{_uri_encode(k, slash=False)}={_uri_encode(v, slash=False)}"
                     for k, v in sorted(query.items()))
        return f"{self._base}{_uri_encode(path)}?{q}"


@asynccontextmanager
async def open_s3(*, endpoint: str, bucket: str, access_key: str, secret_key: str,
                  region: str, stall: float, close_deadline: float = 2.0
                  ) -> AsyncIterator[S3BlobStore]:
    """An S3 store with its connection pool for the block; the bucket is created if
    missing. `stall`: how long one read or write of a request may stall;
    `close_deadline`: how long closing a response may take (shielded)."""
    signer = SigV4(access_key=access_key, secret_key=secret_key, region=region)
    async with httpx.AsyncClient(timeout=httpx.Timeout(stall)) as client:
        store = S3BlobStore(client, endpoint=endpoint, bucket=bucket, signer=signer,
                            close_deadline=close_deadline)
        with trio.fail_after(stall):
            await store.ensure_bucket()
        yield store
