"""Composition root, building half: open_services(settings) builds the node's Services
(storage, routing, every service and the node's supervised background tasks); app.py serves
them."""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from chatsrv.adapters.aio import contain_asyncio_errors
from chatsrv.adapters.blobs import open_blob_store
from chatsrv.adapters.heap import HeapTrimmer
from chatsrv.adapters.memory import LOCAL_INSTANCE, LocalDirectory, LocalRouter, NoBus
from chatsrv.adapters.push.http import PushHttp, open_push_http
from chatsrv.adapters.push.webpush import VapidKey
from chatsrv.adapters.storage.base import Database
from chatsrv.adapters.storage.blocks import SqlBlocks
from chatsrv.adapters.storage.calls import SqlCallLog
from chatsrv.adapters.storage.changes import SqlChanges
from chatsrv.adapters.storage.migrate import migrate
from chatsrv.adapters.storage.push import SqlPushStore
from chatsrv.adapters.storage.search import SqlSearchIndex
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.adapters.storage.uploads import SqlUploadStore
from chatsrv.config import Settings
from chatsrv.domain.model import CallSignal
from chatsrv.domain.ports import BlobStore, CallBus, Directory, Router
from chatsrv.metrics import Metrics
from chatsrv.services.auth import AdminService, AuthService
from chatsrv.services.batching import Coalescer
from chatsrv.services.calls import CallService
from chatsrv.services.changes import ChangeService
from chatsrv.services.commit import GroupCommitter
from chatsrv.services.container import Services
from chatsrv.services.conversations import ConversationService
from chatsrv.services.limits import Limiter, LocalLimiter, RateLimits
from chatsrv.services.membership import MembershipCache
from chatsrv.services.messaging import MessagingService
from chatsrv.services.presence import PresenceService
from chatsrv.services.privacy import PrivacyCache, PrivacyService
from chatsrv.services.push import PushService
from chatsrv.services.search import SearchService
from chatsrv.services.sessions import SessionRegistry
from chatsrv.services.uploads import UploadLimits, UploadService, UrlSigner
from chatsrv.tasks import live_tasks, open_background, supervised

log = logging.getLogger("chatsrv")


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """PostgreSQL when configured (needs the trio-asyncio loop), else SQLite in data_dir."""
    if settings.database_url:
        from chatsrv.adapters.storage.postgres import open_postgres

        async with open_postgres(settings.database_url, pool_size=settings.db_pool_size,
                                 command_timeout=settings.db_timeout,
                                 retry_deadline=settings.connect_retry_deadline) as db:
            yield db
    else:
        from chatsrv.adapters.storage.sqlite import open_sqlite

        async with open_sqlite(settings.sqlite_path, op_deadline=settings.db_timeout) as db:
            yield db


@dataclass(frozen=True, slots=True)
class Routing:
    router: Router
    directory: Directory
    # calls across nodes: signals out (the cluster router) and in (from the node servicer);
    # `signals_in` is kept so the inbox stays open
    bus: CallBus
    signals: trio.MemoryReceiveChannel[CallSignal]
    signals_in: trio.MemorySendChannel[CallSignal]
    instance: str
    # cluster only: the task that turns the users of a node that stopped heartbeating offline
    watch_nodes: Callable[..., Awaitable[None]] | None = None
    # cluster only: registers who announces users back online after this node was reaped
    on_users_back: Callable[[Callable[[list[str]], Awaitable[None]]], None] | None = None
    # rate-limit buckets: this node's, or the cluster's on Redis
    limiter: Limiter = field(default_factory=LocalLimiter)


