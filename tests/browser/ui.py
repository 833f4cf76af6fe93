"""The web client as the tests see it: one Person per browser context (their own storage,
so their own account), with the few actions a user takes, and screenshots of every step.

Everything waits on UI state with Playwright's auto-waiting `expect` or `wait_for_function`,
never with fixed sleeps. Selectors use ids and data-* attributes the client sets for state
(`.tick[data-state=read]`, `.call-entry[data-status=ended]`), never glyphs.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

try:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect
except ImportError:  # the `browser` fixture then skips, or fails under CI, saying why
    Browser = BrowserContext = Locator = Page = Any  # type: ignore[misc,assignment]
    expect = None  # type: ignore[assignment]

DESKTOP: Any = {"width": 1100, "height": 720}  # playwright's ViewportSize (a TypedDict)
PHONE: Any = {"width": 390, "height": 760}
PASSWORD = "password123"
# The page is served to the tests under the strict policy the security issue will add (no
# 'unsafe-inline' anywhere): a violation is logged by Chromium and fails the test. img-src
# blob: (as the server's own CSP, transport/http/edge.py): the preview of a file being
# uploaded is a blob: URL of the local file.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; media-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


def exact(text: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(text)}\s*$")


class Person:
    def __init__(self, crowd: People, name: str, *, phone: bool = False) -> None:
        self.crowd = crowd
        self.name = name
        self.display_name = name.title()
        self.username = name.lower()
        self.email = f"{self.username}@example.com"
        self.phone = phone
        self.console: list[str] = []
        self.frames: list[str] = []  # WebSocket frames both ways, for failure reports
        self.errors: list[str] = []
        self.context: BrowserContext = crowd.browser.new_context(
            viewport=PHONE if phone else DESKTOP, is_mobile=phone, has_touch=phone,
            permissions=["camera", "microphone"], base_url=crowd.server.url)
        # every action and wait is bounded (expect's own default is set in conftest.py)
        self.context.set_default_timeout(15_000)
        self.context.route(re.compile(rf"^{re.escape(crowd.server.url)}/(\?.*)?$"), self._with_csp)
        self.page: Page = self.new_page()

    @staticmethod
    def _with_csp(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response,
                      headers={**response.headers, "content-security-policy": CSP})

    # ---- pages and evidence

    def new_page(self) -> Page:
        page = self.context.new_page()
        page.on("console", self._on_console)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))
        page.on("websocket", self._watch_socket)
        return page

    def _on_console(self, message: Any) -> None:
        self.console.append(f"[{message.type}] {message.text}")
        if "Content Security Policy" in message.text:
            self.errors.append(f"CSP violation: {message.text}")

    def _watch_socket(self, ws: Any) -> None:
        def keep(direction: str, payload: Any) -> None:
            text = payload if isinstance(payload, str) else f"<{len(payload)} bytes>"
            self.frames.append(f"{direction} {text[:300]}")
            del self.frames[:-300]

        self.frames.append(f"-- open {ws.url.split('?')[0]}")
        ws.on("framesent", lambda payload: keep("->", payload))
        ws.on("framereceived", lambda payload: keep("<-", payload))
        ws.on("close", lambda _ws: self.frames.append("-- closed"))

    def reopen(self) -> None:
        """A new tab in the same context (the same signed-in account, from localStorage)."""
        self.page = self.new_page()
        self.page.goto("/")
        self.expect_online()

    def shot(self, step: str) -> Path:
        path = self.crowd.shot_path(self.name, step)
        self.page.screenshot(path=str(path))
        return path

    # ---- sign-up

    def open(self) -> None:
        self.page.goto("/")
        expect(self.page.locator("#auth-form")).to_be_visible()

    def register_form(self, username: str, password: str = PASSWORD) -> None:
        p = self.page
        p.locator('[data-tab="register"]').click()
        p.locator('input[name="username"]').fill(username)
        p.locator('input[name="display_name"]').fill(self.display_name)
        p.locator('input[name="email"]').fill(self.email)
        p.locator('input[name="password"]').fill(password)
        p.locator("#auth-submit").click()

    def register(self) -> None:
        self.open()
        self.register_form(self.username)
        expect(self.page.locator("#app-view")).to_be_visible()
        expect(self.page.locator("#me-name")).to_have_text(self.display_name)
        self.expect_online()

    def expect_online(self, timeout: float = 10_000) -> None:
        expect(self.page.locator("#conn-status")).to_have_text("online", timeout=timeout)

    # ---- navigating

    def chat_with(self, other: Person) -> None:
        """Find `other` by search and open the 1:1 with them."""
        p = self.page
        p.locator("#search-input").fill(other.username)
        row = p.locator("#search-results .row").filter(has_text=f"@{other.username}")
        row.click()
        self.expect_title(other.display_name)

    def expect_title(self, title: str) -> None:
        expect(self.page.locator("#conv-title")).to_have_text(title)

    def conv_row(self, name: str) -> Locator:
        p = self.page
        return p.locator("#conv-list .row").filter(has=p.locator(".row-name", has_text=exact(name)))

    def open_conv(self, name: str) -> None:
        self.conv_row(name).click()
        self.expect_title(name)

    def back(self) -> None:
        """On a phone: from the conversation back to the list."""
        self.page.locator("#back-btn").click()
        expect(self.page.locator("#conv-list")).to_be_visible()

    # ---- messages

    def send(self, text: str) -> None:
        box = self.page.locator("#composer-input")
        box.fill(text)
        box.press("Enter")
        expect(box).to_have_value("")

    def message(self, text: str) -> Locator:
        p = self.page
        return p.locator("#messages .msg").filter(has=p.locator(".body", has_text=exact(text)))

    def tick(self, text: str) -> Locator:
        return self.message(text).locator(".tick")

    def call_entries(self) -> Locator:
        return self.page.locator("#messages .call-entry")

    # ---- REST as this person (their token from the page's storage), for test set-up

    def token(self) -> str:
        return str(self.page.evaluate("JSON.parse(localStorage.getItem('chatsrv.auth')).token"))

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.crowd.server.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token()}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def user_id(self) -> str:
        return str(self.rest("GET", "/api/users/me")["id"])

    def direct_with(self, other: Person) -> str:
        """The id of the 1:1 with `other` (created if needed: the call is idempotent)."""
        conv = self.rest("POST", "/api/conversations",
                         {"type": "one_to_one", "member_ids": [other.user_id()]})
        return str(conv["id"])

    # ---- message actions (menu.js, msgview.js)

    def message_menu(self, text: str, action: str | None = None) -> Locator:
        """Open the menu of the message showing `text`; click `action` (data-action) in it."""
        msg = self.message(text)
        msg.hover()
        msg.locator(".msg-menu-btn").click()
        menu = self.page.locator(".msg-menu.popover")
        expect(menu).to_be_visible()
        if action:
            menu.locator(f'[data-action="{action}"]').click()
        return menu

    def react(self, text: str, emoji: str) -> None:
        self.message_menu(text).locator(f'.react-pick[data-emoji="{emoji}"]').click()

    def reaction(self, text: str, emoji: str) -> Locator:
        return self.message(text).locator(f'.reaction[data-emoji="{emoji}"]')

    def socket_switch(self) -> SocketSwitch:
        """Route this page's WebSocket through the test, to cut it (call before open)."""
        return SocketSwitch(self.page)


