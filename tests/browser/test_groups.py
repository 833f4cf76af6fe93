"""Groups in the web client: create, add a member by search, remove a member, leave; the
admin badge and the admin-only controls; every change reaches the others live. Bob uses
the phone-sized layout (the details panel is a screen of its own there)."""

from __future__ import annotations

from tests.browser.ui import exact, expect


def test_group_create_add_remove_leave(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob, carol = people("alice"), people("bob", phone=True), people("carol")
    for person in (alice, bob, carol):
        person.register()

    # Alice creates "Trip" with Bob
    a = alice.page
    a.locator("#new-group-btn").click()
    a.locator("#group-name").fill("Trip")
    a.locator("#group-search").fill("bob")
    a.locator("#group-results .row").filter(has_text="@bob").click()
    expect(a.locator("#group-selected .chip")).to_have_text(["Bob"])
    alice.shot("new-group-dialog")
    a.locator("#group-form button[type=submit]").click()
    alice.expect_title("Trip")
    expect(a.locator("#conv-sub")).to_have_text("2 members: You, Bob")
    # no group calls: the buttons are hidden, the details panel says why
    expect(a.locator("#call-buttons")).to_be_hidden()
    alice.send("Welcome to the trip")
    expect(bob.conv_row("Trip").locator(".badge")).to_have_text("1")

    # the details panel: Alice is the admin, and adds Carol by search
    a.locator("#info-btn").click()
    details = a.locator("#details")
    expect(details).to_be_visible()
    expect(details.locator(".note")).to_contain_text("Group calls are not supported")
    expect(details.locator(".member")).to_have_count(2)
    me = details.locator(".member").filter(has_text="(you)")
    expect(me.locator(".role-badge")).to_have_text("admin")
    a.locator("#member-search").fill("car")
    a.locator("#member-results .row").filter(has_text="@carol").click()
    expect(details.locator(".member")).to_have_count(3)
    expect(a.locator("#members-count")).to_have_text("3 members")
    expect(carol.conv_row("Trip")).to_be_visible()  # she was told live
    expect(a.locator("#conv-sub")).to_contain_text("Carol")
    # admins may rename (PATCH /api/conversations/{id}, test_settings.py renames live)
    expect(a.locator("#rename-form")).to_be_visible()
    people.shoot("carol-added")
    # the only admin is warned before leaving (the server would leave the group adminless)
    a.locator("#leave-btn").click()
    expect(a.locator("#leave-text")).to_contain_text("You are the only admin")
    a.locator("#leave-cancel").click()
    expect(a.locator("#leave-confirm")).to_be_hidden()

    # Bob is a plain member: no add, no remove; he sees Alice's admin badge
    bob.open_conv("Trip")
    expect(bob.message("Welcome to the trip")).to_be_visible()
    bob.page.locator("#info-btn").click()
    bob_details = bob.page.locator("#details")
    expect(bob_details.locator(".member")).to_have_count(3)
    expect(bob_details.locator(".member").filter(has_text="Alice").locator(".role-badge")) \
        .to_have_text("admin")
    expect(bob.page.locator("#add-members")).to_be_hidden()
    expect(bob_details.get_by_role("button", name=exact("Remove"))).to_have_count(0)
    bob.shot("member-view-of-details")

    # Alice removes Carol: Carol loses the group at once, Bob's panel follows
    details.locator(".member").filter(has_text="Carol") \
        .get_by_role("button", name=exact("Remove")).click()
    expect(details.locator(".member")).to_have_count(2)
    expect(carol.conv_row("Trip")).to_have_count(0)
    expect(carol.page.locator("#toasts")).to_contain_text('You were removed from "Trip"')
    expect(bob_details.locator(".member")).to_have_count(2)
    people.shoot("carol-removed")

    # Bob leaves (with a confirmation step); Alice sees the group shrink to herself
    bob.page.locator("#leave-btn").click()
    expect(bob.page.locator("#leave-text")).to_have_text(
        "Leave this group? You will stop getting its messages.")
    bob.shot("leave-confirm")
    bob.page.locator("#leave-yes").click()
    expect(bob.conv_row("Trip")).to_have_count(0)
    expect(bob.page.locator("#conv-view")).to_be_hidden()
    expect(bob.page.locator("#details")).to_be_hidden()
    expect(bob.page.locator("#conv-list")).to_be_visible()  # his phone is back on the list
    expect(details.locator(".member")).to_have_count(1)
    expect(a.locator("#conv-sub")).to_have_text("1 member: You")
    people.shoot("bob-left")

    # the others' history of the group keeps what was said; Carol cannot reach it any more
    carol.page.reload()
    carol.expect_online()
    expect(carol.conv_row("Trip")).to_have_count(0)
