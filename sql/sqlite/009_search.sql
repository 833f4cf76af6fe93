-- Full-text search of messages (adapters/storage/search.py, docs/protocol.md "Search").
--
-- An FTS5 index over messages.content as an external-content table (the text is not
-- stored twice), tokenized by unicode61 with diacritics removed ("Café" is found by
-- "cafe"). The triggers keep it in step with every INSERT, UPDATE of content (an edit; a
-- delete sets content to '', which leaves nothing to match) and DELETE, in the same
-- transaction, with no code in the application. Existing rows are indexed by 'rebuild'.
--
-- The index is keyed by the messages table's rowid. VACUUM may renumber rowids of a table
-- without an INTEGER PRIMARY KEY: after a manual VACUUM run
--   INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.rowid, new.content);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
    VALUES ('delete', old.rowid, old.content);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
    VALUES ('delete', old.rowid, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.rowid, new.content);
END;

INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
