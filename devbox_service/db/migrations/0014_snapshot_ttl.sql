-- Snapshot TTLs: a snapshot unused for `ttl_seconds` (its last boot, digest hit or creation)
-- is reclaimed, unless something still depends on it; `ttl_waiting_for` then says what.
ALTER TABLE snapshots ADD COLUMN ttl_seconds INTEGER;
ALTER TABLE snapshots ADD COLUMN ttl_expire_at REAL;
ALTER TABLE snapshots ADD COLUMN ttl_waiting_for TEXT;
