"""Message search in the web client (issue 14.6, DESIGN §7 "Search"): Bob finds an old
message of Alice's (older than the history page the client loads first) and jumps to it
in its conversation, highlighted, with the messages around it loaded. The snippet's
<mark> is drawn as an element and everything else as text: markup in a message shows as
the characters it is."""

from __future__ import annotations

import re

from tests.browser.ui import expect

OLDER = 70  # more than the client's first history page (50)


def test_search_jumps_to_an_old_message(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    cid = alice.direct_with(bob)
    send = lambda text: alice.rest("POST", f"/api/conversations/{cid}/messages",  # noqa: E731
                                   {"content": text, "message_type": "text"})
    send("before the pelican")
    send("the <b>pelican</b> & its friends")
    send("after the pelican")
    for i in range(OLDER):
        send(f"filler {i}")

    bob.page.reload()
    bob.expect_online()
    bob.open_conv(alice.display_name)
    expect(bob.message(f"filler {OLDER - 1}")).to_be_visible()
    target = "the <b>pelican</b> & its friends"
    expect(bob.message(target)).to_have_count(0)  # not in the first page

    bob.page.locator("#msg-search-input").fill("pelican")
    hits = bob.page.locator("#msg-search-results .search-hit")
    expect(hits).to_have_count(3)
    hit = hits.filter(has_text="its friends")
    expect(hit.locator("mark")).to_have_text("pelican")
    expect(hit.locator(".snippet")).to_contain_text("the <b>pelican</b> & its friends")
    expect(hit.locator(".snippet b")).to_have_count(0)  # no markup from the message
    people.shoot("search-results")

    hit.click()
    found = bob.message(target)
    expect(found).to_be_visible()
    expect(found).to_have_class(re.compile(r"\bflash\b"))
    expect(found).to_be_in_viewport()
    # in context: its neighbours are loaded too, and the timeline reaches the newest
    expect(bob.message("before the pelican")).to_have_count(1)
    expect(bob.message("after the pelican")).to_have_count(1)
    expect(bob.message(f"filler {OLDER - 1}")).to_have_count(1)
    people.shoot("jumped-to-result")


def test_snippet_is_never_parsed_as_html(people) -> None:  # type: ignore[no-untyped-def]
    """What the server sends is escaped; even if it were not, only <mark> becomes markup."""
    page = people("tester").page
    page.goto("/")
    out = page.evaluate("""async () => {
        const { snippetNodes } = await import('/web/search.js');
        return [
            'a &lt;b&gt;x&lt;/b&gt; &amp; <mark>hit</mark> &quot;q&quot; &#39;s&#x27; &#128512;',
            '<img src=x onerror="window.owned=1"><mark><script>window.owned=1</script></mark>',
            '<mark>open', 'close</mark> &bogus; &#0; &#x110000;',
        ].map((s) => {
            const box = document.createElement('div');
            box.append(...snippetNodes(s));
            document.body.append(box);
            return { html: box.innerHTML, text: box.textContent, elements: box.querySelectorAll('*').length,
                     marks: [...box.querySelectorAll('mark')].map((m) => m.textContent) };
        }).concat([{ owned: window.owned ?? null }]);
    }""")
    escaped, hostile, unopened, unclosed, owned = out
    assert escaped["text"] == "a <b>x</b> & hit \"q\" 's' \U0001F600"
    assert escaped["marks"] == ["hit"] and escaped["elements"] == 1
    assert hostile["marks"] == ["<script>window.owned=1</script>"]
    assert hostile["elements"] == 1 and "<img" in hostile["text"]
    assert unopened["marks"] == ["open"]
    assert unclosed["marks"] == [] and unclosed["text"] == "close &bogus; &#0; &#x110000;"
    assert owned == {"owned": None}
