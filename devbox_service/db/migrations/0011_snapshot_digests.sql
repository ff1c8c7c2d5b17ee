-- The VM primitives API: a snapshot may carry a digest (what SDK users cache setup steps by:
-- the same digest in an organization returns the same snapshot) and string metadata.
ALTER TABLE snapshots ADD COLUMN digest TEXT;
ALTER TABLE snapshots ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
CREATE INDEX snapshots_by_digest ON snapshots(org_id, digest);
