-- Blocking and privacy (services/privacy.py). A row (blocker, blocked): the blocker does
-- not want to hear from the blocked user; the rules apply to the pair either way (no new
-- one_to_one, no messages into theirs, no calls, no presence, typing or receipts).
CREATE TABLE blocks (
    blocker_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
-- "who blocked me": the other direction of the pair check
CREATE INDEX blocks_blocked_idx ON blocks (blocked_id);

-- presence_visible false: shown offline to everyone else, last_seen withheld;
-- read_receipts_visible false: others see this user's reads as delivered only.
ALTER TABLE users ADD COLUMN presence_visible boolean NOT NULL DEFAULT true;
ALTER TABLE users ADD COLUMN read_receipts_visible boolean NOT NULL DEFAULT true;
