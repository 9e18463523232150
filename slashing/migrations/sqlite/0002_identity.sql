-- ensign slashing protection, SQLite schema v2: the database's identity and how its last
-- session ended (see src/history_guard.rs). The identity is random and also written to the
-- `<database>-id` marker beside the file; clean_shutdown is 0 while a session runs, 1 after a
-- clean close, NULL when unknown (a database from before v2).

CREATE TABLE store_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    database_id TEXT NOT NULL CHECK (length(database_id) = 32),
    clean_shutdown INTEGER CHECK (clean_shutdown IN (0, 1))
);
INSERT INTO store_identity (id, database_id, clean_shutdown)
VALUES (1, lower(hex(randomblob(16))), NULL);
