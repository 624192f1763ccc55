-- certgit state store, schema version 4: the audit chain is keyed and anchored outside
-- the database. Each row says how its hash column was made: 'sha256' for the rows
-- written before this migration (they keep verifying as before and are never
-- rewritten), 'hmac-sha256' (a key derived from the master key) for every row after
-- it. The Python step of this version (audit.anchor_step) writes <state>/audit.head
-- for the chain as found, in this same transaction (audit.py explains both).

ALTER TABLE audit_log ADD COLUMN alg TEXT NOT NULL DEFAULT 'sha256'
    CHECK (alg IN ('sha256', 'hmac-sha256'));

-- From now on only keyed rows are written; the default above is for the old rows.
CREATE TRIGGER audit_log_keyed BEFORE INSERT ON audit_log
WHEN NEW.alg IS NOT 'hmac-sha256'
BEGIN
    SELECT RAISE(ABORT, 'audit_log insert is not keyed: new rows are hmac-sha256');
END;
