-- Dashboard sign-in: a browser session made from a user API key. The cookie's secret is
-- stored hashed; the session dies with its key (revoked), at expiry, or at sign-out.
CREATE TABLE web_sessions (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL UNIQUE,
    api_key_id    TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL
);
CREATE INDEX web_sessions_by_key ON web_sessions(api_key_id);
