"""Two people meet in the web client: sign-up, search, 1:1 chat both ways, ticks, typing,
unread badges, presence and last seen, a message sent while the other side was away.

Alice uses a desktop-sized window, Bob a phone-sized one (the narrow layout)."""

from __future__ import annotations

from tests.browser.ui import expect


def test_two_people_chat(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob", phone=True)

    # sign-up: the form refuses what the server would refuse, before asking it
    alice.open()
    alice.register_form("al")
    expect(alice.page.locator("#auth-error")).to_contain_text("Username: 3")
    expect(alice.page.locator("#app-view")).to_be_hidden()
    alice.shot("register-refuses-short-username")
    alice.register_form(alice.username)
    expect(alice.page.locator("#app-view")).to_be_visible()
    alice.expect_online()
    bob.register()
    people.shoot("signed-up")

    # Alice finds Bob by search and writes; Bob is on his conversation list
    alice.chat_with(bob)
    expect(alice.page.locator("#conv-sub")).to_have_text("online")
    alice.send("Hello Bob")
    expect(bob.conv_row(alice.display_name).locator(".badge")).to_have_text("1")
    # Bob's client confirmed delivery without opening the chat: double tick, not read
    expect(alice.tick("Hello Bob")).to_have_attribute("data-state", "delivered")
    alice.send("Are you there?")
    expect(bob.conv_row(alice.display_name).locator(".badge")).to_have_text("2")
    expect(bob.conv_row(alice.display_name).locator(".row-sub")).to_have_text("Are you there?")
    people.shoot("unread-badge-and-delivered-ticks")

    # Bob opens the chat: both read, his badge goes
    bob.open_conv(alice.display_name)
    expect(bob.message("Hello Bob")).to_be_visible()
    expect(alice.tick("Hello Bob")).to_have_attribute("data-state", "read")
    expect(alice.tick("Are you there?")).to_have_attribute("data-state", "read")
    people.shoot("read-ticks")

    # typing, both ways round
    bob.page.locator("#composer-input").press_sequentially("I am typ")
    expect(alice.page.locator("#typing")).to_have_text(f"{bob.display_name} is typing…")
    expect(alice.conv_row(bob.display_name).locator(".row-sub")).to_have_text("typing…")
    people.shoot("typing")
    bob.page.locator("#composer-input").fill("")
    bob.page.locator("#composer-input").press_sequentially("Hi Alice!")
    bob.page.locator("#composer-input").press("Enter")
    expect(alice.message("Hi Alice!")).to_be_visible()
    expect(alice.page.locator("#typing")).to_have_text("")
    expect(bob.tick("Hi Alice!")).to_have_attribute("data-state", "read")
    # a reply faster than the reader's read receipt (batched for 250 ms) still marks read:
    # the server moves a sender's watermark to their message without telling the others
    bob.send("Quick question")
    expect(alice.message("Quick question")).to_be_visible()
    alice.send("Quick answer")
    expect(bob.tick("Quick question")).to_have_attribute("data-state", "read")

    # Bob's phone goes back to the list; his badge stays away while Alice writes and he reads
    bob.back()
    alice.send("See you later")
    expect(bob.conv_row(alice.display_name).locator(".badge")).to_have_text("1")
    expect(alice.tick("See you later")).to_have_attribute("data-state", "delivered")
    bob.open_conv(alice.display_name)
    expect(bob.conv_row(alice.display_name).locator(".badge")).to_have_count(0)
    expect(alice.tick("See you later")).to_have_attribute("data-state", "read")

    # presence: Bob closes his only tab; Alice sees him go offline with a last-seen time
    bob.page.close()
    expect(alice.page.locator("#conv-sub")).to_have_text("last seen just now")
    expect(alice.conv_row(bob.display_name).locator(".dot")).to_have_class("dot offline")
    alice.send("Written while you were away")
    expect(alice.tick("Written while you were away")).to_have_attribute("data-state", "sent")
    alice.shot("bob-offline-last-seen")

    # Bob comes back: the message is there once, and only then read
    bob.reopen()
    expect(alice.page.locator("#conv-sub")).to_have_text("online")
    expect(bob.conv_row(alice.display_name).locator(".badge")).to_have_text("1")
    bob.open_conv(alice.display_name)
    expect(bob.message("Written while you were away")).to_have_count(1)
    expect(alice.tick("Written while you were away")).to_have_attribute("data-state", "read")
    expect(bob.page.locator("#messages .msg")).to_have_count(7)
    people.shoot("back-online")
