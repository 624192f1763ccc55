-- certgit state store, schema version 3: audit rows name their subject in columns,
-- so an approval joins the plan, the action and the deploy it allowed by id.
-- Rows written before this migration keep NULLs; they hash as before (audit.py).

ALTER TABLE audit_log ADD COLUMN certificate TEXT;
ALTER TABLE audit_log ADD COLUMN target      TEXT;
ALTER TABLE audit_log ADD COLUMN plan_hash   TEXT;
ALTER TABLE audit_log ADD COLUMN action_id   TEXT;
ALTER TABLE audit_log ADD COLUMN version     INTEGER;

CREATE INDEX audit_log_plan   ON audit_log (plan_hash, action_id);
CREATE INDEX audit_log_target ON audit_log (target, certificate);