class SocketSwitch:
    """The page's WebSocket to the real server, passed through Playwright's WebSocket
    routing so a test can drop it as a network would: `cut()` closes the live one and
    refuses new ones (the client backs off and retries), `restore()` lets them through."""

    def __init__(self, page: Page) -> None:
        self.live: list[Any] = []
        self.up = True
        page.route_web_socket(re.compile(r".*/api/ws\b.*"), self._route)

    def _route(self, ws: Any) -> None:
        if not self.up:
            ws.close(code=4000, reason="cut by the test")
            return
        ws.connect_to_server()
        self.live.append(ws)

    def cut(self) -> None:
        self.up = False
        for ws in self.live:
            ws.close(code=4000, reason="cut by the test")
        self.live.clear()

    def restore(self) -> None:
        self.up = True


class People:
    def __init__(self, browser: Browser, server: Any, shots: Path) -> None:
        self.browser = browser
        self.server = server
        self.shots = shots
        self.shots.mkdir(parents=True, exist_ok=True)
        self.everyone: list[Person] = []
        self._n = itertools.count(1)

    def __call__(self, name: str, *, phone: bool = False) -> Person:
        person = Person(self, name, phone=phone)
        self.everyone.append(person)
        return person

    def shot_path(self, who: str, step: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", step).strip("-")
        return self.shots / f"{next(self._n):02d}-{who}-{slug}.png"

    def shoot(self, step: str) -> None:
        """Everyone's screen at this step."""
        for person in self.everyone:
            if not person.page.is_closed():
                person.shot(step)

    def page_errors(self) -> list[str]:
        counts: dict[str, int] = {}
        for person in self.everyone:
            for e in person.errors:
                key = f"{person.name}: {e}"
                counts[key] = counts.get(key, 0) + 1
        return [f"{key} (x{n})" if n > 1 else key for key, n in counts.items()][:10]

    def failure_sections(self) -> list[tuple[str, str]]:
        sections = []
        for person in self.everyone:
            try:
                where = str(person.shot("FAILED")) if not person.page.is_closed() else "(page closed)"
            except Exception as exc:  # a crashed page must not hide the test's own failure
                where = f"(no screenshot: {exc!r})"
            sections.append((f"browser {person.name}: console log",
                             "\n".join(person.console[-200:]) or "(empty)"))
            sections.append((f"browser {person.name}: WebSocket frames (last 60)",
                             "\n".join(person.frames[-60:]) or "(none)"))
            sections.append((f"browser {person.name}: screenshot", where))
        sections.append(("browser screenshots of every step", str(self.shots)))
        sections.append(("chatsrv log (tail)", "\n".join(self.server.log().splitlines()[-60:])))
        return sections

    def close(self) -> None:
        for person in self.everyone:
            try:
                person.context.close()
            except Exception:  # already gone with the browser
                pass
