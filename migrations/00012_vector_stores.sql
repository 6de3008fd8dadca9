-- Knowledge bases: OpenAI's vector stores (/v1/vector_stores), the files attached to them,
-- file batches, and the chunks' text with a full-text vector for hybrid search. Vectors
-- live in the vector index (vector_index_* with the embedded index, or Milvus).

-- +goose Up
CREATE TABLE vector_stores (
    seq                 BIGSERIAL   PRIMARY KEY,            -- list order and cursor position
    id                  TEXT        NOT NULL UNIQUE CHECK (id ~ '^vs_[A-Za-z0-9]{8,64}$'),
    user_id             BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                TEXT        NOT NULL DEFAULT '' CHECK (octet_length(name) <= 256),
    embedding_model     TEXT        NOT NULL,
    metadata            JSONB       NOT NULL DEFAULT '{}',
    expires_after_days  INTEGER     CHECK (expires_after_days BETWEEN 1 AND 365),
    last_active_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX vector_stores_user_idx ON vector_stores (user_id, seq);

CREATE TABLE vector_store_file_batches (
    seq         BIGSERIAL   PRIMARY KEY,
    id          TEXT        NOT NULL UNIQUE,
    store_id    TEXT        NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    cancelled   BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE vector_store_files (
    seq                BIGSERIAL   PRIMARY KEY,
    store_id           TEXT        NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id            TEXT        NOT NULL,           -- a /v1/files id (not a foreign key: the file may go first)
    filename           TEXT        NOT NULL DEFAULT '',
    batch_id           TEXT        REFERENCES vector_store_file_batches (id) ON DELETE SET NULL,
    status             TEXT        NOT NULL DEFAULT 'in_progress'
                                   CHECK (status IN ('in_progress', 'completed', 'cancelled', 'failed')),
    last_error_code    TEXT,
    last_error_message TEXT,
    attributes         JSONB       NOT NULL DEFAULT '{}',
    max_chunk_tokens   INTEGER     NOT NULL,
    overlap_tokens     INTEGER     NOT NULL,
    usage_bytes        BIGINT      NOT NULL DEFAULT 0,
    generation         INTEGER     NOT NULL DEFAULT 1,  -- bumped when the file is attached again
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (store_id, file_id)
);
CREATE INDEX vector_store_files_list_idx ON vector_store_files (store_id, seq);
CREATE INDEX vector_store_files_batch_idx ON vector_store_files (batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE vector_store_chunks (
    store_id  TEXT     NOT NULL,
    chunk_id  TEXT     NOT NULL,
    file_id   TEXT     NOT NULL,
    n         INTEGER  NOT NULL,                       -- position in the file
    text      TEXT     NOT NULL,
    tsv       TSVECTOR NOT NULL GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (store_id, chunk_id),
    FOREIGN KEY (store_id, file_id) REFERENCES vector_store_files (store_id, file_id) ON DELETE CASCADE
);
CREATE INDEX vector_store_chunks_file_idx ON vector_store_chunks (store_id, file_id, n);
CREATE INDEX vector_store_chunks_tsv_idx ON vector_store_chunks USING GIN (tsv);

-- +goose Down
DROP TABLE vector_store_chunks;
DROP TABLE vector_store_files;
DROP TABLE vector_store_file_batches;
DROP TABLE vector_stores;
