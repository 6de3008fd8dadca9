-- Files uploaded through /v1/files (OpenAI's Files API). The bytes live in the blob store
-- (a local directory or an S3-compatible bucket) under storage_key; this table is the
-- index: owner, purpose, size, and for fine-tune datasets the checked line and token counts.

-- +goose Up
CREATE TABLE files (
    seq          BIGSERIAL   PRIMARY KEY,            -- list order and cursor position
    id           TEXT        NOT NULL UNIQUE CHECK (id ~ '^file-[A-Za-z0-9]{8,64}$'),
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename     TEXT        NOT NULL CHECK (filename <> '' AND octet_length(filename) <= 255),
    purpose      TEXT        NOT NULL CHECK (purpose IN ('fine-tune', 'batch', 'assistants', 'user_data', 'fine-tune-results', 'batch_output')),
    bytes        BIGINT      NOT NULL CHECK (bytes >= 0),
    storage_key  TEXT        NOT NULL,
    status       TEXT        NOT NULL DEFAULT 'processed' CHECK (status IN ('uploaded', 'processed', 'error')),
    -- Fine-tune datasets: examples (non-blank lines) and estimated tokens; NULL otherwise.
    lines        INTEGER     CHECK (lines >= 0),
    tokens       BIGINT      CHECK (tokens >= 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX files_user_idx ON files (user_id, seq);

-- +goose Down
DROP TABLE files;
