"""Route declaration and the OpenAPI document, plus the request helpers handlers share.

Every route is declared through `Api.route` with its request and response types
(protocol/rest.py); /api/openapi.json is generated from them, and handlers return exactly
those types (`json_response` encodes msgspec structs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from chatsrv import __version__
from chatsrv.domain.errors import Invalid, Unauthorized
from chatsrv.protocol import rest
from chatsrv.protocol.text import INT64_MAX, check_text

_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json")


def no_content() -> Response:
    return Response(b"", status=204)


class Api:
    """Registers routes on the app and keeps their schemas for the OpenAPI document."""

    def __init__(self, app: QuartTrio) -> None:
        self.app = app
        self.paths: dict[str, dict[str, Any]] = {}
        self.types: set[type[Any]] = {rest.ErrorBody}

    def route(self, method: str, path: str, *, summary: str, body: type[Any] | None = None,
              response: type[Any] | None = None, status: int = 200, auth: bool = True,
              query: tuple[str, ...] = (), also: dict[int, str] | None = None,
              ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """`also`: other success statuses with the same response body (status -> what it
        means), e.g. 200 for a resend that returns the stored message."""
        def register(handler: Callable[..., Awaitable[Any]]) -> Any:
            self.app.add_url_rule(path, endpoint=f"{method}:{path}", view_func=handler,
                                  methods=[method])
            op: dict[str, Any] = {
                "summary": summary, "operationId": handler.__name__,
                "responses": {
                    str(status): _schema_ref(response, "OK") if response else {"description": "OK"},
                    "4XX": _schema_ref(rest.ErrorBody, "error"),
                    "5XX": _schema_ref(rest.ErrorBody, "server or dependency failure"),
                },
            }
            for extra, meaning in (also or {}).items():
                op["responses"][str(extra)] = (_schema_ref(response, meaning) if response
                                               else {"description": meaning})
            if auth:
                op["security"] = [{"bearer": []}]
            params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                      for p in _path_params(path)]
            params += [{"name": q, "in": "query", "required": False,
                        "schema": {"type": "string"}} for q in query]
            if params:
                op["parameters"] = params
            if body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
                }}
                self.types.add(body)
            if response is not None:
                self.types.add(response)
            self.paths.setdefault(_openapi_path(path), {})[method.lower()] = op
            return handler
        return register

    def openapi(self) -> dict[str, Any]:
        _, components = msgspec.json.schema_components(
            sorted(self.types, key=lambda t: t.__name__),
            ref_template="#/components/schemas/{name}",
        )
        return {
            "openapi": "3.1.0",
            "info": {"title": "chatsrv", "version": __version__,
                     "description": "REST API of chatsrv. The WebSocket protocol at /api/ws, "
                                    "error codes and close codes are described in the "
                                    "protocol reference at /api/docs/protocol "
                                    "(docs/protocol.md)."},
            "paths": self.paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
            },
        }


def _schema_ref(cls: type[Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{cls.__name__}"}}}}


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[-1] for part in path.split("/") if part.startswith("<")]


def _openapi_path(path: str) -> str:
    return "/".join(
        "{" + part[1:-1].split(":")[-1] + "}" if part.startswith("<") else part
        for part in path.split("/")
    )


# ---------------------------------------------------------------------------- requests


def bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token", code="missing_token")
    return token.strip()


async def body(cls: type[Any]) -> Any:
    data: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
    return rest.decode_body(data, cls)


async def optional_body(cls: type[Any]) -> Any:
    """The body as `cls`, or `cls()` when there is none."""
    data: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
    return rest.decode_body(data, cls) if data else cls()


def int_arg(name: str, default: int | None = None, *, cap: int | None = None) -> int | None:
    """A non-negative integer query parameter that fits 64 bits (what the databases store);
    `default` when absent or empty; a page size over `cap` is `cap`. Raises Invalid with
    the field."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if cap is not None and raw.isdigit() and (len(raw) > 20 or int(raw) > cap):
        return cap
    try:
        if len(raw) > 20:
            raise ValueError
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer", field=name) from None
    if not 0 <= value <= INT64_MAX:
        raise Invalid(f"{name} must be between 0 and {INT64_MAX}", field=name)
    return value


def limit_arg(default: int, maximum: int) -> int:
    """`limit`: 1..maximum (absent: default). Raises Invalid."""
    limit = int_arg("limit", default)
    if limit is None or not 1 <= limit <= maximum:
        raise Invalid(f"limit must be 1-{maximum}", field="limit")
    return limit


def text_arg(name: str, *, max_chars: int) -> str:
    """A query parameter as text (stripped), checked like body text. Raises Invalid."""
    value = (request.args.get(name) or "").strip()
    if len(value) > max_chars:
        raise Invalid(f"{name} is longer than {max_chars} characters", field=name)
    check_text(value, name)
    return value


def has_body(req: Any) -> bool:
    return bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "")
