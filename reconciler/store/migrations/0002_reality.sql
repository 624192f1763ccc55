-- certgit state store, schema version 2: what was written where, per-target
-- deploy history, and which plans came from Git versus an operator.

-- What the last successful deploy wrote, and with which target config.
-- files_json: [[path, role, sha256], ...]; config_json: binding_config_json().
ALTER TABLE deployments ADD COLUMN files_json TEXT;
ALTER TABLE deployments ADD COLUMN config_hash TEXT;
ALTER TABLE deployments ADD COLUMN config_json TEXT;

-- The fields a version was issued from (Certificate.issued_spec()), for field diffs.
ALTER TABLE certificate_versions ADD COLUMN spec_json TEXT;

-- Every version that went live on a target: rollback goes back along this, never
-- to a version number that was not served there.
CREATE TABLE deploy_history (
    id                   INTEGER PRIMARY KEY,
    certificate          TEXT    NOT NULL,
    target               TEXT    NOT NULL,
    version              INTEGER NOT NULL,
    fingerprint          TEXT    NOT NULL,
    replaced_version     INTEGER,
    replaced_fingerprint TEXT,
    kind                 TEXT    NOT NULL,  -- deploy | repair | rollback | remove
    actor                TEXT    NOT NULL,
    commit_id            TEXT,
    plan_hash            TEXT,
    action_id            TEXT,
    deployed_at          TEXT    NOT NULL
);
CREATE INDEX deploy_history_binding ON deploy_history (target, certificate, id);

-- 'git' plans come from the desired state; 'operator' plans from rollback.
ALTER TABLE plans ADD COLUMN origin TEXT NOT NULL DEFAULT 'git';
