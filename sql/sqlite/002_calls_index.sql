-- calls by conversation, for history views of a conversation
CREATE INDEX IF NOT EXISTS calls_conversation_idx ON calls (conversation_id, started_at DESC);
