-- Instance TTLs: after `ttl_seconds` without activity a devbox is paused or stopped
-- (`ttl_action`); activity (an API action, an SSH session, a preview request) moves
-- `ttl_expire_at` forward.
ALTER TABLE devboxes ADD COLUMN ttl_seconds INTEGER;
ALTER TABLE devboxes ADD COLUMN ttl_action TEXT CHECK (ttl_action IN ('pause', 'stop'));
ALTER TABLE devboxes ADD COLUMN ttl_expire_at REAL;
