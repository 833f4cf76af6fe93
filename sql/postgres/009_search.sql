-- Full-text search of messages (adapters/storage/search.py, docs/protocol.md "Search").
--
-- A text search configuration that works for any language written with spaces: `simple`
-- (no stemming, no stop words: stemming is per language and a chat mixes languages), with
-- words that are not plain ASCII passed through `unaccent` first, so "Café" is found by
-- "cafe". The vector is a generated column: PostgreSQL recomputes it on every INSERT and on
-- every UPDATE of content (an edit; a delete sets content to '', an empty vector that
-- never matches), with no code in the application. to_tsvector(regconfig, text) is
-- immutable whatever the configuration's dictionaries, so it may define a stored column.
--
-- The GIN index has fastupdate off: with the default pending list (4 MB), the insert that
-- fills it merges the whole list into the index before its own commit, a stall of seconds
-- on a busy server (matrix-org/synapse#4219). Off, each insert updates the index itself,
-- a small, steady cost (bench/RESULTS.md "Search at 1M messages").
--
-- Adding a stored column rewrites the messages table once (measured there as well).
CREATE TEXT SEARCH CONFIGURATION chatsrv_search (COPY = simple);

DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS unaccent;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'chatsrv: extension unaccent unavailable (%): search will not fold '
                      'diacritics ("cafe" will not find "café")', SQLERRM;
        RETURN;
    END;
    ALTER TEXT SEARCH CONFIGURATION chatsrv_search
        ALTER MAPPING FOR word, hword, hword_part, numword, numhword, hword_numpart
        WITH unaccent, simple;
END
$$;

-- The parser takes "<...>" for an XML tag and "&...;" for an entity and drops them ("<Café>"
-- would not be found): < > & are spaces to it here, and in queries (tsquery_of).
ALTER TABLE messages ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector('chatsrv_search'::regconfig,
                                     translate(content, '<>&', '   '))) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (search_vector)
    WITH (fastupdate = off);
