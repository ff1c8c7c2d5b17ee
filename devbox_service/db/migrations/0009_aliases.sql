-- Share links: a unique slug naming one template, visible to its organization or (when the
-- owner says so) to every user of the service.
CREATE TABLE aliases (
    alias        TEXT PRIMARY KEY,
    template_id  TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    user_id      TEXT NOT NULL REFERENCES users(id),
    description  TEXT,
    visibility   TEXT NOT NULL CHECK (visibility IN ('org', 'public')),
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX aliases_by_template ON aliases(template_id);
