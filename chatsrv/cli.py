"""Command line: serve, migrate, create-user, admin, check-config.

Every failure is one line on stderr, `error: <cause>`, naming the address or setting at
fault; exit status 2 for configuration errors, 1 for runtime failures. `--debug` (or
LOG_LEVEL=DEBUG) adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from chatsrv.config import ConfigError, Settings
from chatsrv.domain.errors import ChatError
from chatsrv.tasks import StartupError, as_startup_error, leaves

T = TypeVar("T")
log = logging.getLogger("chatsrv")


class CommandError(Exception):
    """A command could not do its work; the message is the line the user sees."""


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["http_host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["http_port"] = args.port
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
        settings.check()
    return settings.with_embedded_secret()


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run `fn` under Trio with the trio-asyncio loop (PostgreSQL and Redis need it);
    the loop's nursery's failures come out as one typed error."""
    import trio_asyncio

    async def run() -> T:
        try:
            async with trio_asyncio.open_loop():
                return await fn()
        except* (ChatError, StartupError, ConfigError) as group:
            found = leaves(group)
            if len(found) == 1 and isinstance(found[0], ChatError | ConfigError):
                raise CommandError(getattr(found[0], "message", str(found[0]))) from group
            raise as_startup_error(group) from group

    return trio.run(run)


def _serve(args: argparse.Namespace) -> int:
    from chatsrv.app import main

    main(_settings(args))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from chatsrv.adapters.storage.migrate import migrate
    from chatsrv.wiring import open_database

    settings = _settings(args)

    async def go() -> list[str]:
        async with open_database(settings) as db:
            return await migrate(db)

    applied = _run(go)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


async def _with_accounts(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(services)` with storage and the account services only (never joins the
    cluster); sessions it revokes reach running nodes through the database."""
    from types import SimpleNamespace

    from chatsrv.adapters.storage.migrate import migrate
    from chatsrv.adapters.storage.sql import SqlStore
    from chatsrv.services.auth import AdminService
    from chatsrv.wiring import build_auth, open_database

    async with open_database(settings) as db:
        await migrate(db)
        store = SqlStore(db)
        auth, _, _ = build_auth(store, settings)
        return await fn(SimpleNamespace(auth=auth, admin=AdminService(store, auth)))


def _create_user(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def go(svc: Any) -> Any:
        return await svc.auth.create_account(
            username=args.username, email=args.email, password=args.password,
            display_name=args.display_name, admin=args.admin)

    session = _run(lambda: _with_accounts(settings, go))
    print(json.dumps({"id": session.user.id, "username": session.user.username,
                      "is_admin": session.user.is_admin}))
    return 0


def _admin(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def go(svc: Any) -> Any:
        if args.action == "grant":
            return await svc.admin.set_admin(args.user, True), None
        if args.action == "revoke":
            return await svc.admin.set_admin(args.user, False), None
        if args.action == "deactivate":
            return await svc.admin.deactivate(args.user)
        return await svc.admin.reactivate(args.user), None

    user, ended = _run(lambda: _with_accounts(settings, go))
    out = {"id": user.id, "username": user.username, "is_admin": user.is_admin,
           "active": user.active}
    if ended is not None:
        out["sessions_ended"] = len(ended)
    print(json.dumps(out))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    if args.markdown:
        from chatsrv.config import markdown_table

        print(markdown_table())
        return 0
    settings = _settings(args)
    print(json.dumps(settings.masked(), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatsrv", description="Real-time chat backend on Trio. "
                                "Configured by environment variables (see README).")
    p.add_argument("--log-level", default=None,
                   help="logging level (default LOG_LEVEL or INFO)")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (same as LOG_LEVEL=DEBUG)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server (REST, WebSocket, web client)")
    s.add_argument("--host", help="bind address (default HTTP_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="HTTP port (default HTTP_PORT or 8080)")
    s.set_defaults(fn=_serve)
    m = sub.add_parser("migrate", help="apply pending database migrations and exit")
    m.set_defaults(fn=_migrate)
    c = sub.add_parser("create-user", help="create an account")
    c.add_argument("username")
    c.add_argument("email")
    c.add_argument("password")
    c.add_argument("--display-name", default=None)
    c.add_argument("--admin", action="store_true", help="with administrator rights")
    c.set_defaults(fn=_create_user)
    a = sub.add_parser("admin", help="grant or revoke admin rights, deactivate or reactivate "
                       "an account (USER: id, username or email)")
    a.add_argument("action", choices=["grant", "revoke", "deactivate", "reactivate"])
    a.add_argument("user")
    a.set_defaults(fn=_admin)
    k = sub.add_parser("check-config", help="print the effective configuration, secrets masked")
    k.add_argument("--markdown", action="store_true",
                   help="print the table of every setting (the README's) instead")
    k.set_defaults(fn=_check_config)
    return p


def _fail(message: str, exc: BaseException, *, debug: bool, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import os

    from chatsrv.logs import configure

    level = (args.log_level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    debug = args.debug or level == "DEBUG"
    configure(level=level, fmt=os.environ.get("LOG_FORMAT") or "auto",
              node_id=os.environ.get("NODE_ID") or "node-1")
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        return _fail(str(exc), exc, debug=debug, status=2)
    except (StartupError, CommandError) as exc:
        return _fail(str(exc), exc, debug=debug, status=1)
    except ChatError as exc:
        return _fail(exc.message, exc, debug=debug, status=1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last edge: a bug, still one line (traceback with --debug)
        detail = "" if debug else " (run with --debug for the traceback)"
        found = leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
        what = "; ".join(f"{type(e).__name__}: {e}" for e in found)
        return _fail(f"internal error: {what}{detail}", exc, debug=debug, status=1)
