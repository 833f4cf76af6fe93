-- Offline push (services/push.py). A subscription is one browser/device of a user
-- (endpoint unique: the same endpoint subscribed again updates its row), made in a session:
-- once that session ends (logout, password change...) the device gets no more pushes
-- until it subscribes again from a new session. The outbox holds
-- the pushes not sent yet: one row per target (a subscription, or '' for the webhook) and
-- conversation, collapsed — later messages bump `count` and `version` and replace the
-- shown message; `due_at` stays the first message's (plus PUSH_DELAY), so a busy
-- conversation still pushes. A node sending a row holds it by lease (`lease_owner`,
-- `lease_until`); an expired lease (the node died) makes it due again.
CREATE TABLE push_subscriptions (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint   text NOT NULL UNIQUE,
    p256dh     text NOT NULL,
    auth       text NOT NULL,
    session_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX push_subscriptions_user_idx ON push_subscriptions (user_id);

CREATE TABLE push_outbox (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    target          text NOT NULL,
    message_id      uuid NOT NULL,
    sender_id       uuid NOT NULL,
    sender_name     text NOT NULL,
    body            text NOT NULL,
    mentioned       boolean NOT NULL DEFAULT 0,
    count           integer NOT NULL DEFAULT 1,
    version         integer NOT NULL DEFAULT 1,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    lease_owner     text,
    lease_until     timestamptz,
    UNIQUE (user_id, conversation_id, target)
);
CREATE INDEX push_outbox_due_idx ON push_outbox (due_at);

-- PUT /api/conversations/{id}/mute: no push for the member until `until` (NULL: forever),
-- except for messages that mention them.
CREATE TABLE conversation_mutes (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    until           timestamptz,
    PRIMARY KEY (conversation_id, user_id)
);
