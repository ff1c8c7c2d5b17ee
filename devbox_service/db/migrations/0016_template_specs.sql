-- Parsed template specs: the YAML is parsed once, when it is written, and the parsed steps are
-- kept here as JSON (msgspec's encoding of the spec's Structs), so listing templates, showing
-- one and the share page read them back without parsing YAML (seconds of CPU for a large spec).
-- NULL for rows written before this column: the first read parses the YAML once and fills it.
ALTER TABLE templates ADD COLUMN spec_json TEXT;
