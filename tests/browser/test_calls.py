"""A real WebRTC video call between two web clients (Chromium's fake camera and microphone),
signalled through chatsrv: remote video plays on both sides, the call panel leaves the
composer free, hang-up, and the call in each chat's timeline and in the call history; then
a declined and a cancelled (missed) call."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.ui import Person, expect

PLAYING = """([since]) => {
  const v = document.getElementById('remote-video');
  return v.srcObject !== null && v.videoWidth > 0 && !v.paused && v.currentTime > since;
}"""


def exact_duration(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}, \d+:\d\d$")


def remote_video_plays(person: Person) -> None:
    """The remote <video> has frames (videoWidth > 0) and its clock advances."""
    person.page.wait_for_function(PLAYING, arg=[0])
    t = person.page.locator("#remote-video").evaluate("v => v.currentTime")
    person.page.wait_for_function(PLAYING, arg=[t + 0.5])
    assert person.page.locator("#remote-video").evaluate("v => v.videoWidth") > 0


def box(person: Person, selector: str) -> dict[str, Any]:
    b = person.page.locator(selector).bounding_box()
    assert b is not None, f"{selector} is not laid out"
    return dict(b)


def panel_leaves_composer_free(person: Person) -> None:
    panel, composer = box(person, "#call-panel"), box(person, "#composer")
    assert panel["y"] + panel["height"] <= composer["y"], (panel, composer)
    viewport = person.page.viewport_size
    assert viewport is not None
    assert composer["y"] + composer["height"] <= viewport["height"], composer
    expect(person.page.locator("#composer-input")).to_be_editable()


def test_video_call_then_declined_and_missed(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob", phone=True)  # Bob: the narrow layout
    alice.register()
    bob.register()
    alice.chat_with(bob)
    alice.send("Can I call you?")
    bob.open_conv(alice.display_name)
    expect(alice.tick("Can I call you?")).to_have_attribute("data-state", "read")

    # Alice calls; Bob's client rings
    alice.page.locator("#video-call-btn").click()
    expect(alice.page.locator("#call-status")).to_have_text(f"Ringing {bob.display_name}…")
    expect(bob.page.locator("#call-status")).to_have_text(
        f"{alice.display_name} is calling you (video)…")
    expect(bob.page.locator("#call-accept")).to_be_visible()
    people.shoot("ringing")

    # Bob answers: video both ways, through an RTCPeerConnection set up over chatsrv
    bob.page.locator("#call-accept").click()
    for person, other in ((alice, bob), (bob, alice)):
        expect(person.page.locator("#call-status")).to_have_text(
            f"In call with {other.display_name}")
        remote_video_plays(person)
        panel_leaves_composer_free(person)
    # the chat still works during the call
    bob.send("I can see you")
    expect(alice.message("I can see you")).to_be_visible()
    expect(bob.tick("I can see you")).to_have_attribute("data-state", "read")
    people.shoot("in-call")

    alice.page.locator("#call-hangup").click()
    for person, direction in ((alice, "Outgoing"), (bob, "Incoming")):
        expect(person.page.locator("#call-panel")).to_be_hidden()
        entry = person.call_entries().filter(has_text=f"{direction} video call")
        expect(entry).to_have_attribute("data-status", "ended")
        expect(entry.locator(".call-text")).to_have_text(
            exact_duration(f"{direction} video call"))
    # in the timeline by its start: after the message before it, before the one sent during it
    alice.send("Thanks!")
    expect(alice.page.locator("#messages > .msg, #messages > .call-entry")).to_have_text([
        re.compile("Can I call you"), re.compile("Outgoing video call"),
        re.compile("I can see you"), re.compile("Thanks!")])
    people.shoot("after-hang-up")

    # declined: Alice calls (audio), Bob rejects
    alice.page.locator("#audio-call-btn").click()
    expect(bob.page.locator("#call-reject")).to_be_visible()
    bob.page.locator("#call-reject").click()
    expect(alice.page.locator("#call-panel")).to_be_hidden()
    expect(alice.call_entries().filter(has_text="Audio call declined")) \
        .to_have_attribute("data-status", "rejected")
    expect(bob.call_entries().filter(has_text="Declined audio call")) \
        .to_have_attribute("data-status", "rejected")

    # missed: Alice gives up before Bob answers
    alice.page.locator("#audio-call-btn").click()
    expect(bob.page.locator("#call-accept")).to_be_visible()
    expect(alice.page.locator("#call-status")).to_have_text(f"Ringing {bob.display_name}…")
    alice.page.locator("#call-hangup").click()
    expect(bob.page.locator("#call-panel")).to_be_hidden()
    expect(bob.call_entries().filter(has_text="Missed audio call")) \
        .to_have_attribute("data-status", "cancelled")
    expect(alice.call_entries().filter(has_text="Cancelled audio call")) \
        .to_have_attribute("data-status", "cancelled")
    people.shoot("declined-and-missed")

    # the call history view: all three, newest first, for each side
    bob.back()  # on a phone the list and the chat are two screens
    for person, texts in (
        (alice, ["Cancelled audio call", "Audio call declined", "Outgoing video call"]),
        (bob, ["Missed audio call", "Declined audio call", "Incoming video call"]),
    ):
        person.page.locator("#tab-calls").click()
        rows = person.page.locator("#call-list .call-row")
        expect(rows).to_have_count(3)
        for i, text in enumerate(texts):
            expect(rows.nth(i)).to_contain_text(text)
    people.shoot("call-history")
    # a call in the history opens the chat with that person
    alice.page.locator("#call-list .call-row").first.click()
    alice.expect_title(bob.display_name)
    expect(alice.page.locator("#call-list")).to_be_visible()
    bob.page.locator("#call-list .call-row").first.click()
    bob.expect_title(alice.display_name)
    expect(bob.page.locator("#composer-input")).to_be_visible()
