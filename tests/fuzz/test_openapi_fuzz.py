"""Schemathesis against the served /api/openapi.json of a real node, as a signed-in user.

For every operation in the document, schemathesis generates requests (valid ones, and
ones that break the schema), sometimes with the path parameters set to real ids of the
user's conversations, messages and contacts so the handlers get past the 404 and deeper
code runs. Every response must pass `not_a_server_error`, `status_code_conformance` (the
status is one the document declares), `content_type_conformance` and
`response_schema_conformance`. On SQLite and on PostgreSQL.

The run does not stop at the first failure: every distinct failure (operation, check,
status) is collected with a curl line to reproduce it and the traceback the node logged,
and the test fails once, listing them all. A node that dies is restarted and the case that
killed it reported. Hypothesis runs derandomized, without an example database and without
shrinking, so CI sees the same cases every run and a failing run costs no extra time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup

from tests.fuzz.node import Account, Node, conversation, register, rest, send

pytestmark = pytest.mark.fuzz

# Cases per operation and strategy (valid, invalid, valid with real ids): ~20 operations
# x 3 x 20 = ~1,200 requests per backend, about 15-25 s here.
EXAMPLES = 20
CHECKS = [schemathesis.checks.not_a_server_error,
          schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance,
          schemathesis.checks.response_schema_conformance]
REQUEST_TIMEOUT = 5.0  # a hung keep-alive connection costs this much per case


@dataclass
class Found:
    operation: str
    title: str
    status: int | None
    request: str
    detail: str
    tracebacks: list[str] = field(default_factory=list)
    count: int = 1

    def render(self) -> str:
        lines = [f"- {self.operation}: {self.title} (status {self.status}, {self.count}x)",
                 f"    {self.detail[:400]}", f"    {self.request[:600]}"]
        lines += [f"    node: {t[:400]}" for t in dict.fromkeys(self.tracebacks)]
        return "\n".join(lines)


class Catalogue:
    def __init__(self) -> None:
        self.found: dict[tuple[str, str, int | None], Found] = {}

    def add(self, item: Found) -> None:
        key = (item.operation, item.title, item.status)
        if key in self.found:
            self.found[key].count += 1
        else:
            self.found[key] = item


def _real_ids(node: Node) -> tuple[Account, dict[str, list[str]]]:
    """The fuzzing user and real ids for each path parameter name: a 1:1 and a group with
    messages, the peer, the user, a message; a second user in the group is the one a
    generated DELETE .../members/{user_id} may remove."""
    with rest(node) as http:
        user, peer, third = register(http), register(http), register(http)
        one = conversation(http, user, peer)
        group = conversation(http, user, peer, third, name="fuzz group")
        msg = send(http, user, one, "hello")
        send(http, peer, group, "hi all")
    return user, {
        "conversation_id": [one, group],
        "user_id": [peer.id, third.id, user.id],
        "message_id": [msg["id"]],
    }


USERNAME = st.from_regex(r"[a-z][a-z0-9_]{5,20}", fullmatch=True)


@st.composite
def _deeper(draw: st.DrawFn, operation: Any, ids: dict[str, list[str]]) -> Any:
    """A valid case with real ids in the path and, in the body, the fields the server
    checks first made acceptable (a fresh username and email, real member ids, a known
    conversation type), so the generated values of the other fields (content, names,
    passwords...) reach the services and the database."""
    names = [p.name for p in operation.path_parameters]
    fixed = {n: draw(st.sampled_from(ids[n])) for n in names if n in ids}
    case = draw(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None))
    body = case.body
    if isinstance(body, dict):
        if "username" in body:
            body["username"] = draw(USERNAME)
        if "email" in body and draw(st.booleans()):
            body["email"] = f"{draw(USERNAME)}@example.com"
        for key in ("member_ids", "admin_ids"):
            if key in body:
                body[key] = draw(st.lists(st.sampled_from(ids["user_id"]), max_size=3))
        if "type" in body:
            body["type"] = draw(st.sampled_from(["one_to_one", "group"]))
        if "password" in body and draw(st.booleans()):
            body["password"] = "password123"
    return case


def _strategies(operation: Any, ids: dict[str, list[str]]) -> list[Any]:
    return [operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
            _deeper(operation, ids)]


def _repro(case: Any) -> str:
    """The request, as the fuzzing user would send it (Authorization left out)."""
    query = f"?{case.query}" if case.query else ""
    value = case.body
    if isinstance(value, dict):  # the schema's own fields first, generated junk keys after
        value = dict(sorted(value.items(), key=lambda kv: (not str(kv[0]).isidentifier(),
                                                          str(kv[0]))))
    body = f" body={json.dumps(value, ensure_ascii=True, default=repr)[:400]}" \
        if value is not NOT_SET and value is not None else ""
    return f"{case.method} {case.formatted_path}{query}{body}"


def _fuzz(node: Node, user: Account, operation: Any, strategy: Any,
          catalogue: Catalogue) -> None:
    auth = user.headers
    session = requests.Session()  # keep-alive, as real clients do
    previous = ["(none)"]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        mark = node.mark()
        try:
            response = case.call(base_url=node.url, session=session, headers=auth,
                                 timeout=REQUEST_TIMEOUT)
        except requests.RequestException as exc:
            # the node died or hung on this case: report it, bring the node back
            log = node.tracebacks_since(mark, frames=2)
            catalogue.add(Found(operation.label, f"no response: {type(exc).__name__}", None,
                                _repro(case), f"{str(exc)[:200]}; the request before it on "
                                f"this keep-alive connection: {previous[0]}", log))
            node.ensure_running()
            session.close()
            previous[0] = "(none: new connection)"
            return
        previous[0] = f"{_repro(case)} -> {response.status_code}"
        try:
            case.validate_response(response, checks=CHECKS, headers=auth)
        except FailureGroup as group:
            body = response.text[:300]
            for failure in group.exceptions:
                catalogue.add(Found(operation.label, failure.title, response.status_code,
                                    _repro(case),
                                    f"{failure.message.strip()[:300]} | body: {body}",
                                    node.tracebacks_since(mark, frames=2)))

    run()


def test_openapi_fuzz(node: Node) -> None:
    started, deaths_before = time.monotonic(), len(node.deaths)
    user, ids = _real_ids(node)
    schema = schemathesis.openapi.from_url(f"{node.url}/api/openapi.json",
                                           timeout=REQUEST_TIMEOUT)
    catalogue = Catalogue()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        for strategy in _strategies(operation, ids):
            _fuzz(node, user, operation, strategy, catalogue)
    elapsed = time.monotonic() - started
    report = "\n".join(f.render() for f in catalogue.found.values())
    died = len(node.deaths) - deaths_before
    if catalogue.found:
        pytest.fail(f"{len(catalogue.found)} distinct failure(s) on {node.backend} over "
                    f"{len(operations)} operations in {elapsed:.0f} s"
                    f"{f'; the node died {died}x' if died else ''}:\n{report}", pytrace=False)
