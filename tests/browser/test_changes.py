"""Message changes in the web client (issue 14.6, DESIGN §7): Alice and Bob edit (↑ in an
empty composer), react, reply (quote, jump to the original), mention (autocomplete and
highlight) and delete, each seen live on the other page; then Bob's socket drops, Alice
edits, deletes and reacts while he is away, and his page catches up on reconnect from
`sync {changes_since}` without reloading history."""

from __future__ import annotations

import re

from tests.browser.ui import expect

RECONNECT_TIMEOUT = 30_000


def test_edit_react_reply_mention_delete_live_and_after_reconnect(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    switch = bob.socket_switch()
    alice.register()
    bob.register()
    alice.chat_with(bob)
    alice.send("Helo Bob")
    bob.open_conv(alice.display_name)
    expect(bob.message("Helo Bob")).to_be_visible()

    # edit: ↑ in the empty composer takes Alice's last message
    box = alice.page.locator("#composer-input")
    box.press("ArrowUp")
    expect(box).to_have_value("Helo Bob")
    expect(alice.page.locator("#composer-bar")).to_have_attribute("data-mode", "edit")
    box.fill("Hello Bob")
    box.press("Enter")
    expect(bob.message("Hello Bob").locator(".edited")).to_be_visible()
    expect(bob.message("Helo Bob")).to_have_count(0)
    expect(alice.message("Hello Bob").locator(".edited")).to_be_visible()

    # reactions: Bob picks one, Alice adds hers by its chip
    bob.react("Hello Bob", "👍")
    expect(alice.reaction("Hello Bob", "👍").locator(".reaction-count")).to_have_text("1")
    alice.reaction("Hello Bob", "👍").click()
    expect(bob.reaction("Hello Bob", "👍").locator(".reaction-count")).to_have_text("2")
    expect(alice.reaction("Hello Bob", "👍")).to_have_class("reaction own")
    expect(bob.reaction("Hello Bob", "👍")).to_have_class("reaction own")
    people.shoot("edited-and-reacted")

    # reply with a quote; the quote jumps to (and highlights) the original
    bob.message_menu("Hello Bob", "reply")
    expect(bob.page.locator("#composer-bar")).to_have_attribute("data-mode", "reply")
    expect(bob.page.locator("#composer-bar-excerpt")).to_have_text("Hello Bob")
    bob.send("Hi! What's up?")
    quote = alice.message("Hi! What's up?").locator(".reply-quote")
    expect(quote.locator(".reply-text")).to_have_text("Hello Bob")
    quote.click()
    expect(alice.message("Hello Bob")).to_have_class(re.compile(r"\bflash\b"))

    # mention: "@b" offers Bob, Enter completes it; Bob sees himself highlighted
    box.press_sequentially("Ask @b")
    option = alice.page.locator("#mention-list .mention-option[data-username=bob]")
    expect(option).to_be_visible()
    box.press("Enter")
    expect(box).to_have_value("Ask @bob ")
    box.press_sequentially("about it")
    box.press("Enter")
    expect(bob.message("Ask @bob about it").locator(".mention.to-me")).to_have_text("@bob")
    people.shoot("reply-and-mention")

    # delete, after a confirmation
    alice.message_menu("Ask @bob about it", "delete")
    alice.page.locator("#confirm-yes").click()
    gone = bob.page.locator("#messages .msg.deleted")
    expect(gone).to_have_count(1)
    expect(gone.locator(".body")).to_have_text("This message was deleted")
    alice.send("Second thought")
    expect(bob.message("Second thought")).to_be_visible()

    # Bob's link drops; what Alice changes meanwhile reaches him by changes_since
    switch.cut()
    expect(bob.page.locator("#conn-status")).to_have_class("conn offline")
    alice.message_menu("Hello Bob", "edit")
    box.fill("Hello Bob (edited while you were away)")
    box.press("Enter")
    expect(alice.message("Hello Bob (edited while you were away)")).to_be_visible()
    alice.reaction("Hello Bob (edited while you were away)", "👍").click()  # hers off again
    expect(alice.reaction("Hello Bob (edited while you were away)", "👍").locator(".reaction-count")).to_have_text("1")
    alice.message_menu("Second thought", "delete")
    alice.page.locator("#confirm-yes").click()
    expect(alice.page.locator("#messages .msg.deleted")).to_have_count(2)
    switch.restore()
    bob.expect_online(timeout=RECONNECT_TIMEOUT)
    expect(bob.message("Hello Bob (edited while you were away)")).to_be_visible()
    expect(bob.reaction("Hello Bob (edited while you were away)", "👍").locator(".reaction-count")).to_have_text("1")
    expect(bob.page.locator("#messages .msg.deleted")).to_have_count(2)
    # the changes since his last cursor (live frames carry none: since his first `ready`),
    # in pages of two (SYNC_PAGE_SIZE in conftest.py): asked for page after page
    asked = [f for f in bob.frames if f.startswith('-> {"type":"sync"') and '"changes_since"' in f]
    assert len(asked) >= 2, asked
    people.shoot("caught-up")
