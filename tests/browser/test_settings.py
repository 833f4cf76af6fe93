"""Settings, blocking and privacy in the web client (issue 15.6, DESIGN §7 "Blocking and
privacy"): Alice blocks Bob from their chat's menu, Bob's next message is refused and never
reaches her, she unblocks him from the settings panel and his retry arrives; Bob hides his
online status and Alice sees him offline, then online again; a mute shows and survives a
reload; a group's admin renames it and the other member sees the new name live.
"""

from __future__ import annotations

from tests.browser.ui import expect


def test_block_and_unblock(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    alice.chat_with(bob)
    alice.send("Hi Bob")
    bob.open_conv(alice.display_name)
    expect(bob.message("Hi Bob")).to_be_visible()

    a = alice.page
    a.locator("#conv-menu-btn").click()
    a.locator('.popover [data-action="block"]').click()
    expect(a.locator("#confirm-dialog")).to_contain_text("Block Bob?")
    a.locator("#confirm-yes").click()
    expect(a.locator("#blocked-note")).to_contain_text("You blocked Bob")
    expect(a.locator("#composer")).to_be_hidden()

    # refused by the server (403 blocked) before any delivery: it never reaches Alice
    bob.send("Can you hear me?")
    expect(bob.tick("Can you hear me?")).to_have_attribute("data-state", "failed")
    expect(alice.message("Can you hear me?")).to_have_count(0)
    people.shoot("blocked")

    a.locator("#settings-btn").click()
    row = a.locator("#blocked-list .member").filter(has_text="Bob")
    expect(row).to_be_visible()
    row.locator('[data-action="unblock"]').click()
    expect(a.locator("#blocked-list")).to_contain_text("You have not blocked anyone")
    a.locator("#settings-close").click()
    expect(a.locator("#composer")).to_be_visible()

    bob.tick("Can you hear me?").click()  # Retry
    expect(alice.message("Can you hear me?")).to_be_visible()


def test_presence_switch_hides_online_status(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    alice.chat_with(bob)
    sub = alice.page.locator("#conv-sub")
    expect(sub).to_have_text("online")

    bob.page.locator("#settings-btn").click()
    switch = bob.page.locator("#presence-visible")
    expect(switch).to_be_checked()
    switch.uncheck()
    expect(sub).to_have_text("offline")  # and no last-seen time either
    expect(alice.conv_row(bob.display_name).locator(".dot")).to_have_class("dot offline")
    people.shoot("presence-hidden")
    bob.page.reload()  # kept by the server
    bob.expect_online()
    bob.page.locator("#settings-btn").click()
    expect(switch).not_to_be_checked()
    expect(sub).to_have_text("offline")
    switch.check()
    expect(sub).to_have_text("online")


def group_trip(alice, bob):  # type: ignore[no-untyped-def]
    """A group "Trip" of Alice (admin) and Bob, open on Alice's page and listed on Bob's."""
    group = alice.rest("POST", "/api/conversations",
                       {"type": "group", "name": "Trip", "member_ids": [bob.user_id()]})
    alice.rest("POST", f"/api/conversations/{group['id']}/messages", {"content": "Welcome"})
    expect(bob.conv_row("Trip")).to_be_visible()
    alice.page.reload()
    alice.expect_online()
    alice.open_conv("Trip")


def test_rename_reaches_the_other_member_live(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    group_trip(alice, bob)
    a = alice.page
    a.locator("#info-btn").click()
    a.locator("#rename-input").fill("Road trip")
    a.locator("#rename-input").press("Enter")
    expect(bob.conv_row("Road trip")).to_be_visible()  # conversation_updated, live
    alice.expect_title("Road trip")


def test_mute_shows_and_is_kept(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    group_trip(alice, bob)
    a = alice.page
    a.locator("#conv-menu-btn").click()
    a.locator('.popover [data-action="mute-3600000"]').click()
    expect(a.locator("#conv-muted")).to_be_visible()
    a.reload()  # the server keeps it (GET /api/push/mutes)
    alice.expect_online()
    alice.open_conv("Trip")
    expect(a.locator("#conv-muted")).to_be_visible()
    a.locator("#conv-menu-btn").click()
    a.locator('.popover [data-action="unmute"]').click()
    expect(a.locator("#conv-muted")).to_be_hidden()


def test_blocked_users_group_messages_are_collapsed(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    group_trip(alice, bob)
    alice.rest("PUT", f"/api/users/{bob.user_id()}/block")
    alice.page.reload()  # the block was made elsewhere: ready.blocked / GET /api/blocks
    alice.expect_online()
    alice.open_conv("Trip")
    bob.open_conv("Trip")
    bob.send("Still here in the group")
    hidden = alice.page.locator("#messages .msg.collapsed")
    expect(hidden).to_have_count(1)
    expect(hidden).to_contain_text("Message from someone you blocked")
    expect(alice.message("Still here in the group")).to_have_count(0)
    hidden.get_by_role("button", name="Show").click()
    expect(alice.message("Still here in the group")).to_be_visible()
