-- lower() is now Unicode-aware (adapters/storage/sqlite.py): rebuild the indexes built on it.
REINDEX users_username_key;
REINDEX users_email_key;
