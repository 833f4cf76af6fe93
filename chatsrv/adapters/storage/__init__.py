"""Storage adapters: one SQL store over two drivers (PostgreSQL via triopg, SQLite)."""
