-- chatsrv schema, PostgreSQL dialect. Timestamps are timestamptz, ids uuid.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL,
    email         text NOT NULL,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen     timestamptz
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    used       boolean NOT NULL DEFAULT false,
    revoked    boolean NOT NULL DEFAULT false
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    type       text NOT NULL CHECK (type IN ('one_to_one', 'group')),
    name       text,
    created_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL,
    last_seq   bigint NOT NULL DEFAULT 0,
    -- "<smaller user id>:<larger user id>" for one_to_one: one conversation per pair
    direct_key text UNIQUE
);

CREATE TABLE conversation_members (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    delivered_seq   bigint NOT NULL DEFAULT 0,
    read_seq        bigint NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, user_id),
    CHECK (read_seq <= delivered_seq)
);
CREATE INDEX conversation_members_user_idx ON conversation_members (user_id);

CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    sender_id       uuid NOT NULL REFERENCES users (id),
    content         text NOT NULL,
    message_type    text NOT NULL DEFAULT 'text',
    client_msg_id   text,
    created_at      timestamptz NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_msg_id)
);

CREATE TABLE calls (
    -- text: clients may pick their own call ids (the seed's examples use "call_123")
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    conversation_id uuid REFERENCES conversations (id) ON DELETE SET NULL,
    caller_id       uuid NOT NULL REFERENCES users (id),
    callee_id       uuid NOT NULL REFERENCES users (id),
    media           text NOT NULL CHECK (media IN ('audio', 'video')),
    status          text NOT NULL,
    end_reason      text,
    started_at      timestamptz NOT NULL,
    answered_at     timestamptz,
    ended_at        timestamptz
);
CREATE INDEX calls_caller_idx ON calls (caller_id, started_at DESC);
CREATE INDEX calls_callee_idx ON calls (callee_id, started_at DESC);
