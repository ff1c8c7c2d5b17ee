-- The order of a devbox's timeline: a sequence number of its own instead of SQLite's rowid,
-- which PostgreSQL has no equivalent of (events of one moment keep the order they were made).
CREATE TABLE devbox_events_ordered (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    devbox_id   TEXT NOT NULL REFERENCES devboxes(id) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    snapshot_id TEXT,
    detail      TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL
);
INSERT INTO devbox_events_ordered (id, devbox_id, type, snapshot_id, detail, created_at)
    SELECT id, devbox_id, type, snapshot_id, detail, created_at FROM devbox_events ORDER BY rowid;
DROP TABLE devbox_events;
ALTER TABLE devbox_events_ordered RENAME TO devbox_events;
CREATE INDEX devbox_events_by_devbox ON devbox_events(devbox_id, created_at);
