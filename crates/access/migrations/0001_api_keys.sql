-- API keys. The secret is never stored: `hash` is SHA-256 of a random
-- per-key salt followed by the secret. `id` is the public part of the
-- secret, used to find the row. Times are Unix seconds. The SQL is the
-- common subset of SQLite and PostgreSQL: one migration serves both.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT,
    scopes TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrent BIGINT,
    expires_at BIGINT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
);