@asynccontextmanager
async def open_routing(settings: Settings, metrics: Metrics) -> AsyncIterator[Routing]:
    """In-memory router and directory (single node), or with REDIS_URL the cluster ones:
    the node-to-node gRPC server, links to the other nodes, and the Redis directory.
    Cluster mode needs PostgreSQL (ConfigError otherwise) and the trio-asyncio loop."""
    local = LocalRouter()
    # call signals from other nodes; full (a flood), a signal is dropped and counted
    signals_in, signals = trio.open_memory_channel[CallSignal](settings.peer_queue_size)
    if not settings.redis_url:
        local.register_metrics(metrics)
        yield Routing(local, LocalDirectory(), NoBus(), signals, signals_in, LOCAL_INSTANCE)
        return
    settings.check_cluster()
    from chatsrv.adapters.cluster.node_rpc import serve_node_rpc
    from chatsrv.adapters.cluster.peers import open_cluster_router
    from chatsrv.adapters.cluster.redis import open_redis_directory
    from chatsrv.adapters.cluster.redis_client import open_redis
    from chatsrv.adapters.cluster.redis_limits import RedisLimiter

    failures = metrics.task_failures
    async with open_redis(settings) as redis, open_background() as nursery:
        address = await nursery.start(partial(
            serve_node_rpc, local, signals_in, settings,
            counters=metrics.sources.setdefault("node_rpc_dropped", Counter())))
        # exit order: leave the cluster, flush what is queued for the others, stop serving
        async with open_cluster_router(settings, local, failures=failures) as router, \
                open_redis_directory(redis, settings, router, address=address,
                                     failures=failures) as directory:
            router.register_metrics(metrics)
            directory.register_metrics(metrics)
            yield Routing(router, directory, router, signals, signals_in, router.instance,
                          directory.watch_nodes, directory.on_users_back,
                          RedisLimiter(redis, prefix=settings.redis_prefix,
                                       timeout=settings.redis_timeout))


@asynccontextmanager
async def open_push(settings: Settings) -> AsyncIterator[PushHttp]:
    """The VAPID key (VAPID_PRIVATE_KEY, else kept in the data directory, made on first
    run, mode 0600) and the node's HTTP client for push services."""
    if settings.vapid_private_key:
        vapid = VapidKey.from_text(settings.vapid_private_key, settings.vapid_subject)
    else:
        if settings.redis_url:
            log.warning("VAPID_PRIVATE_KEY unset in cluster mode: this node uses its own key "
                        "from %s; push subscriptions made through another node fail here. "
                        "Set VAPID_PRIVATE_KEY on every node", settings.data_dir)
        vapid = await trio.to_thread.run_sync(
            VapidKey.load_or_create, settings.data_dir / "vapid_private_key.pem",
            settings.vapid_subject)
    async with open_push_http(vapid, backstop=2 * settings.push_http_timeout,
                              close_deadline=settings.cleanup_deadline) as client:
        yield client


def build_push(settings: Settings, store: SqlStore, db: Database, members: MembershipCache,
               routing: Routing, client: PushHttp, privacy: PrivacyCache) -> PushService:
    return PushService(
        SqlPushStore(db), store, members, routing.router, routing.directory, client,
        public_key=client.vapid.public_key, delay=settings.push_delay,
        redact=settings.push_redact_content, webhook_url=settings.push_webhook_url,
        allow_insecure=settings.push_allow_insecure, ttl=settings.push_ttl,
        http_timeout=settings.push_http_timeout, max_attempts=settings.push_max_attempts,
        retry_delay=settings.push_retry_delay, retry_max_delay=settings.push_retry_max_delay,
        poll_interval=settings.push_poll_interval, concurrency=settings.push_concurrency,
        queue_size=settings.push_queue_size,
        max_subscriptions=settings.push_max_subscriptions, privacy=privacy)


