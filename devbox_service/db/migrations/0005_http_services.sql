-- HTTP services a devbox exposes (preview URLs): the guest port, the host loopback port QEMU
-- forwards to it, and whether the preview needs a bearer key.
CREATE TABLE http_services (
    devbox_id   TEXT NOT NULL REFERENCES devboxes(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    host_port   INTEGER NOT NULL,
    auth_mode   TEXT NOT NULL CHECK (auth_mode IN ('none', 'api_key')),
    created_at  REAL NOT NULL,
    PRIMARY KEY (devbox_id, name)
);
