-- certgit state store, schema version 1.
-- Timestamps are ISO-8601 UTC text with microseconds (fixed width, so they sort).
-- Fingerprints are SHA-256 of the leaf DER, lowercase hex.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Every issued certificate version; the private key is AES-256-GCM sealed.
-- The blob columns come last so metadata scans never touch overflow pages.
CREATE TABLE certificate_versions (
    id          INTEGER PRIMARY KEY,
    certificate TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    fingerprint TEXT    NOT NULL UNIQUE CHECK (length(fingerprint) = 64),
    serial      TEXT    NOT NULL,
    not_before  TEXT    NOT NULL,
    not_after   TEXT    NOT NULL,
    spec_hash   TEXT    NOT NULL,
    issued_at   TEXT    NOT NULL,
    retired_at  TEXT,
    cert_pem    BLOB    NOT NULL,
    chain_pem   BLOB    NOT NULL,
    key_sealed  BLOB    NOT NULL,
    UNIQUE (certificate, version)
);
CREATE INDEX certificate_versions_expiry
    ON certificate_versions (not_after) WHERE retired_at IS NULL;

-- What is deployed per (certificate, target). fingerprint/version stay at the last
-- success while failures count up in attempts.
CREATE TABLE deployments (
    certificate              TEXT    NOT NULL,
    target                   TEXT    NOT NULL,
    fingerprint              TEXT,
    version                  INTEGER,
    updated_at               TEXT    NOT NULL,
    last_error               TEXT,
    attempts                 INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_attempt_fingerprint TEXT,
    PRIMARY KEY (certificate, target)
) WITHOUT ROWID;
CREATE INDEX deployments_target ON deployments (target);

CREATE TABLE plans (
    id           INTEGER PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    commit_id    TEXT,
    created_at   TEXT NOT NULL,
    actions_json TEXT NOT NULL
);
CREATE INDEX plans_created ON plans (created_at);

-- One row per action of a plan: the queryable form of plans.actions_json.
CREATE TABLE plan_actions (
    plan_id     INTEGER NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    action_id   TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    certificate TEXT,
    target      TEXT,
    fingerprint TEXT,
    drift       TEXT,
    reason      TEXT    NOT NULL DEFAULT '',
    gated       INTEGER NOT NULL CHECK (gated IN (0, 1)),
    PRIMARY KEY (plan_id, action_id),
    UNIQUE (plan_id, position)
);
CREATE INDEX plan_actions_binding ON plan_actions (certificate, target);

-- An approval is bound to a plan hash; action_id NULL approves the whole plan.
CREATE TABLE approvals (
    id         INTEGER PRIMARY KEY,
    plan_hash  TEXT NOT NULL REFERENCES plans (hash),
    action_id  TEXT,
    decision   TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX approvals_plan ON approvals (plan_hash);

-- Operator pins. certificate NULL holds every binding of the target; the expression
-- index makes (target, NULL) unique too, which a plain UNIQUE would not.
CREATE TABLE holds (
    id          INTEGER PRIMARY KEY,
    target      TEXT NOT NULL,
    certificate TEXT,
    fingerprint TEXT,
    reason      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX holds_binding ON holds (target, COALESCE(certificate, ''));

-- Transactional outbox: rows are inserted in the same transaction as their plan.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    plan_hash       TEXT    NOT NULL REFERENCES plans (hash),
    action_id       TEXT    NOT NULL,
    target          TEXT,
    payload_json    TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'PENDING' CHECK (state IN (
        'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'RETRY_WAIT', 'ABANDONED', 'CANCELLED'
    )),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_owner     TEXT,
    lease_until     TEXT,
    next_attempt_at TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    UNIQUE (plan_hash, action_id)
);
CREATE INDEX outbox_runnable ON outbox (state, next_attempt_at)
    WHERE state IN ('PENDING', 'RETRY_WAIT', 'RUNNING');

CREATE TABLE source_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Append-only, hash-chained audit log. audit_head holds the last seq and hash so
-- that deleting the newest row is detected as well.
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    details_json TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be updated');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be deleted');
END;

-- A new row must extend the chain exactly at the head.
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head WHERE id = 1)
  OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'audit_log insert does not extend the chain head');
END;

CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'audit_head cannot be deleted');
END;

-- The head only moves forward, one row at a time, onto a row that exists.
CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.id IS NOT OLD.id
  OR NEW.seq IS NOT OLD.seq + 1
  OR NEW.hash IS NOT (SELECT hash FROM audit_log WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_head can only advance to the newest audit_log row');
END;
