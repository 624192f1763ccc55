"""State store: SQLite (WAL) with numbered migrations."""
