"""The served docs in Chromium: /docs leads to /api/docs, which shows every path and method
of the server's own OpenAPI document (and every schema), under the strict test CSP; its
link leads to the protocol reference, which lists every WebSocket frame type."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from chatsrv.protocol.frames import INBOUND, OUTBOUND
from chatsrv.transport.http.edge import CSP as SERVED_CSP
from tests.browser.ui import PHONE, Person, expect


def _openapi(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/openapi.json", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _reader(people: Any, *, phone: bool = False) -> Person:
    reader: Person = people("reader", phone=phone)
    # the docs pages under the tests' own strict policy too (a violation fails the test)
    reader.context.route(f"{people.server.url}/api/docs**", reader._with_csp)
    return reader


def test_api_docs_show_every_path_and_link_the_protocol(people, chat_server) -> None:  # type: ignore[no-untyped-def]
    doc = _openapi(chat_server.url)
    reader = _reader(people)
    p = reader.page

    first = p.goto("/docs")
    assert first is not None and p.url == f"{chat_server.url}/api/docs"
    served = first.request.redirected_from
    assert served is not None and served.url.endswith("/docs")
    assert first.headers["content-security-policy"] == SERVED_CSP
    expect(p.locator("body")).to_have_attribute("data-loaded", "true")
    reader.shot("api-docs")

    operations = [(path, method) for path, item in doc["paths"].items() for method in item]
    assert len(operations) > 20
    expect(p.locator(".op")).to_have_count(len(operations))
    for path, method in operations:
        section = p.locator(f'.op[data-path="{path}"][data-method="{method}"]')
        expect(section).to_be_visible()
        expect(section.locator("h3 .path")).to_have_text(path)
        expect(section.locator("h3 .method")).to_have_text(method.upper())
        summary = doc["paths"][path][method].get("summary")
        if summary:
            expect(section.locator(".summary")).to_have_text(summary)
        for param in doc["paths"][path][method].get("parameters", []):
            expect(section.locator(f'[data-param="{param["name"]}"]')).to_have_count(1)
        toc = p.locator(f'#toc a[href="#{section.get_attribute("id")}"]')
        expect(toc).to_have_count(1)
    for name in doc["components"]["schemas"]:
        expect(p.locator(f'.schema-def[data-schema="{name}"]')).to_have_count(1)

    # $ref resolved: the create body's fields are listed, and its reply's type links to
    # the ConversationOut schema, whose fields are the server's
    create = p.locator('.op[data-path="/api/conversations"][data-method="post"]')
    expect(create.locator('[data-field="member_ids"]').first).to_contain_text("array of string")
    create.locator('a.ref', has_text="ConversationOut").first.click()
    schema = p.locator('.schema-def[data-schema="ConversationOut"]')
    expect(schema).to_be_in_viewport()
    props = doc["components"]["schemas"]["ConversationOut"]["properties"]
    expect(schema.locator("tr[data-field]")).to_have_count(len(props))
    expect(schema.locator('tr[data-field="unread"]')).to_contain_text("integer")

    # the filter narrows the list
    p.locator("#filter").fill("ice-servers")
    expect(p.locator(".op:visible")).to_have_count(1)
    expect(p.locator("#toc .toc-group:visible > a")).to_have_text(["ice-servers", "schemas"])
    reader.shot("api-docs-filtered")
    p.locator("#filter").fill("")

    # the protocol reference, from the page's link
    p.locator(".intro a", has_text="protocol reference").click()
    expect(p).to_have_url(f"{chat_server.url}/api/docs/protocol")
    expect(p.locator("h1")).to_have_text("chatsrv protocol")
    text = p.locator("#protocol").inner_text()
    missing = [t for t in (*INBOUND, *OUTBOUND) if t not in text]
    assert not missing, f"frame types not in the rendered protocol reference: {missing}"
    expect(p.locator("#protocol table").first).to_be_visible()
    expect(p.locator("script")).to_have_count(0)
    p.locator('.docs-toc a[href="#close-codes"]').click()
    expect(p.locator("h2#close-codes")).to_be_in_viewport()
    reader.shot("protocol-reference")
    p.locator(".docs-links a", has_text="REST reference").click()
    expect(p.locator("body")).to_have_attribute("data-loaded", "true")


def test_api_docs_on_a_phone(people, chat_server) -> None:  # type: ignore[no-untyped-def]
    reader = _reader(people, phone=True)
    p = reader.page
    p.goto("/api/docs")
    expect(p.locator("body")).to_have_attribute("data-loaded", "true")
    # the page does not scroll sideways: long paths and tables wrap or scroll in place
    width = p.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    reader.shot("api-docs-phone")
