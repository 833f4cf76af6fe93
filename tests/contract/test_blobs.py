"""The BlobStore contract, on local disk and on S3 (a moto S3 API server started here).

The S3 server is moto's `ThreadedMotoServer` (a Werkzeug server in a thread of this
process) on a free port of 127.0.0.1; the adapter talks real HTTP to it, signs every
request with SigV4 and creates its bucket itself, like against AWS or MinIO.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from chatsrv.adapters.blobs.local import LocalBlobStore
from chatsrv.adapters.blobs.s3 import open_s3
from chatsrv.domain.errors import NotFound
from chatsrv.domain.ports import BlobStore
from tests.s3 import s3_endpoint  # noqa: F401 (a fixture)


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"t-{request.node.name.split('[')[0][-20:].replace('_', '-')}-{id(tmp_path) % 10**6}"
    async with open_s3(endpoint=endpoint, bucket=bucket.lower(), access_key="test",
                       secret_key="test-secret", region="us-east-1", stall=10) as s3:
        yield s3


def _temp(tmp_path: Path, data: bytes, name: str = "upload.tmp") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


async def _read(blobs: BlobStore, sha: str, **kw: int | None) -> bytes:
    out = b""
    async for chunk in blobs.read(sha, **kw):  # type: ignore[arg-type]
        out += chunk
    return out


async def test_put_then_read_whole_and_ranges(blobs: BlobStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000  # 256 kB: several chunks
    path, sha = _temp(tmp_path, data)
    with trio.fail_after(10):
        assert not await blobs.exists(sha)
        await blobs.put_file(path, sha256=sha, size=len(data))
        assert not path.exists()  # consumed
        assert await blobs.exists(sha)
        assert await _read(blobs, sha) == data
        assert await _read(blobs, sha, first=1000, last=1999) == data[1000:2000]
        assert await _read(blobs, sha, first=len(data) - 5) == data[-5:]


async def test_same_bytes_are_stored_once(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"same bytes twice"
    first, sha = _temp(tmp_path, data, "a")
    second, _ = _temp(tmp_path, data, "b")
    with trio.fail_after(10):
        await blobs.put_file(first, sha256=sha, size=len(data))
        await blobs.put_file(second, sha256=sha, size=len(data))
        assert not second.exists()
        assert await _read(blobs, sha) == data
        await blobs.delete(sha)
        assert not await blobs.exists(sha)


async def test_missing_blob(blobs: BlobStore) -> None:
    sha = hashlib.sha256(b"never stored").hexdigest()
    with trio.fail_after(10):
        with pytest.raises(NotFound):
            await _read(blobs, sha)
        await blobs.delete(sha)  # not an error


async def test_presigned_url_serves_the_bytes(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"%PDF-1.4 presigned"
    path, sha = _temp(tmp_path, data)
    with trio.fail_after(10):
        await blobs.put_file(path, sha256=sha, size=len(data))
        url = blobs.presigned_url(sha, ttl=60, filename="r\u00e9sum\u00e9.pdf",
                                  content_type="application/pdf",
                                  disposition="attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf")
        if isinstance(blobs, LocalBlobStore):
            assert url is None  # the node serves local blobs itself
            return
        assert url is not None
        async with httpx.AsyncClient() as client:
            resp = await client.get(url)
            assert resp.status_code == 200
            assert resp.content == data
            assert resp.headers["content-type"] == "application/pdf"
            assert "attachment" in resp.headers["content-disposition"]
            tampered = url.replace(sha[:8], "0" * 8)
            assert (await client.get(tampered)).status_code in (403, 404)


async def test_local_layout_is_content_addressed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    path, sha = _temp(tmp_path, b"layout")
    await store.put_file(path, sha256=sha, size=6)
    assert (tmp_path / "blobs" / sha[:2] / sha[2:4] / sha).read_bytes() == b"layout"
    assert not list((tmp_path / "blobs").rglob("*.part"))
