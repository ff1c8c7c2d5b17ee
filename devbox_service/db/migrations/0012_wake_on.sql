-- Whether a paused devbox wakes up for an SSH connection or a request to one of its exposed
-- services (until now it always did: that stays the default).
ALTER TABLE devboxes ADD COLUMN wake_on_ssh INTEGER NOT NULL DEFAULT 1;
ALTER TABLE devboxes ADD COLUMN wake_on_http INTEGER NOT NULL DEFAULT 1;
