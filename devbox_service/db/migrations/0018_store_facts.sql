-- Facts about the store itself that every process using it must agree on: the fingerprint of
-- the key that seals its secrets (a replica started with another key would seal values no
-- other replica can open, and fail to open theirs).
CREATE TABLE store_facts (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  REAL NOT NULL
);
