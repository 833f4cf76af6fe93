-- SQLite dialect of sql/postgres/006_uploads.sql (integer is 64-bit here).
-- Uploads (services/uploads.py): one row per upload; the bytes are a blob named by their
-- sha256 (adapters/blobs/), shared by uploads of the same bytes. thumbnail_sha256 is the
-- thumbnail's blob (images only). attached_at is set the first time a message carries the
-- upload; uploads still without it after UPLOAD_ORPHAN_TTL are removed.
CREATE TABLE uploads (
    id               uuid PRIMARY KEY,
    owner_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name             text NOT NULL,
    content_type     text NOT NULL,
    size             integer NOT NULL CHECK (size >= 0),
    sha256           text NOT NULL,
    width            integer,
    height           integer,
    thumbnail_sha256 text,
    created_at       timestamptz NOT NULL,
    attached_at      timestamptz
);
CREATE INDEX uploads_owner_idx ON uploads (owner_id);
CREATE INDEX uploads_sha256_idx ON uploads (sha256);
CREATE INDEX uploads_thumbnail_idx ON uploads (thumbnail_sha256) WHERE thumbnail_sha256 IS NOT NULL;
CREATE INDEX uploads_orphan_idx ON uploads (created_at) WHERE attached_at IS NULL;

-- Which messages carry which uploads, in the order the sender listed them.
CREATE TABLE message_attachments (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    upload_id  uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    PRIMARY KEY (message_id, upload_id)
);
CREATE INDEX message_attachments_upload_idx ON message_attachments (upload_id);
