-- Message changes (issue 14): edits, deletes, reactions, replies, mentions, and the log
-- of changes a device that was offline catches up from (sync changes_since).
ALTER TABLE messages ADD COLUMN edited_at timestamptz;
ALTER TABLE messages ADD COLUMN deleted_at timestamptz;
ALTER TABLE messages ADD COLUMN deleted_by uuid REFERENCES users (id);
ALTER TABLE messages ADD COLUMN reply_to uuid REFERENCES messages (id);
-- user ids of the members named @username, as a JSON array of strings (one text column
-- reads the same on both backends; mentions_unread matches it with LIKE over the unread
-- range of a conversation only, a range of the (conversation_id, seq) index)
ALTER TABLE messages ADD COLUMN mentions text NOT NULL DEFAULT '[]';

CREATE TABLE reactions (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    emoji      text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- The change log. Ids come from the one row of change_clock, taken with
-- UPDATE ... RETURNING in the transaction of the change: the row lock is held until that
-- transaction commits, so ids become visible in id order (a sequence could commit 11
-- before 10, and a reader at cursor 11 would never see 10). A change supersedes the
-- earlier rows of its message that it makes stale (an edit the earlier edits, a delete
-- everything of the message): no old content lingers in the log.
CREATE TABLE change_clock (
    id      integer PRIMARY KEY CHECK (id = 1),
    last_id integer NOT NULL
);
INSERT INTO change_clock (id, last_id) VALUES (1, 0);

CREATE TABLE message_changes (
    id              integer PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id      uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    type            text NOT NULL CHECK (type IN ('message_edited', 'message_deleted',
                                                  'reaction_update')),
    -- the frame's payload as JSON, as it was sent live
    payload         text NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX message_changes_conversation_idx ON message_changes (conversation_id, id);
CREATE INDEX message_changes_message_idx ON message_changes (message_id);
