"""Command line: serve, migrate, create-user, check-config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import trio

from chatsrv.config import ConfigError, Settings


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {}
    if getattr(args, "host", None):
        overrides["http_host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["http_port"] = args.port
    if overrides:
        import dataclasses

        settings = dataclasses.replace(settings, **overrides)
    return settings.with_embedded_secret()


def _serve(args: argparse.Namespace) -> int:
    from chatsrv.app import main

    main(_settings(args))
    return 0


def _with_loop(settings: Settings, fn):  # type: ignore[no-untyped-def]
    import trio_asyncio

    async def run():  # type: ignore[no-untyped-def]
        async with trio_asyncio.open_loop():
            return await fn()

    return trio.run(run)


def _migrate(args: argparse.Namespace) -> int:
    from chatsrv.adapters.storage.migrate import migrate
    from chatsrv.app import open_database

    settings = _settings(args)

    async def go() -> list[str]:
        async with open_database(settings) as db:
            return await migrate(db)

    applied = _with_loop(settings, go)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _create_user(args: argparse.Namespace) -> int:
    import dataclasses

    from chatsrv.app import open_services

    # Creating an account needs only the database: never join the cluster (and bind GRPC_PORT).
    settings = dataclasses.replace(_settings(args), redis_url=None)

    async def go():  # type: ignore[no-untyped-def]
        async with open_services(settings) as svc:
            return await svc.auth.register(username=args.username, email=args.email,
                                           password=args.password,
                                           display_name=args.display_name)

    from chatsrv.domain.errors import ChatError

    try:
        session = _with_loop(settings, go)
    except ChatError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({"id": session.user.id, "username": session.user.username}))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.masked(), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatsrv", description="Real-time chat backend on Trio. "
                                "Configured by environment variables (see README).")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
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
    c.set_defaults(fn=_create_user)
    k = sub.add_parser("check-config", help="print the effective configuration, secrets masked")
    k.set_defaults(fn=_check_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
