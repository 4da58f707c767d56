-- One row per inference request. Times are Unix milliseconds; cache_hit
-- is 0 or 1 (the common subset of SQLite and PostgreSQL).
CREATE TABLE usage_records (
    time_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    finish_reason TEXT,
    cache_hit BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (time_ms);
CREATE INDEX usage_records_key_time ON usage_records (key_id, time_ms);
