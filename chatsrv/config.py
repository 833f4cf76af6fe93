"""Settings: every port, URL, timeout, limit and queue size, read once from the environment.

One declarative table: each setting is a field of `Settings` with its environment variable,
its default, its group and one line of documentation (`setting(...)`). `from_env` parses
every field by its type; `check-config` prints the effective values and the README's
configuration table is generated from the same fields (`markdown_table`, checked by a test).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

SEED_DEFAULT_SECRET = "change-in-production"
MIN_SECRET_BYTES = 32
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://")


_ICE_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
_STUN_URL = re.compile(rf"stuns?:{_ICE_HOST}")
_TURN_URL = re.compile(rf"turns?:{_ICE_HOST}(?:\?transport=(?:udp|tcp))?")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which variable and why."""


def setting(env: str, default: Any, doc: str, *, group: str, minimum: float | None = None,
            secret: bool = False, shown: str | None = None) -> Any:
    """A field of Settings: read from `env`; `minimum` (inclusive) is checked at start;
    `secret` values are masked; `shown` replaces the default in the documentation."""
    return field(default=default, repr=not secret, metadata={
        "env": env, "doc": doc, "group": group, "minimum": minimum, "secret": secret,
        "shown": shown,
    })


@dataclass(frozen=True)
class Settings:
    # ---- network
    http_host: str = setting("HTTP_HOST", "127.0.0.1", "REST, WebSocket and web client address "
                             "(containers set 0.0.0.0)", group="network")
    http_port: int = setting("HTTP_PORT", 8080, "HTTP port (0: any free port)", group="network",
                             minimum=0)
    grpc_host: str = setting("GRPC_HOST", "127.0.0.1", "node-to-node gRPC address (cluster)",
                             group="network")
    grpc_port: int = setting("GRPC_PORT", 9090, "node-to-node gRPC port (cluster)",
                             group="network", minimum=0)
    node_id: str = setting("NODE_ID", "node-1", "this node's name in the cluster",
                           group="network")
    node_address: str | None = setting("NODE_ADDRESS", None, "how peers reach this node's gRPC "
                                       "port (host:port); default GRPC_HOST and the bound port",
                                       group="network")
    # ---- backends: no database_url -> SQLite in data_dir; no redis_url -> single node
    database_url: str | None = setting(
        "DATABASE_URL", None, "`postgresql://…`; unset: SQLite in the data directory (the "
        "seed's `DB_HOST`, `DB_PORT`, `DB_USER`, `DB_PASSWORD`, `DB_NAME` build it too)",
        group="storage", secret=True)
    redis_url: str | None = setting(
        "REDIS_URL", None, "cluster mode (`redis://…`; or the seed's `REDIS_HOST`, "
        "`REDIS_PORT`)", group="cluster", secret=True)
    data_dir: Path = setting("CHATSRV_DATA_DIR", Path("data"),  # noqa: RUF009 (immutable) "SQLite file and the generated "
                             "JWT secret", group="storage")
    # ---- auth
    jwt_secret: str = setting("JWT_SECRET", "", "≥ 32 bytes, required with PostgreSQL or "
                              "Redis; embedded mode generates one into the data directory",
                              group="auth", secret=True, shown="generated")
    access_token_ttl: float = setting("ACCESS_TOKEN_TTL", 3600.0, "seconds an access token "
                                      "lives", group="auth", minimum=1)
    refresh_token_ttl: float = setting("REFRESH_TOKEN_TTL", 30 * 24 * 3600.0, "seconds a "
                                       "refresh token lives", group="auth", minimum=1)
    bcrypt_rounds: int = setting("BCRYPT_ROUNDS", 12, "bcrypt cost (~230 ms per hash at 12 "
                                 "here)", group="auth", minimum=4)
    bcrypt_concurrency: int = setting("BCRYPT_CONCURRENCY", 2, "bcrypt hashes at once (worker "
                                      "threads; one per core)", group="auth", minimum=1)
    bcrypt_queue: int = setting("BCRYPT_QUEUE", 32, "sign-ins waiting for bcrypt before more "
                                "are refused with 503 `busy`", group="auth", minimum=0)
    allow_registration: bool = setting("ALLOW_REGISTRATION", True, "false closes "
                                       "`/api/auth/register` (403 `registration_closed`)",
                                       group="auth")
    session_poll_interval: float = setting("SESSION_POLL_INTERVAL", 1.0, "how often a node "
                                           "reads sessions revoked elsewhere (their sockets "
                                           "close within this)", group="auth", minimum=0.05)
    # ---- abuse limits (services/limits.py); load tests raise them
    login_failures_per_minute: float = setting(
        "LOGIN_FAILURES_PER_MINUTE", 10.0, "failed logins per account and per client address",
        group="abuse", minimum=1)
    registrations_per_minute: float = setting("REGISTRATIONS_PER_MINUTE", 20.0, "sign-ups "
                                              "per client address", group="abuse", minimum=1)
    refreshes_per_minute: float = setting("REFRESHES_PER_MINUTE", 60.0, "token refreshes per "
                                          "client address", group="abuse", minimum=1)
    address_rate_per_second: float = setting("ADDRESS_RATE_PER_SECOND", 50.0, "REST requests "
                                             "per second per client address",
                                             group="abuse", minimum=0.1)
    address_rate_burst: float = setting("ADDRESS_RATE_BURST", 200.0, "REST burst per client "
                                        "address", group="abuse", minimum=1)
    rest_rate_per_second: float = setting("REST_RATE_PER_SECOND", 20.0, "REST requests per "
                                          "second per user", group="abuse", minimum=0.1)
    rest_rate_burst: float = setting("REST_RATE_BURST", 60.0, "REST burst per user",
                                     group="abuse", minimum=1)
    expensive_per_minute: float = setting("EXPENSIVE_PER_MINUTE", 60.0, "searches and uploads "
                                          "per user", group="abuse", minimum=1)
    trusted_proxies: tuple[str, ...] = setting(
        "TRUSTED_PROXIES", (), "comma list of proxy addresses or CIDRs whose "
        "`X-Forwarded-For` names the client", group="abuse")
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS", (), "comma list of origins allowed to call the API from a browser "
        "(`*`: any); empty: same origin only (also checked at the WebSocket handshake)",
        group="abuse")
    max_sockets_per_user: int = setting("MAX_SOCKETS_PER_USER", 64, "WebSockets of one user on "
                                        "a node (more: 429 at the handshake)", group="abuse",
                                        minimum=1)
    max_sockets_per_address: int = setting("MAX_SOCKETS_PER_ADDRESS", 4096, "WebSockets from "
                                           "one client address on a node (more: 429)",
                                           group="abuse", minimum=1)
    max_sockets: int = setting("MAX_SOCKETS", 50_000, "WebSockets on a node (more: 503)",
                               group="abuse", minimum=1)
    # ---- limits
    max_body_bytes: int = setting("MAX_BODY_BYTES", 64 * 1024, "REST request body cap (413)",
                                  group="limits", minimum=1024)
    max_frame_bytes: int = setting("MAX_FRAME_BYTES", 64 * 1024, "WebSocket frame cap "
                                   "(`frame_too_large`; 16 times that closes with 1009)", group="limits",
                                   minimum=1024)
    max_content_chars: int = setting("MAX_CONTENT_CHARS", 4000, "characters per message",
                                     group="limits", minimum=1)
    history_max_limit: int = setting("HISTORY_MAX_LIMIT", 100, "messages per history page at "
                                     "most", group="limits", minimum=1)
    history_default_limit: int = setting("HISTORY_DEFAULT_LIMIT", 50, "messages per history "
                                         "page by default", group="limits", minimum=1)
    sync_page_size: int = setting("SYNC_PAGE_SIZE", 200, "messages per `sync_result` page",
                                  group="limits", minimum=1)
    max_group_members: int = setting("MAX_GROUP_MEMBERS", 5000, "members per group",
                                     group="limits", minimum=2)
    edit_window: float = setting("EDIT_WINDOW", 0.0, "seconds after sending that a message "
                                 "can still be edited (0: always; deleting is never limited)",
                                 group="limits", minimum=0)
    search_max_limit: int = setting("SEARCH_MAX_LIMIT", 50, "results per search page at most",
                                    group="limits", minimum=1)
    search_default_limit: int = setting("SEARCH_DEFAULT_LIMIT", 20, "results per search page "
                                        "by default", group="limits", minimum=1)
    # ---- realtime
    outbox_size: int = setting("WS_OUTBOX_SIZE", 512, "frames queued per connection before "
                               "it is cut with 1013 (it resyncs)", group="realtime", minimum=8)
    heartbeat_interval: float = setting("HEARTBEAT_INTERVAL", 25.0, "WebSocket ping after "
                                        "this long quiet", group="realtime", minimum=0.1)
    heartbeat_timeout: float = setting("HEARTBEAT_TIMEOUT", 60.0, "a socket silent this long "
                                       "is dropped", group="realtime", minimum=0.1)
    typing_ttl: float = setting("TYPING_TTL", 6.0, "seconds a typing state lives without a "
                                "refresh", group="realtime", minimum=0.1)
    presence_grace: float = setting("PRESENCE_GRACE", 2.0, "seconds after the last socket "
                                    "closes before a user is offline", group="realtime",
                                    minimum=0)
    rate_per_second: float = setting("RATE_PER_SECOND", 30.0, "WebSocket frames per second "
                                     "per user", group="realtime", minimum=0.1)
    rate_burst: float = setting("RATE_BURST", 60.0, "WebSocket frame burst per user",
                                group="realtime", minimum=1)
    member_cache_ttl: float = setting("MEMBER_CACHE_TTL", 60.0, "seconds a conversation's "
                                      "cached member list (and a user's cached blocks and "
                                      "privacy settings) lives; a change drops it at once, "
                                      "on every node, so this only bounds a missed note",
                                      group="realtime", minimum=0)
    # ---- calls
    ring_timeout: float = setting("RING_TIMEOUT", 45.0, "seconds a call rings before it is "
                                  "missed", group="calls", minimum=1)
    stun_urls: tuple[str, ...] = setting("STUN_URLS", ("stun:stun.l.google.com:19302",),
                                         "comma list of STUN URLs", group="calls")
    turn_urls: tuple[str, ...] = setting("TURN_URLS", (), "comma list of TURN URLs",
                                         group="calls")
    turn_secret: str = setting("TURN_SECRET", "", "coturn `use-auth-secret` secret: TURN REST "
                               "credentials", group="calls", secret=True)
    turn_ttl: float = setting("TURN_TTL", 3600.0, "seconds TURN credentials live",
                              group="calls", minimum=60)
    # ---- offline push (services/push.py)
    vapid_private_key: str = setting(
        "VAPID_PRIVATE_KEY", "", "Web Push VAPID key: PEM, or the raw P-256 scalar in "
        "base64url; unset: generated once into the data directory (`vapid_private_key.pem`; "
        "a cluster's nodes must share one: set it)", group="push", secret=True,
        shown="generated")
    vapid_subject: str = setting("VAPID_SUBJECT", "mailto:admin@localhost", "VAPID `sub`: a "
                                 "`mailto:` or `https:` contact for push services",
                                 group="push")
    push_delay: float = setting("PUSH_DELAY", 10.0, "seconds a message waits before a user "
                                "with no live socket is pushed (online by then: no push)",
                                group="push", minimum=0)
    push_redact_content: bool = setting("PUSH_REDACT_CONTENT", False, "pushes say \"New "
                                        "message\" instead of the text", group="push")
    push_webhook_url: str | None = setting(
        "PUSH_WEBHOOK_URL", None, "each push event also POSTed here as JSON (a Sygnal-style "
        "gateway, ntfy/UnifiedPush)", group="push", secret=True)
    push_allow_insecure: bool = setting("PUSH_ALLOW_INSECURE", False, "accept `http://` push "
                                        "endpoints on 127.0.0.1/localhost (tests only)",
                                        group="push")
    push_ttl: int = setting("PUSH_TTL", 86400, "seconds a push service keeps an undelivered "
                            "push (`TTL` header)", group="push", minimum=0)
    push_http_timeout: float = setting("PUSH_HTTP_TIMEOUT", 10.0, "deadline of one request to "
                                       "a push service or the webhook", group="push",
                                       minimum=0.01)
    push_max_attempts: int = setting("PUSH_MAX_ATTEMPTS", 8, "tries of one push before it is "
                                     "given up", group="push", minimum=1)
    push_retry_delay: float = setting("PUSH_RETRY_DELAY", 2.0, "first retry back-off "
                                      "(doubles, jittered)", group="push", minimum=0)
    push_retry_max_delay: float = setting("PUSH_RETRY_MAX_DELAY", 300.0, "longest retry "
                                          "back-off", group="push", minimum=0)
    push_poll_interval: float = setting("PUSH_POLL_INTERVAL", 2.0, "how often the outbox is "
                                        "read for pushes due (written by other nodes, "
                                        "retries)", group="push", minimum=0.01)
    push_concurrency: int = setting("PUSH_CONCURRENCY", 16, "push requests in flight per "
                                    "node", group="push", minimum=1)
    push_queue_size: int = setting("PUSH_QUEUE_SIZE", 4096, "committed messages waiting to be "
                                   "written to the push outbox (full: the push is dropped "
                                   "and counted)", group="push", minimum=1)
    push_max_subscriptions: int = setting("PUSH_MAX_SUBSCRIPTIONS", 20, "push subscriptions "
                                          "per user", group="push", minimum=1)
    # ---- cluster
    node_heartbeat_interval: float = setting("NODE_HEARTBEAT_INTERVAL", 5.0, "seconds between "
                                             "a node's liveness refreshes", group="cluster",
                                             minimum=0.05)
    node_ttl: float = setting("NODE_TTL", 15.0, "a node silent this long is dead and its users "
                              "offline", group="cluster", minimum=0.1)
    redis_prefix: str = setting("REDIS_PREFIX", "chatsrv", "namespace of every Redis key and "
                                "channel of this cluster", group="cluster")
    redis_cluster: bool = setting("REDIS_CLUSTER", False, "REDIS_URL names a Redis Cluster "
                                  "(also implied by a `redis+cluster://` URL): hash-tagged "
                                  "keys, sharded pub/sub", group="cluster")
    redis_timeout: float = setting("REDIS_TIMEOUT", 5.0, "one Redis round trip; slower counts "
                                   "as Redis unavailable", group="cluster", minimum=0.01)
    peer_queue_size: int = setting("PEER_QUEUE_SIZE", 4096, "events queued per remote node "
                                   "before they are dropped", group="cluster", minimum=2)
    peer_batch_size: int = setting("PEER_BATCH_SIZE", 256, "events per node-to-node RPC at "
                                   "most", group="cluster", minimum=1)
    peer_batch_linger: float = setting("PEER_BATCH_LINGER", 0.002, "seconds a batch waits for "
                                       "more events", group="cluster", minimum=0)
    peer_rpc_timeout: float = setting("PEER_RPC_TIMEOUT", 5.0, "one node-to-node RPC; slower "
                                      "drops the batch", group="cluster", minimum=0.01)
    # ---- storage
    db_timeout: float = setting("DB_TIMEOUT", 5.0, "deadline of every storage operation; "
                                "slower is `unavailable`", group="storage", minimum=0.01)
    db_pool_size: int = setting("DB_POOL_SIZE", 10, "PostgreSQL connections", group="storage",
                                minimum=2)
    db_writers: int = setting("DB_WRITERS", 4, "group-commit lanes (PostgreSQL; SQLite has one "
                              "writer)", group="storage", minimum=1)
    commit_batch: int = setting("COMMIT_BATCH", 128, "messages per group-commit transaction at "
                                "most", group="storage", minimum=1)
    commit_queue_size: int = setting("COMMIT_QUEUE_SIZE", 4096, "messages waiting per commit "
                                     "lane; senders wait when it is full", group="storage",
                                     minimum=1)
    # ---- uploads (services/uploads.py, adapters/blobs/)
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 25 * 1024 * 1024, "bytes per upload "
                                    "(more: 413 `too_large`, also when Content-Length lies)",
                                    group="uploads", minimum=1)
    upload_quota_bytes: int = setting("UPLOAD_QUOTA_BYTES", 1024 * 1024 * 1024, "bytes of "
                                      "uploads one user may keep (more: 413 "
                                      "`quota_exceeded`; 0: no quota)", group="uploads",
                                      minimum=0)
    upload_orphan_ttl: float = setting("UPLOAD_ORPHAN_TTL", 24 * 3600.0, "seconds an upload "
                                       "never attached to a message is kept", group="uploads",
                                       minimum=1)
    upload_sweep_interval: float = setting("UPLOAD_SWEEP_INTERVAL", 300.0, "seconds between "
                                           "sweeps for orphaned uploads", group="uploads",
                                           minimum=0.05)
    upload_strip_metadata: bool = setting("UPLOAD_STRIP_METADATA", True, "remove EXIF/XMP "
                                          "(GPS position, camera) from uploaded JPEGs, "
                                          "pixels untouched; false keeps them byte for byte",
                                          group="uploads")
    max_attachments: int = setting("MAX_ATTACHMENTS", 10, "uploads per message",
                                   group="uploads", minimum=1)
    thumbnail_px: int = setting("THUMBNAIL_PX", 320, "longest side of an image thumbnail",
                                group="uploads", minimum=16)
    max_image_pixels: int = setting("MAX_IMAGE_PIXELS", 50_000_000, "images over this many "
                                    "pixels get no thumbnail (decompression-bomb limit)",
                                    group="uploads", minimum=1)
    image_timeout: float = setting("IMAGE_TIMEOUT", 10.0, "seconds to decode an image and "
                                   "make its thumbnail; slower: kept without one",
                                   group="uploads", minimum=0.1)
    upload_read_timeout: float = setting("UPLOAD_READ_TIMEOUT", 30.0, "an upload body that "
                                         "sends nothing for this long is dropped",
                                         group="uploads", minimum=0.1)
    download_url_ttl: float = setting("DOWNLOAD_URL_TTL", 3600.0, "seconds a signed download "
                                      "URL (`?sig=`, for <img src>) and an S3 presigned "
                                      "redirect live", group="uploads", minimum=10)
    s3_endpoint: str | None = setting("S3_ENDPOINT", None, "S3-compatible endpoint "
                                      "(`https://s3.eu-west-1.amazonaws.com`, MinIO, …); "
                                      "unset: blobs on local disk under the data directory",
                                      group="uploads")
    s3_bucket: str = setting("S3_BUCKET", "", "bucket of the blobs (with S3_ENDPOINT)",
                             group="uploads")
    s3_access_key: str = setting("S3_ACCESS_KEY", "", "S3 access key id", group="uploads",
                                 secret=True)
    s3_secret_key: str = setting("S3_SECRET_KEY", "", "S3 secret access key", group="uploads",
                                 secret=True)
    s3_region: str = setting("S3_REGION", "us-east-1", "S3 region (SigV4 scope)",
                             group="uploads")
    s3_redirect: bool = setting("S3_REDIRECT", True, "downloads answer 302 to a presigned S3 "
                                "URL (false: bytes proxied through the node)", group="uploads")
    # ---- lifetimes
    connect_retry_deadline: float = setting(
        "CONNECT_RETRY_DEADLINE", 60.0, "start-up: how long an unreachable PostgreSQL or Redis "
        "is retried (permanent errors fail at once)", group="lifetimes", minimum=0)
    shutdown_deadline: float = setting("SHUTDOWN_DEADLINE", 10.0, "SIGTERM: everything stops "
                                       "within this", group="lifetimes", minimum=0.1)
    drain_timeout: float = setting(
        "DRAIN_TIMEOUT", 2.0, "SIGTERM: HTTP requests in flight get this long (WebSockets "
        "close at once with 1001)", group="lifetimes", minimum=0)
    cleanup_deadline: float = setting("CLEANUP_DEADLINE", 2.0, "shielded clean-up after a "
                                      "socket or call ends (presence, typing, call history)",
                                      group="lifetimes", minimum=0.01)
    head_timeout: float = setting("HEAD_TIMEOUT", 10.0, "a connection's first request head "
                                  "must arrive within this", group="lifetimes", minimum=0.01)
    handshake_timeout: float = setting("HANDSHAKE_TIMEOUT", 10.0, "a WebSocket handshake "
                                       "(head to `ready`) must finish within this",
                                       group="lifetimes", minimum=0.01)
    send_stall: float = setting("WS_SEND_STALL", 5.0, "a socket that takes no bytes for this "
                                "long is dead", group="lifetimes", minimum=0.01)
    close_wait: float = setting("WS_CLOSE_WAIT", 1.0, "after our close frame, how long to wait "
                                "for the peer's", group="lifetimes", minimum=0)
    task_restart_delay: float = setting("TASK_RESTART_DELAY", 0.5, "first back-off of a "
                                        "background task restarted after a failure (doubles to "
                                        "30 s)", group="lifetimes", minimum=0)
    # ---- operations
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG shows tracebacks of start-up errors",
                             group="operations")
    log_format: str = setting("LOG_FORMAT", "auto", "`text`, `json`, or `auto` (text on a "
                              "terminal, JSON otherwise)", group="operations")
    malloc_trim_interval: float = setting(
        "MALLOC_TRIM_INTERVAL", 60.0, "seconds between handing the C heap's free pages back "
        "to the system (glibc `malloc_trim`; 0: never)", group="operations", minimum=0)
    # derived, not read from the environment: no PostgreSQL and no Redis configured
    embedded: bool = True

    # ------------------------------------------------------------------ building

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (the seed's names are honoured).

        Raises ConfigError for a malformed value, an unsafe secret outside embedded mode, or
        a URL of the wrong kind.
        """
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in _fields():
            raw = env.get(f.metadata["env"])
            # an empty variable is unset, except for lists (STUN_URLS="" means no STUN)
            if raw is not None and (raw != "" or hints[f.name] == tuple[str, ...]):
                values[f.name] = _parse(f.metadata["env"], hints[f.name], raw)
        if "database_url" not in values and env.get("DB_HOST"):
            user = quote(env.get("DB_USER", "postgres"), safe="")
            password = quote(env.get("DB_PASSWORD", "postgres"), safe="")
            port = _parse("DB_PORT", int, env.get("DB_PORT") or "5432")
            values["database_url"] = (f"postgresql://{user}:{password}@{env['DB_HOST']}:{port}/"
                                      f"{env.get('DB_NAME', 'chatapp')}")
        if "redis_url" not in values and env.get("REDIS_HOST"):
            port = _parse("REDIS_PORT", int, env.get("REDIS_PORT") or "6379")
            values["redis_url"] = f"redis://{env['REDIS_HOST']}:{port}/0"
        values["embedded"] = not values.get("database_url") and not values.get("redis_url")
        if (values.get("redis_url") or "").startswith("redis+cluster://"):
            values["redis_cluster"] = True
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every rule a usable configuration follows. Raises ConfigError."""
        for f in _fields():
            minimum = f.metadata["minimum"]
            value = getattr(self, f.name)
            if minimum is not None and value < minimum:
                raise ConfigError(f"{f.metadata['env']} must be at least {minimum:g}, "
                                  f"got {value:g}")
        if self.http_port > 65535 or self.grpc_port > 65535:
            raise ConfigError("HTTP_PORT and GRPC_PORT must be at most 65535")
        if self.database_url and not self.database_url.startswith(POSTGRES_SCHEMES):
            scheme = self.database_url.partition("://")[0] or self.database_url[:12]
            raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {scheme}://… "
                              "(unset it to use the embedded SQLite)")
        if self.redis_url and not self.redis_url.startswith(REDIS_SCHEMES):
            scheme = self.redis_url.partition("://")[0]
            raise ConfigError(f"REDIS_URL must be a redis://, rediss://, unix:// or "
                              f"redis+cluster:// URL, got {scheme}://…")
        if self.history_default_limit > self.history_max_limit:
            raise ConfigError("HISTORY_DEFAULT_LIMIT must not exceed HISTORY_MAX_LIMIT")
        if self.search_default_limit > self.search_max_limit:
            raise ConfigError("SEARCH_DEFAULT_LIMIT must not exceed SEARCH_MAX_LIMIT")
        if self.log_format not in ("auto", "text", "json"):
            raise ConfigError(f"LOG_FORMAT must be auto, text or json, got {self.log_format!r}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"TRUSTED_PROXIES: {proxy!r} is not an address or CIDR"
                                  ) from None
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS_ORIGINS: {origin!r} must be like https://chat.example")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got "
                              f"{self.log_level!r}")
        if self.s3_endpoint and not (self.s3_endpoint.startswith(("http://", "https://"))
                                     and self.s3_bucket and self.s3_access_key
                                     and self.s3_secret_key):
            raise ConfigError("S3_ENDPOINT must be an http(s):// URL and needs S3_BUCKET, "
                              "S3_ACCESS_KEY and S3_SECRET_KEY")
        self.check_ice()
        self.check_push()
        self.check_secret()
        self.check_cluster()

    def check_ice(self) -> None:
        """STUN/TURN URLs as browsers take them (RFC 7064, RFC 7065): a malformed one (say
        an unexpanded `${TURN_URLS:-}` from a compose file) would be handed to every
        client. TURN needs its secret and the secret its URLs."""
        for env, urls, pattern, shape in (
                ("STUN_URLS", self.stun_urls, _STUN_URL, "stun:host[:port]"),
                ("TURN_URLS", self.turn_urls, _TURN_URL,
                 "turn:host[:port][?transport=udp|tcp]")):
            for url in urls:
                m = pattern.fullmatch(url)
                if m is None or not 0 < int(m["port"] or 1) <= 65535:
                    raise ConfigError(f"{env}: {url!r} is not {shape}")
        if bool(self.turn_urls) != bool(self.turn_secret):
            raise ConfigError("TURN_URLS and TURN_SECRET go together: set both (TURN "
                              "credentials are minted from the secret) or neither")

    def check_push(self) -> None:
        """The VAPID key parses, its subject and the webhook are URLs of the right kind."""
        if not self.vapid_subject.startswith(("mailto:", "https://")):
            raise ConfigError(f"VAPID_SUBJECT must be a mailto: or https:// URL, got "
                              f"{self.vapid_subject!r}")
        if self.push_webhook_url and not self.push_webhook_url.startswith(("http://",
                                                                           "https://")):
            raise ConfigError("PUSH_WEBHOOK_URL must be an http:// or https:// URL")
        if self.vapid_private_key:
            from chatsrv.adapters.push.webpush import VapidKey

            try:
                VapidKey.from_text(self.vapid_private_key, self.vapid_subject)
            except ValueError as exc:
                raise ConfigError(f"VAPID_PRIVATE_KEY: {exc}") from None

    def check_cluster(self) -> None:
        """Cluster mode (REDIS_URL) needs the nodes' shared PostgreSQL, and a node TTL that
        outlives several heartbeats (else live nodes are taken for dead)."""
        if not self.redis_url:
            return
        if not self.database_url:
            raise ConfigError("REDIS_URL (cluster mode) needs DATABASE_URL: the nodes must "
                              "share one PostgreSQL; SQLite is for a single node only")
        if self.node_ttl < 2 * self.node_heartbeat_interval:
            raise ConfigError(f"NODE_TTL ({self.node_ttl:g}s) must be at least twice "
                              f"NODE_HEARTBEAT_INTERVAL ({self.node_heartbeat_interval:g}s)")

    def check_secret(self) -> None:
        """Outside embedded mode, refuse the seed's default or a short secret."""
        if self.embedded:
            return
        if not self.jwt_secret:
            raise ConfigError("JWT_SECRET is required when DATABASE_URL or REDIS_URL is set")
        if self.jwt_secret == SEED_DEFAULT_SECRET:
            raise ConfigError("JWT_SECRET is the published default; set a random secret")
        if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")

    def with_embedded_secret(self) -> Settings:
        """In embedded mode, use a random secret kept in the data dir (made on first run).

        A weak JWT_SECRET is ignored there: the first run must need no configuration and
        still be safe. Does blocking file I/O: call before the event loop starts.
        """
        if not self.embedded:
            return self
        strong = self.jwt_secret and self.jwt_secret != SEED_DEFAULT_SECRET and (
            len(self.jwt_secret.encode()) >= MIN_SECRET_BYTES
        )
        if strong:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "jwt_secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return dataclasses.replace(self, jwt_secret=path.read_text().strip())

    # ------------------------------------------------------------------ views

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "chatsrv.sqlite3"

    def masked(self) -> dict[str, object]:
        """The effective configuration with secrets and passwords masked."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("database_url", "redis_url") and value:
                value = _mask_url(value)
            elif f.metadata.get("secret"):
                value = "***" if value else ""
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["storage"] = "postgresql" if self.database_url else f"sqlite:{self.sqlite_path}"
        out["mode"] = "cluster" if self.redis_url else "single-node"
        return out


def from_overrides(base: Settings, env: Mapping[str, str]) -> Settings:
    """`base` with some settings given as environment variables (e.g. a load test's)."""
    hints = typing.get_type_hints(Settings)
    by_env = {f.metadata["env"]: f.name for f in _fields()}
    return dataclasses.replace(base, **{by_env[k]: _parse(k, hints[by_env[k]], v)
                                        for k, v in env.items()})


def _fields() -> Iterator[dataclasses.Field[Any]]:
    return (f for f in dataclasses.fields(Settings) if "env" in f.metadata)


def _parse(name: str, kind: Any, raw: str) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        if kind is Path:
            return Path(raw)
        if kind == tuple[str, ...]:
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        what = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "valid")
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    return raw


def markdown_table() -> str:
    """The README's configuration table, one row per setting, grouped."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for f in _fields():
        default = f.metadata["shown"] or f.default
        if isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, tuple):
            default = ",".join(default) or "—"
        elif default is None or default == "":
            default = "—"
        lines.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    return "\n".join(lines)


def _mask_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
