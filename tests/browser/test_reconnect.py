"""The server restarts under two open web clients: both reconnect on their own, and a
message written while it was down is sent after the reconnect and arrives once."""

from __future__ import annotations

from tests.browser.ui import expect

RECONNECT_TIMEOUT = 30_000  # the client backs off 1 s, 2 s, 4 s … (with jitter) while down


def test_reconnect_after_server_restart(people, chat_server) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    alice.chat_with(bob)
    alice.send("Before the restart")
    bob.open_conv(alice.display_name)
    expect(alice.tick("Before the restart")).to_have_attribute("data-state", "read")

    chat_server.stop()
    for person in (alice, bob):
        expect(person.page.locator("#conn-status")).to_have_class("conn offline")
    # written while the server is down: kept, marked pending (clock icon, no emoji)
    alice.send("Sent while the server was down")
    expect(alice.tick("Sent while the server was down")).to_have_attribute("data-state", "pending")
    expect(alice.tick("Sent while the server was down").locator("svg.icon-clock")).to_be_visible()
    people.shoot("server-down")

    chat_server.start()  # same port, same data
    alice.expect_online(timeout=RECONNECT_TIMEOUT)
    bob.expect_online(timeout=RECONNECT_TIMEOUT)
    expect(bob.message("Sent while the server was down")).to_be_visible()
    expect(alice.tick("Sent while the server was down")).to_have_attribute("data-state", "read")

    # A later message arrives after any duplicate of the first would have (seq order):
    # then there is exactly one of each, on both sides, and nothing else.
    alice.send("After the restart")
    expect(bob.message("After the restart")).to_be_visible()
    for person in (alice, bob):
        expect(person.message("Sent while the server was down")).to_have_count(1)
        expect(person.page.locator("#messages .msg")).to_have_count(3)
    # and the server's history agrees: a fresh load shows the same three
    bob.page.reload()
    bob.expect_online()
    bob.open_conv(alice.display_name)
    expect(bob.page.locator("#messages .msg")).to_have_count(3)
    expect(bob.message("Sent while the server was down")).to_have_count(1)
    people.shoot("reconnected")
