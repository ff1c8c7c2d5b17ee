-- Snapshots users saved (image boot snapshots belong to the backend, not to this table),
-- and each devbox's SSH gateway credentials: the access token is looked up by its hash,
-- both values are kept sealed (encrypted) so the owner can read them back.
CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    user_id      TEXT NOT NULL REFERENCES users(id),
    devbox_id    TEXT,
    name         TEXT NOT NULL DEFAULT '',
    kind         TEXT NOT NULL CHECK (kind IN ('save', 'branch')),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    vcpus        INTEGER NOT NULL,
    memory_mb    INTEGER NOT NULL,
    disk_mb      INTEGER NOT NULL,
    created_at   REAL NOT NULL
);
CREATE INDEX snapshots_by_org ON snapshots(org_id, created_at);

ALTER TABLE devboxes ADD COLUMN ssh_token_hash TEXT;
ALTER TABLE devboxes ADD COLUMN ssh_credentials_sealed TEXT;
CREATE UNIQUE INDEX devboxes_by_ssh_token ON devboxes(ssh_token_hash);
