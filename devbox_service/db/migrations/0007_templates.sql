-- Templates: YAML specs built into snapshots step by step. A step's snapshot is cached by its
-- fingerprint (the chain of the steps before it and its own definition), per organization,
-- so templates that share a prefix share its snapshots. Runs keep every event they sent, so a
-- client that reconnects (even after a restart) replays the whole history.
CREATE TABLE templates (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES orgs(id),
    user_id            TEXT NOT NULL REFERENCES users(id),
    name               TEXT NOT NULL,
    description        TEXT,
    yaml               TEXT NOT NULL,
    base_snapshot_id   TEXT NOT NULL,
    content_hash       TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('draft', 'caching', 'ready', 'failed')),
    final_snapshot_id  TEXT,
    run_id             TEXT,
    created_at         REAL NOT NULL,
    updated_at         REAL NOT NULL
);
CREATE INDEX templates_by_org ON templates(org_id, created_at);
CREATE INDEX templates_by_hash ON templates(content_hash);

CREATE TABLE template_runs (
    id                 TEXT PRIMARY KEY,
    template_id        TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL REFERENCES users(id),
    status             TEXT NOT NULL,
    build_devbox_id    TEXT,
    current_index      INTEGER,
    failed_index       INTEGER,
    error              TEXT,
    final_snapshot_id  TEXT,
    devbox_id          TEXT,
    created_at         REAL NOT NULL,
    finished_at        REAL
);
CREATE INDEX template_runs_by_template ON template_runs(template_id, created_at);

CREATE TABLE template_run_events (
    run_id      TEXT NOT NULL REFERENCES template_runs(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE template_step_cache (
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    fingerprint  TEXT NOT NULL,
    snapshot_id  TEXT NOT NULL,
    created_at   REAL NOT NULL,
    PRIMARY KEY (org_id, fingerprint)
);
