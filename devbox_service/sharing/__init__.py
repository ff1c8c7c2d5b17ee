"""Share links for templates: aliases, their search, and the shared view of a template."""
