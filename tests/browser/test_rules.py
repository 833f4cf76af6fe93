"""The register form's rules (chatsrv/web/rules.js) are the server's (services/auth.py):
the same constants, and the same verdict on inputs at and around every boundary."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chatsrv.services import auth

RULES_JS = Path(__file__).resolve().parents[2] / "chatsrv" / "web" / "rules.js"


def _js_const(name: str) -> str:
    found = re.search(rf"^export const {name} = (.+?);", RULES_JS.read_text(), re.M)
    assert found, f"{name} not found in rules.js"
    return found.group(1).split("//")[0].strip()


def test_rules_js_has_the_servers_constants() -> None:
    assert _js_const("USERNAME") == f"/{auth.USERNAME.pattern}/"
    assert _js_const("EMAIL") == f"/{auth.EMAIL.pattern}/"
    assert int(_js_const("PASSWORD_MIN_BYTES")) == auth.MIN_PASSWORD
    assert int(_js_const("PASSWORD_MAX_BYTES")) == auth.MAX_PASSWORD
    # not named constants on the server: its checks say 254 and 1-64
    assert int(_js_const("EMAIL_MAX")) == 254
    assert int(_js_const("DISPLAY_NAME_MAX")) == 64


def _samples() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(field: str, value: str) -> None:
        n = len(out)
        body = {"username": f"user{n}", "email": f"user{n}@example.com",
                "password": "password123", "display_name": f"User {n}"}
        body[field] = value
        out.append(body)

    for username in ("ab", "abc", "a" * 32, "a" * 33, "dots.and-dash_", "with space",
                     "jörg", " trimmed ", "semi;colon"):
        add("username", username)
    for email in ("a@b", "a@b.c", "x@y.io", " spaced@example.com ", "a" * 64 + "@x.io",
                  "a" * 65 + "@x.io", "two@@x.io", "no-at.example.com", "x@" + "d" * 250 + ".io"):
        add("email", email)
    for password in ("1234567", "12345678", "p" * 72, "p" * 73, "ü" * 36, "ü" * 37,
                     "€€€", "€€€€"):
        add("password", password)
    for display in ("D" * 64, "D" * 65, "   ", "Zoë"):
        add("display_name", display)
    return out


def test_form_and_server_agree_on_every_sample(people, chat_server) -> None:  # type: ignore[no-untyped-def]
    samples = _samples()
    page = people("tester").page
    page.goto("/")
    client = page.evaluate("""async (samples) => {
        const rules = await import('/web/rules.js');
        return samples.map((s) => rules.checkRegistration(s)?.field ?? null);
    }""", samples)
    server = []
    for body in samples:
        req = urllib.request.Request(
            f"{chat_server.url}/api/auth/register", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                server.append(None if r.status == 201 else f"status {r.status}")
        except urllib.error.HTTPError as e:
            err = json.loads(e.read())["error"]
            assert e.code == 400, (body, e.code, err)
            server.append(err.get("field") or err["code"])
    disagree = [(body, c, s) for body, c, s in zip(samples, client, server, strict=True) if c != s]
    assert not disagree, "form and server disagree (sample, form says, server says):\n" + \
        "\n".join(map(repr, disagree))
    assert None in server and any(server), "the samples must include accepted and refused ones"

