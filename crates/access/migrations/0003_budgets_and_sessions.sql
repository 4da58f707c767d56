-- Spending limits per key (cost units per UTC day / month; NULL: none),
-- and the dashboard's sign-in sessions: `token_hash` is SHA-256 of the
-- cookie's random token; `subject` is the key id, or `operator:` and a
-- fingerprint of the bootstrap admin key (a changed admin key ends its
-- sessions). Times are Unix seconds.
ALTER TABLE api_keys ADD COLUMN budget_daily DOUBLE PRECISION;
ALTER TABLE api_keys ADD COLUMN budget_monthly DOUBLE PRECISION;
CREATE TABLE admin_sessions (
    token_hash TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);
