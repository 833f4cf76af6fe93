-- Who is in a call right now, cluster-wide: one row per user (caller and callee) while a
-- call rings or runs, owned by the node instance that owns the call. Busy and glare are
-- decided on these rows (services/calls.py); a dead owner's rows are released when it is
-- reaped, a single node's at its start.
CREATE TABLE call_claims (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    call_id    text NOT NULL,
    caller_id  uuid NOT NULL,
    callee_id  uuid NOT NULL,
    owner      text NOT NULL,
    answered   boolean NOT NULL DEFAULT false,
    claimed_at timestamptz NOT NULL
);
CREATE INDEX call_claims_call_idx ON call_claims (call_id);
CREATE INDEX call_claims_owner_idx ON call_claims (owner);
