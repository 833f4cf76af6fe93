"""Uploads across two nodes sharing PostgreSQL, Redis and an S3 bucket (moto): a file
uploaded through one node is sent, listed and downloaded through the other, with the
signed URLs the first node made."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.cluster.conftest import Cluster
from tests.s3 import s3_endpoint  # noqa: F401 (a fixture)


@pytest.mark.parametrize("redis_url", ["redis"], indirect=True)  # Redis plays no part here
async def test_upload_on_one_node_download_on_the_other(cluster: Cluster,
                                                        request: pytest.FixtureRequest) -> None:
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = {"s3_endpoint": endpoint, "s3_bucket": "cluster-uploads", "s3_access_key": "test",
          "s3_secret_key": "test-secret"}
    n1, n2 = await cluster.start("node-1", **s3), await cluster.start("node-2", **s3)
    c1, c2 = n1.client(), n2.client()
    try:
        a, b = await c1.register(), await c1.register()
        conv = await c1.conversation(a, b)
        out = io.BytesIO()
        Image.new("RGB", (500, 400), (9, 9, 9)).save(out, "PNG")
        r = await c1.http.post("/api/uploads", params={"name": "x.png"},
                               content=out.getvalue(), headers=a.headers)
        assert r.status_code == 201, r.text
        up = r.json()
        r = await c1.http.post(f"/api/conversations/{conv}/messages", headers=a.headers,
                               json={"content": "", "attachments": [up["id"]]})
        assert r.status_code == 201, r.text
        r = await c2.http.get(f"/api/conversations/{conv}/messages", headers=b.headers)
        [msg] = r.json()["messages"]
        [att] = msg["attachments"]
        for url in (up["url"], att["thumbnail_url"]):  # one node's signature, the other node
            r = await c2.http.get(url, follow_redirects=True)
            assert r.status_code == 200, url
        r = await c2.http.get(f"/api/uploads/{up['id']}", headers=b.headers,
                              follow_redirects=True)
        assert r.content == out.getvalue()
    finally:
        await c1.aclose()
        await c2.aclose()
