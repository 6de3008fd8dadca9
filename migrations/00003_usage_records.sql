-- The usage ledger: one row per request, written by gateways in batches (COPY).

-- +goose Up
CREATE TABLE usage_records (
    id                BIGSERIAL PRIMARY KEY,
    request_id        TEXT        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    user_id           BIGINT,
    api_key_id        BIGINT,
    model             TEXT        NOT NULL,
    backend_id        TEXT        NOT NULL DEFAULT '',
    endpoint          TEXT        NOT NULL DEFAULT '',
    status            INTEGER     NOT NULL,
    prompt_tokens     INTEGER     NOT NULL DEFAULT 0,
    completion_tokens INTEGER     NOT NULL DEFAULT 0,
    estimated         BOOLEAN     NOT NULL DEFAULT FALSE,
    streamed          BOOLEAN     NOT NULL DEFAULT FALSE,
    ttft_ms           DOUBLE PRECISION,
    duration_ms       DOUBLE PRECISION NOT NULL DEFAULT 0,
    error_type        TEXT        NOT NULL DEFAULT ''
);
CREATE INDEX usage_records_created_at_idx ON usage_records (created_at);
CREATE INDEX usage_records_user_idx ON usage_records (user_id, created_at);
CREATE INDEX usage_records_key_idx ON usage_records (api_key_id, created_at);
CREATE INDEX usage_records_model_idx ON usage_records (model, created_at);
CREATE INDEX usage_records_request_id_idx ON usage_records (request_id);

-- +goose Down
DROP TABLE usage_records;
