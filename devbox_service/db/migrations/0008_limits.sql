-- Per-user and per-org limits set by an admin (`devbox-service limits set`); a NULL column
-- means "the default from the settings".
CREATE TABLE limits (
    scope       TEXT NOT NULL CHECK (scope IN ('user', 'org')),
    subject_id  TEXT NOT NULL,
    devboxes    INTEGER,
    snapshots   INTEGER,
    disk_mb     INTEGER,
    PRIMARY KEY (scope, subject_id)
);
