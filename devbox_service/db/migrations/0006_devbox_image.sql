-- The image a devbox descends from, for `refs.image_id`.
ALTER TABLE devboxes ADD COLUMN image_id TEXT;
