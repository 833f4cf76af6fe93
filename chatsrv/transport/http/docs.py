"""Served documentation: /api/docs (the OpenAPI document rendered by chatsrv/web/docs.js),
/api/docs/protocol (docs/protocol.md as HTML), /docs and /favicon.ico.

Nothing comes from a CDN: the API page is a static file of the web client that fetches
/api/openapi.json from this server, and the protocol page is rendered here by markdown-it-py
with raw HTML off (a `<script>` written in the markdown arrives as text) and its link
validation on (no `javascript:` links). Both pages are served under the web client's
Content-Security-Policy (edge.py): no inline script, no inline style.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import trio
from markdown_it import MarkdownIt
from quart import Response, redirect, send_from_directory

from chatsrv.protocol.errors import error_body
from chatsrv.transport.http.api import Api, json_response

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
DOCS_PAGES = ("/api/docs", "/api/docs/protocol")  # edge.py gives them the page CSP


def protocol_path() -> Path:
    """docs/protocol.md ships inside the wheel as chatsrv/docs/protocol.md; in a source
    checkout (and an editable install) it is at the top."""
    here = Path(__file__).resolve()
    packaged = here.parents[2] / "docs" / "protocol.md"
    if packaged.is_file():
        return packaged
    return here.parents[3] / "docs" / "protocol.md"


def _markdown() -> MarkdownIt:
    # "commonmark" has raw HTML on: turn it off, so markup in the file is shown, not run
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}
                      ).enable("table")


def slug(text: str) -> str:
    """A heading's anchor: lower case, runs of anything but letters and digits as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    toc: list[tuple[int, str, str]]  # (level, anchor, text) of every h2 and h3
    body: str  # HTML


def render_markdown(text: str) -> Rendered:
    """Markdown -> HTML with an id on every heading (unique within the page). Pure."""
    md = _markdown()
    tokens = md.parse(text)
    title, toc, used = "", [], set[str]()
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open":
            continue
        words = tokens[i + 1].content
        anchor = base = slug(words)
        n = 2
        while anchor in used:
            anchor, n = f"{base}-{n}", n + 1
        used.add(anchor)
        tok.attrSet("id", anchor)
        level = int(tok.tag[1])
        if level == 1 and not title:
            title = words
        elif level in (2, 3):
            toc.append((level, anchor, words))
    return Rendered(title=title or "chatsrv protocol", toc=toc,
                    body=md.renderer.render(tokens, md.options, {}))


def protocol_page(doc: Rendered) -> str:
    """The protocol reference as a whole HTML page (no script)."""
    items = "".join(
        f'<li class="toc-{level}"><a href="#{anchor}">{html.escape(text)}</a></li>'
        for level, anchor, text in doc.toc)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{html.escape(doc.title)} · chatsrv</title>
  <link rel="icon" href="/web/favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="/web/docs.css">
</head>
<body class="docs protocol">
  <header class="docs-header">
    <a class="brand" href="/api/docs">chatsrv API</a>
    <nav class="docs-links">
      <a href="/api/docs">REST reference</a>
      <a href="/api/docs/protocol" aria-current="page">Protocol reference</a>
      <a href="/api/openapi.json">openapi.json</a>
      <a href="/">Web client</a>
    </nav>
  </header>
  <div class="docs-layout">
    <nav class="docs-toc" aria-label="Contents"><ul>{items}</ul></nav>
    <main class="docs-main markdown" id="protocol">
{doc.body}
    </main>
  </div>
</body>
</html>
"""


class ProtocolDoc:
    """docs/protocol.md rendered once per version of the file (its mtime and size)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._key: tuple[int, int] | None = None
        self._page = ""

    async def page(self) -> str | None:
        """The page, or None when the file is missing (an install without it)."""
        path = trio.Path(self._path)
        try:
            st = await path.stat()
            key = (st.st_mtime_ns, st.st_size)
            if key != self._key:
                self._page = protocol_page(render_markdown(await path.read_text("utf-8")))
                self._key = key
        except FileNotFoundError:
            return None
        return self._page


def register(api: Api, *, protocol: Path | None = None) -> None:
    app = api.app
    doc = ProtocolDoc(protocol or protocol_path())

    @app.route("/api/docs")
    async def docs_index() -> Response:
        return await send_from_directory(WEB_DIR, "docs.html")

    @app.route("/api/docs/protocol")
    async def docs_protocol() -> Response:
        page = await doc.page()
        if page is None:
            return json_response(error_body(
                "not_found", "docs/protocol.md is not part of this installation"), 404)
        return Response(page, content_type="text/html; charset=utf-8")

    @app.route("/docs")
    async def docs_short() -> Response:
        return redirect("/api/docs", 302)  # type: ignore[return-value]

    @app.route("/favicon.ico")
    async def favicon() -> Response:
        # Browsers ask for /favicon.ico on pages without a <link rel=icon> (the JSON
        # endpoints, /metrics): the client's SVG icon, so they log no 404.
        return await send_from_directory(WEB_DIR, "favicon.svg", mimetype="image/svg+xml",
                                         cache_timeout=86400)
