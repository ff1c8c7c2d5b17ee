-- Disk resizes: one row per request (by devbox and Idempotency-Key), so a retried request
-- returns the same operation and a restart can settle one that was cut short.
CREATE TABLE disk_resizes (
    id                  TEXT PRIMARY KEY,
    devbox_id           TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    previous_mb         INTEGER NOT NULL,
    requested_mb        INTEGER NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    capacity_generation INTEGER NOT NULL,
    error               TEXT,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    completed_at        REAL,
    UNIQUE (devbox_id, idempotency_key)
);
