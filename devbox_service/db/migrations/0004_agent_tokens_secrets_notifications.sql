-- Devbox-scoped agent tokens (hashed), the sessions that link them to a user's secrets,
-- user secrets (sealed), notifications, and the audit log of agent-token decisions.
CREATE TABLE agent_sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  REAL NOT NULL
);

CREATE TABLE agent_tokens (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id        TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    devbox_id     TEXT NOT NULL,
    session_id    TEXT,
    scopes        TEXT NOT NULL,
    secret_names  TEXT,
    purpose       TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX agent_tokens_by_devbox ON agent_tokens(devbox_id);

CREATE TABLE user_secrets (
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    value_sealed  TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    PRIMARY KEY (user_id, name)
);

CREATE TABLE notifications (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    devbox_id   TEXT,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL DEFAULT '',
    level       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    read_at     REAL
);
CREATE INDEX notifications_by_user ON notifications(user_id, read_at, created_at);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  REAL NOT NULL,
    user_id     TEXT NOT NULL,
    devbox_id   TEXT,
    token_id    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,
    allowed     INTEGER NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_user ON audit_log(user_id, devbox_id, id);
