-- Sessions (one per login: the refresh-token family), admins, deactivated accounts.
-- An access token names its session (claim "sid"); a revoked session's tokens are refused
-- and its sockets closed (services/sessions.py). Nodes poll revoked_at for what others revoked.
ALTER TABLE users ADD COLUMN is_admin boolean NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN deactivated_at timestamptz;

CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_revoked_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- every refresh-token family that exists becomes a session (revoked if its family was)
INSERT INTO sessions (id, user_id, created_at, revoked_at, revoke_reason)
SELECT family_id, (array_agg(user_id))[1], now(),
       CASE WHEN max(CASE WHEN revoked THEN 1 ELSE 0 END) = 1 THEN now() END,
       CASE WHEN max(CASE WHEN revoked THEN 1 ELSE 0 END) = 1 THEN 'logout' END
FROM refresh_tokens GROUP BY family_id;
