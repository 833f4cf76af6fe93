"""The served docs over real HTTP: /api/docs, /api/docs/protocol, /docs and /favicon.ico
(the rendering itself is tests/unit/test_docs.py; the page in a browser, with every path
of the OpenAPI document, is tests/browser/test_docs.py)."""

from __future__ import annotations

import pytest

from chatsrv.transport.http.edge import CSP
from tests.helpers import Client

# nothing here touches storage: one backend is enough
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


async def test_docs_pages_are_served_under_the_web_clients_policy(client: Client) -> None:
    for path in ("/api/docs", "/api/docs/protocol"):
        r = await client.http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html"), path
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
    page = (await client.http.get("/api/docs")).text
    assert 'src="/web/docs.js"' in page and 'href="/api/docs/protocol"' in page
    assert "<script>" not in page  # no inline script: script-src 'self' holds
    for asset in ("/web/docs.js", "/web/docs.css"):
        assert (await client.http.get(asset)).status_code == 200, asset


async def test_protocol_reference_is_rendered_html_without_script(client: Client) -> None:
    r = await client.http.get("/api/docs/protocol")
    page = r.text
    assert '<h2 id="close-codes">Close codes</h2>' in page
    assert "<table>" in page and "<code>message_status</code>" in page
    assert "<script" not in page
    assert '<a href="/api/docs">' in page  # and back to the REST reference


async def test_docs_shortcut_and_favicon(client: Client) -> None:
    r = await client.http.get("/docs")
    assert r.status_code == 302 and r.headers["location"] == "/api/docs"
    r = await client.http.get("/favicon.ico")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.content.startswith(b"<svg")
    assert "max-age=86400" in r.headers["cache-control"]


async def test_openapi_points_at_the_protocol_reference(client: Client) -> None:
    doc = (await client.http.get("/api/openapi.json")).json()
    assert "/api/docs/protocol" in doc["info"]["description"]
    # the pages are not API operations
    assert not {"/api/docs", "/api/docs/protocol", "/docs", "/favicon.ico"} & set(doc["paths"])
