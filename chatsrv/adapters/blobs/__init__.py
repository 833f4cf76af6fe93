"""Blob stores (the BlobStore port): local disk by default, S3-compatible storage with
S3_ENDPOINT. `open_blob_store(settings)` owns whichever is configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatsrv.config import Settings
from chatsrv.domain.ports import BlobStore


@asynccontextmanager
async def open_blob_store(settings: Settings) -> AsyncIterator[BlobStore]:
    """The configured store for the block (the S3 one owns an HTTP connection pool)."""
    if settings.s3_endpoint:
        from chatsrv.adapters.blobs.s3 import open_s3

        async with open_s3(endpoint=settings.s3_endpoint, bucket=settings.s3_bucket,
                           access_key=settings.s3_access_key,
                           secret_key=settings.s3_secret_key, region=settings.s3_region,
                           stall=settings.upload_read_timeout,
                           close_deadline=settings.cleanup_deadline) as s3:
            yield s3
    else:
        from chatsrv.adapters.blobs.local import LocalBlobStore

        yield LocalBlobStore(settings.data_dir / "blobs")
