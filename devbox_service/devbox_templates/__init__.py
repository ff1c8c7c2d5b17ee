"""Devbox templates: YAML specs built into cached step snapshots, and devboxes started from
them (the top-level `templates/` folder is the Jinja pages, not this)."""
