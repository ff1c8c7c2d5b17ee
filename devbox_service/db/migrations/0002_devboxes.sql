-- Devboxes (records of VM instances) and their timeline.
CREATE TABLE devboxes (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES orgs(id),
    user_id          TEXT NOT NULL REFERENCES users(id),
    name             TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL,
    base_snapshot_id TEXT,
    current_save_id  TEXT,
    parent_id        TEXT,
    vcpus            INTEGER NOT NULL,
    memory_mb        INTEGER NOT NULL,
    disk_mb          INTEGER NOT NULL,
    metadata         TEXT NOT NULL DEFAULT '{}',
    error            TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE INDEX devboxes_by_org ON devboxes(org_id, created_at);

CREATE TABLE devbox_events (
    id          TEXT PRIMARY KEY,
    devbox_id   TEXT NOT NULL REFERENCES devboxes(id) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    snapshot_id TEXT,
    detail      TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL
);
CREATE INDEX devbox_events_by_devbox ON devbox_events(devbox_id, created_at);