def build_auth(store: SqlStore, settings: Settings, *,
               limiter: Limiter | None = None
               ) -> tuple[AuthService, SessionRegistry, RateLimits]:
    """Accounts and sessions (also for the command line, which has no other services)."""
    sessions = SessionRegistry(store, poll_interval=settings.session_poll_interval,
                               remember=settings.access_token_ttl)
    limits = RateLimits(
        limiter or LocalLimiter(),
        login_failures_per_minute=settings.login_failures_per_minute,
        registrations_per_minute=settings.registrations_per_minute,
        refreshes_per_minute=settings.refreshes_per_minute,
        address_rate=settings.address_rate_per_second, address_burst=settings.address_rate_burst,
        user_rate=settings.rest_rate_per_second, user_burst=settings.rest_rate_burst,
        expensive_per_minute=settings.expensive_per_minute)
    auth = AuthService(store, sessions, limits, secret=settings.jwt_secret,
                       access_ttl=settings.access_token_ttl,
                       refresh_ttl=settings.refresh_token_ttl,
                       bcrypt_rounds=settings.bcrypt_rounds,
                       bcrypt_concurrency=settings.bcrypt_concurrency,
                       bcrypt_queue=settings.bcrypt_queue,
                       allow_registration=settings.allow_registration)
    return auth, sessions, limits


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Own storage, the node's background tasks and every service for the block.

    Migrations run first. Leaving the block cancels the background tasks (presence marks
    everyone offline, shielded and bounded) and closes storage.
    """
    metrics = Metrics()
    contain_asyncio_errors(metrics.task_failures)
    async with open_database(settings) as db, open_routing(settings, metrics) as routing, \
            open_blob_store(settings) as blobs, open_push(settings) as push_client:
        applied = await migrate(db)
        if applied:
            log.info("migrations applied: %s", ", ".join(applied))
        store = SqlStore(db)
        router, directory = routing.router, routing.directory
        members = MembershipCache(store, ttl=settings.member_cache_ttl,
                                  notify=directory.members_changed,
                                  confirmed=lambda: directory.confirmed)
        directory.on_members_changed(members.invalidate)
        blocks = SqlBlocks(db)
        privacy_cache = PrivacyCache(blocks, ttl=settings.member_cache_ttl,
                                     notify=directory.privacy_changed,
                                     confirmed=lambda: directory.confirmed)
        directory.on_privacy_changed(privacy_cache.invalidate)
        auth, sessions, limits = build_auth(store, settings, limiter=routing.limiter)
        sessions.publish_with(directory.sessions_revoked)
        directory.on_sessions_revoked(sessions.apply)
        # SQLite has one writer anyway (its write lock)
        commits = GroupCommitter(store, metrics, max_batch=settings.commit_batch,
                                 queue_size=settings.commit_queue_size,
                                 writers=settings.db_writers if settings.database_url else 1)
        presence = PresenceService(store, router, directory, grace=settings.presence_grace,
                                   cleanup_deadline=settings.cleanup_deadline,
                                   privacy=privacy_cache)
        if routing.on_users_back is not None:
            routing.on_users_back(presence.users_back)
        uploads = build_uploads(SqlUploadStore(db), blobs, settings)
        if settings.redis_url and not settings.s3_endpoint:
            log.warning("cluster mode with uploads on local disk: every node must see the "
                        "same %s (a shared volume), or set S3_ENDPOINT",
                        settings.data_dir / "blobs")
        changes = ChangeService(store, SqlChanges(db), router, members,
                                max_content_chars=settings.max_content_chars,
                                edit_window=settings.edit_window,
                                page_size=settings.sync_page_size,
                                release=uploads.release_attachments)
        conversations = ConversationService(
            store, router, members, statuses=presence.statuses,
            max_group_members=settings.max_group_members, changes=changes,
            privacy=privacy_cache, seen=presence.seen)
        messaging = MessagingService(store, router, members, commits, uploads=uploads,
                                     max_content_chars=settings.max_content_chars,
                                     history_max_limit=settings.history_max_limit,
                                     history_default_limit=settings.history_default_limit,
                                     sync_page_size=settings.sync_page_size, changes=changes,
                                     privacy=privacy_cache)
        calls = CallService(store, SqlCallLog(db), router, directory, routing.bus,
                            routing.signals, instance=routing.instance,
                            ring_timeout=settings.ring_timeout, stun_urls=settings.stun_urls,
                            turn_urls=settings.turn_urls, turn_secret=settings.turn_secret,
                            turn_ttl=settings.turn_ttl, record_deadline=settings.cleanup_deadline,
                            privacy=privacy_cache)
        svc = Services(
            settings=settings, store=store, router=router, members=members,
            auth=auth, sessions=sessions, admin=AdminService(store, auth), limits=limits,
            conversations=conversations, messaging=messaging, presence=presence,
            changes=changes, commits=commits, arrivals=Coalescer(store.arrivals, max_batch=settings.commit_batch),
            calls=calls, metrics=metrics, uploads=uploads,
            privacy=PrivacyService(store.get_user, blocks, privacy_cache, presence, router),
            privacy_cache=privacy_cache,
            push=build_push(settings, store, db, members, routing, push_client, privacy_cache),
            search=SearchService(SqlSearchIndex(db), members,
                                 default_limit=settings.search_default_limit,
                                 max_limit=settings.search_max_limit,
                                 present=messaging.present),
        )
        push = svc.push
        assert push is not None

        async def announce(message: Any, origin: Any) -> None:
            push.notify_nowait(message)  # never blocks; the enqueue task decides who
            await svc.messaging.announce(message, origin)

        _gauges(metrics, svc)
        supervise = partial(supervised, failures=metrics.task_failures,
                            first_delay=settings.task_restart_delay)
        async with open_background() as nursery:
            await nursery.start(supervise, "presence", presence.run)
            await nursery.start(supervise, "sessions", sessions.run)
            await nursery.start(supervise, "calls", calls.run)
            await nursery.start(supervise, "arrivals", svc.arrivals.run)
            await nursery.start(supervise, "upload-sweep", uploads.run)
            await nursery.start(supervise, "push-enqueue", push.run_enqueue)
            await nursery.start(supervise, "push-sender", push.run_sender)
            heap = HeapTrimmer(settings.malloc_trim_interval)
            if heap.available:
                metrics.counter("heap_trims", "malloc_trim runs (adapters/heap.py)",
                                lambda: heap.trims)
                metrics.counter("heap_trim_seconds", "time the loop spent in malloc_trim",
                                lambda: heap.trim_seconds)
                await nursery.start(supervise, "heap-trim", heap.run)
            if routing.watch_nodes is not None:
                await nursery.start(supervise, "node-watch", routing.watch_nodes,
                                    presence.node_lost)
            for lane in range(commits.lanes):
                await nursery.start(supervise, f"commit-lane-{lane}", commits.run_lane, lane,
                                    announce)
            yield svc


def build_uploads(store: SqlUploadStore, blobs: BlobStore, settings: Settings) -> UploadService:
    """Uploads: records in the database, bytes in `blobs`, temp files in the data dir."""
    limits = UploadLimits(
        max_bytes=settings.max_upload_bytes, quota_bytes=settings.upload_quota_bytes,
        max_attachments=settings.max_attachments, thumbnail_px=settings.thumbnail_px,
        max_pixels=settings.max_image_pixels, image_timeout=settings.image_timeout,
        read_timeout=settings.upload_read_timeout, url_ttl=settings.download_url_ttl,
        orphan_ttl=settings.upload_orphan_ttl, sweep_interval=settings.upload_sweep_interval,
        op_timeout=settings.db_timeout)
    return UploadService(store, blobs, tmp_dir=settings.data_dir / "uploads-tmp",
                         limits=limits,
                         signer=UrlSigner(settings.jwt_secret.encode() or secrets.token_bytes(32),
                                          settings.download_url_ttl),
                         redirect=settings.s3_redirect,
                         strip_metadata=settings.upload_strip_metadata)


def _gauges(metrics: Metrics, svc: Services) -> None:
    commits = svc.commits
    metrics.gauge("calls_active", "calls ringing or in progress", svc.calls.active_calls)
    metrics.gauge("tasks", "Trio tasks alive in this process (flat under a steady load)",
                  live_tasks)
    metrics.gauge("sessions_cached", "sessions seen alive, cached", svc.sessions.live_count)
    metrics.counter("commit_batches", "group-commit batches", lambda: commits.batches)
    metrics.counter("commit_messages", "messages in group-commit batches",
                    lambda: commits.batched)
    metrics.counter("commit_failed_batches", "batches that failed for an unforeseen reason",
                    lambda: commits.failed_batches)
    if svc.push is not None:
        counts = svc.push.counts
        for kind, meaning in (("queued", "push outbox rows written"),
                              ("sent", "pushes the push service or webhook took"),
                              ("gone", "pushes answered 404/410 (subscription deleted)"),
                              ("retry", "push attempts to retry (429, 5xx, no answer)"),
                              ("given_up", "pushes dropped after PUSH_MAX_ATTEMPTS or refused"),
                              ("skipped_online", "pushes not sent: the user came online"),
                              ("dropped", "pushes lost: the outbox queue was full")):
            metrics.counter(f"push_{kind}", meaning, lambda k=kind: counts[k])  # type: ignore[misc]
