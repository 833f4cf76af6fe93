"""The notifications opt-in of the web client (issue 15.6, DESIGN §7 "Offline push").

What runs for real: the page registers the service worker /sw.js, fetches the server's
VAPID key and asks the browser's PushManager to subscribe with it. Chromium here has no
push service it can reach: in Playwright's (off-the-record) contexts `subscribe` is refused
("Registration failed - permission denied"), and in a persistent profile it waits forever
for Google's GCM servers (no network). The first test checks that real path up to that
refusal and that the page says so.

The second replaces only that browser boundary, `PushManager.subscribe`, with one that
hands back a subscription of the local push service of tests/push_service.py (its
endpoint and keys, as a browser's push service would). From there everything is real: the
page posts it, the server stores it, and when Bob has no page open a message from Alice is
pushed to that endpoint, VAPID-signed and RFC 8291-encrypted, and decrypted by the fixture;
the page the notification opens shows that conversation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.browser.ui import expect

push_service_module = pytest.importorskip("tests.push_service")


class PushServiceThread:
    """tests/push_service.PushService (a Trio server) on its own thread and Trio loop."""

    def __init__(self) -> None:
        self.service: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.service = await nursery.start(push_service_module.PushService().run)
            self._ready.set()
            await self._stop.wait()
            self.service.release.set()
            nursery.cancel_scope.cancel()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "push service did not start"

    def next(self, wait: float = 15.0) -> Any:
        return trio.from_thread.run(self.service.next, wait, trio_token=self._token)

    def stop(self) -> None:
        if self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


@pytest.fixture
def push_service() -> Iterator[Any]:
    runner = PushServiceThread()
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
    assert not runner.service.errors, runner.service.errors  # VAPID verified, body decrypted


def open_settings_and_opt_in(person: Any) -> Any:
    p = person.page
    p.locator("#settings-btn").click()
    expect(p.locator("#push-toggle")).to_have_attribute("data-state", "off")
    with p.expect_response(lambda r: r.url.endswith("/api/push/vapid-public-key")) as key:
        p.locator("#push-toggle").click()
    assert key.value.status == 200
    return key.value.json()["key"]


WORKER_ACTIVE = """async () => {
    const reg = await navigator.serviceWorker.getRegistration('/');
    return reg?.active?.scriptURL ?? null;
}"""


def test_opt_in_with_the_browsers_own_push_service(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    alice.context.grant_permissions(["notifications"])
    alice.register()
    open_settings_and_opt_in(alice)
    status = alice.page.locator("#push-status")
    expect(status).to_have_attribute("data-state", "error")
    expect(status).to_contain_text("push service refused")
    assert alice.page.evaluate(WORKER_ACTIVE).endswith("/sw.js")
    alice.shot("push-service-refused")


# The browser's push service, replaced: `subscribe` records the key it was given and
# returns the fixture's subscription. Everything else is the browser's own.
STUB = """(() => {
    const sub = %s;
    let current = null;
    PushManager.prototype.subscribe = async function (options) {
        const key = new Uint8Array(options.applicationServerKey);
        window.subscribedWith = btoa(String.fromCharCode(...key))
            .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
        current = { endpoint: sub.endpoint, options, toJSON: () => sub,
                    unsubscribe: async () => { current = null; return true; } };
        return current;
    };
    PushManager.prototype.getSubscription = async function () { return current; };
})();"""


def test_opt_in_stores_a_subscription_that_gets_pushes(people, push_service) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    browser = push_service.service.browser("bob")
    bob.context.grant_permissions(["notifications"])
    bob.context.add_init_script(STUB % json.dumps(browser.json()))
    alice.register()
    bob.register()
    key = open_settings_and_opt_in(bob)
    push_service.service.expect_key = key
    expect(bob.page.locator("#push-status")).to_have_attribute("data-state", "on")
    assert bob.page.evaluate("window.subscribedWith") == key
    assert bob.page.evaluate(WORKER_ACTIVE).endswith("/sw.js")
    bob.shot("notifications-on")

    alice.chat_with(bob)
    bob.page.close()  # no live socket: the next message is pushed
    alice.send("Are you coming tonight?")
    got = push_service.next()
    assert got.name == "bob" and got.status == 201
    assert "Are you coming tonight?" in json.dumps(got.payload)

    # a click on the notification opens /?conversation=<id> (sw.js): that conversation
    bob.page = bob.new_page()
    bob.page.goto(f"/?conversation={got.payload['conversation_id']}")
    bob.expect_title(alice.display_name)
    expect(bob.message("Are you coming tonight?")).to_be_visible()
