"""docs/protocol.md to HTML (transport/http/docs.py): safe, with anchors; the real file
renders with every section in its contents."""

from __future__ import annotations

import re

from chatsrv.transport.http.docs import protocol_page, protocol_path, render_markdown, slug


def test_raw_html_in_the_markdown_is_shown_not_run() -> None:
    doc = render_markdown(
        "# T\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
        "a <b onclick=x>tag</b> inline\n\n[click](javascript:alert(1)) "
        "[data](data:text/html;base64,PHNjcmlwdD4=) [ok](https://example.com/a?b=1&c=2)\n")
    html = doc.body
    assert "<script" not in html and "<img" not in html and "<b " not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript' not in html and 'href="data:' not in html
    assert '<a href="https://example.com/a?b=1&amp;c=2">ok</a>' in html


def test_tables_code_and_escaped_pipes() -> None:
    html = render_markdown('| a | b |\n|---|---|\n| `x` | `"r"\\|"d"` **bold** |\n').body
    assert "<table>" in html and "<code>x</code>" in html
    assert "<code>&quot;r&quot;|&quot;d&quot;</code>" in html and "<strong>bold</strong>" in html


def test_headings_get_unique_anchors_and_a_contents() -> None:
    doc = render_markdown("# Title\n\n## Calls (WebRTC)\n\n### Server → client\n\n## Calls (WebRTC)\n")
    assert doc.title == "Title"
    assert doc.toc == [(2, "calls-webrtc", "Calls (WebRTC)"), (3, "server-client", "Server → client"),
                       (2, "calls-webrtc-2", "Calls (WebRTC)")]
    assert '<h2 id="calls-webrtc-2">' in doc.body
    assert slug("!!!") == "section"


def test_the_title_is_escaped_in_the_page() -> None:
    page = protocol_page(render_markdown("# a <b> & c\n\n## x <y>\n"))
    assert "<title>a &lt;b&gt; &amp; c · chatsrv</title>" in page
    assert '<a href="#x-y">x &lt;y&gt;</a>' in page


def test_the_real_protocol_reference_renders_every_section() -> None:
    text = protocol_path().read_text()
    doc = render_markdown(text)
    sections = re.findall(r"^##+ (.+)$", text, re.M)
    assert [t for _, _, t in doc.toc] == sections
    assert doc.body.count("<table>") == len(re.findall(r"^\|[-| ]+\|$", text, re.M))
