"""Settings: every port, URL, timeout, limit and queue size, read once from the environment."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SEED_DEFAULT_SECRET = "change-in-production"
MIN_SECRET_BYTES = 32


class ConfigError(Exception):
    """The configuration cannot be used; the message says which variable and why."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    # network
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9090
    # backends: no database_url -> SQLite in data_dir; no redis_url -> single node
    database_url: str | None = None
    redis_url: str | None = None
    node_id: str = "node-1"
    node_address: str | None = None  # how peers reach this node's gRPC port (host:port)
    data_dir: Path = Path("data")
    # auth
    jwt_secret: str = field(default="", repr=False)
    access_token_ttl: float = 3600.0
    refresh_token_ttl: float = 30 * 24 * 3600.0
    bcrypt_rounds: int = 12
    # limits
    max_body_bytes: int = 64 * 1024
    max_frame_bytes: int = 64 * 1024
    max_content_chars: int = 4000
    history_max_limit: int = 100
    history_default_limit: int = 50
    sync_page_size: int = 200
    max_group_members: int = 5000
    # realtime
    outbox_size: int = 512  # frames queued per connection before it is evicted (it will resync)
    heartbeat_interval: float = 25.0
    heartbeat_timeout: float = 60.0
    typing_ttl: float = 6.0
    presence_grace: float = 2.0
    rate_per_second: float = 30.0
    rate_burst: float = 60.0
    # calls
    ring_timeout: float = 45.0
    stun_urls: tuple[str, ...] = ("stun:stun.l.google.com:19302",)
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = field(default="", repr=False)
    turn_ttl: float = 3600.0
    # cluster
    node_heartbeat_interval: float = 5.0
    node_ttl: float = 15.0
    redis_prefix: str = "chatsrv"  # namespace of every Redis key and channel of this cluster
    redis_timeout: float = 5.0  # one Redis round trip; slower counts as Redis unavailable
    peer_queue_size: int = 4096  # events queued per remote node before they are dropped
    peer_batch_size: int = 256  # events per node-to-node RPC at most
    peer_batch_linger: float = 0.002  # how long a batch waits for more events
    peer_rpc_timeout: float = 5.0  # one node-to-node RPC; slower drops the batch
    # lifetimes
    db_timeout: float = 10.0
    db_pool_size: int = 10
    # group-commit lanes on PostgreSQL: batches of different conversations commit
    # concurrently; one conversation stays on one lane, in order (services/commit.py)
    db_writers: int = 4
    commit_batch: int = 128  # messages per group-commit transaction at most
    connect_retry_deadline: float = 60.0
    shutdown_deadline: float = 10.0
    # After SIGTERM (WebSockets are closed at once with 1001), in-flight HTTP requests get
    # this long. Hypercorn keeps each closed WebSocket's ping task until its next ping
    # (up to heartbeat_interval), so waiting for "all connections gone" would take that long.
    drain_timeout: float = 2.0
    embedded: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (the seed's names are honoured).

        Raises ConfigError for a malformed value or an unsafe secret outside embedded mode.
        """
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL") or None
        if database_url is None and env.get("DB_HOST"):
            user = quote(env.get("DB_USER", "postgres"), safe="")
            password = quote(env.get("DB_PASSWORD", "postgres"), safe="")
            database_url = (
                f"postgresql://{user}:{password}@{env['DB_HOST']}:"
                f"{_int(env, 'DB_PORT', 5432)}/{env.get('DB_NAME', 'chatapp')}"
            )
        redis_url = env.get("REDIS_URL") or None
        if redis_url is None and env.get("REDIS_HOST"):
            redis_url = f"redis://{env['REDIS_HOST']}:{_int(env, 'REDIS_PORT', 6379)}/0"
        embedded = database_url is None and redis_url is None
        data_dir = Path(env.get("CHATSRV_DATA_DIR", "data"))
        settings = cls(
            http_host=env.get("HTTP_HOST", cls.http_host),
            http_port=_int(env, "HTTP_PORT", cls.http_port),
            grpc_host=env.get("GRPC_HOST", cls.grpc_host),
            grpc_port=_int(env, "GRPC_PORT", cls.grpc_port),
            database_url=database_url,
            redis_url=redis_url,
            node_id=env.get("NODE_ID", cls.node_id),
            node_address=env.get("NODE_ADDRESS") or None,
            data_dir=data_dir,
            jwt_secret=env.get("JWT_SECRET", ""),
            access_token_ttl=_float(env, "ACCESS_TOKEN_TTL", cls.access_token_ttl),
            refresh_token_ttl=_float(env, "REFRESH_TOKEN_TTL", cls.refresh_token_ttl),
            bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", cls.bcrypt_rounds),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes),
            max_frame_bytes=_int(env, "MAX_FRAME_BYTES", cls.max_frame_bytes),
            max_content_chars=_int(env, "MAX_CONTENT_CHARS", cls.max_content_chars),
            history_max_limit=_int(env, "HISTORY_MAX_LIMIT", cls.history_max_limit),
            sync_page_size=_int(env, "SYNC_PAGE_SIZE", cls.sync_page_size),
            max_group_members=_int(env, "MAX_GROUP_MEMBERS", cls.max_group_members),
            outbox_size=_int(env, "WS_OUTBOX_SIZE", cls.outbox_size),
            heartbeat_interval=_float(env, "HEARTBEAT_INTERVAL", cls.heartbeat_interval),
            heartbeat_timeout=_float(env, "HEARTBEAT_TIMEOUT", cls.heartbeat_timeout),
            typing_ttl=_float(env, "TYPING_TTL", cls.typing_ttl),
            presence_grace=_float(env, "PRESENCE_GRACE", cls.presence_grace),
            rate_per_second=_float(env, "RATE_PER_SECOND", cls.rate_per_second),
            rate_burst=_float(env, "RATE_BURST", cls.rate_burst),
            ring_timeout=_float(env, "RING_TIMEOUT", cls.ring_timeout),
            stun_urls=_list(env, "STUN_URLS", cls.stun_urls),
            turn_urls=_list(env, "TURN_URLS", cls.turn_urls),
            turn_secret=env.get("TURN_SECRET", ""),
            turn_ttl=_float(env, "TURN_TTL", cls.turn_ttl),
            node_heartbeat_interval=_float(env, "NODE_HEARTBEAT_INTERVAL", cls.node_heartbeat_interval),
            node_ttl=_float(env, "NODE_TTL", cls.node_ttl),
            redis_prefix=env.get("REDIS_PREFIX") or cls.redis_prefix,
            redis_timeout=_float(env, "REDIS_TIMEOUT", cls.redis_timeout),
            peer_queue_size=_int(env, "PEER_QUEUE_SIZE", cls.peer_queue_size),
            peer_batch_size=_int(env, "PEER_BATCH_SIZE", cls.peer_batch_size),
            peer_batch_linger=_float(env, "PEER_BATCH_LINGER", cls.peer_batch_linger),
            peer_rpc_timeout=_float(env, "PEER_RPC_TIMEOUT", cls.peer_rpc_timeout),
            db_timeout=_float(env, "DB_TIMEOUT", cls.db_timeout),
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size),
            db_writers=_int(env, "DB_WRITERS", cls.db_writers),
            commit_batch=_int(env, "COMMIT_BATCH", cls.commit_batch),
            connect_retry_deadline=_float(env, "CONNECT_RETRY_DEADLINE", cls.connect_retry_deadline),
            shutdown_deadline=_float(env, "SHUTDOWN_DEADLINE", cls.shutdown_deadline),
            drain_timeout=_float(env, "DRAIN_TIMEOUT", cls.drain_timeout),
            embedded=embedded,
        )
        settings.check_secret()
        settings.check_cluster()
        return settings

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
        if self.peer_queue_size < 2 or self.peer_batch_size < 1:
            raise ConfigError("PEER_QUEUE_SIZE must be at least 2 and PEER_BATCH_SIZE at least 1")

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

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "chatsrv.sqlite3"

    def masked(self) -> dict[str, object]:
        """The effective configuration with secrets and passwords masked."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("jwt_secret", "turn_secret"):
                value = "***" if value else ""
            elif f.name in ("database_url", "redis_url") and value:
                value = _mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["storage"] = "postgresql" if self.database_url else f"sqlite:{self.sqlite_path}"
        out["mode"] = "cluster" if self.redis_url else "single-node"
        return out


def _mask_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
