-- The embedded vector index (control/internal/vectorindex/embedded): chunk vectors persisted
-- here and searched in control's process. Independent of the knowledge tables on purpose:
-- with Milvus enabled these tables stay empty. A store's version changes on every write
-- (from one sequence, so a version is never reused, even after the store is deleted and
-- filled again); a process's in-memory copy of a store is valid while the versions match.

-- +goose Up
CREATE SEQUENCE vector_index_version_seq;

CREATE TABLE vector_index_stores (
    store_id  TEXT    PRIMARY KEY,
    dims      INTEGER NOT NULL CHECK (dims > 0),
    version   BIGINT  NOT NULL DEFAULT nextval('vector_index_version_seq')
);

CREATE TABLE vector_index_chunks (
    store_id    TEXT  NOT NULL,
    chunk_id    TEXT  NOT NULL,
    file_id     TEXT  NOT NULL,
    vector      BYTEA NOT NULL,                 -- little-endian float32, dims of the store
    attributes  JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (store_id, chunk_id)
);
CREATE INDEX vector_index_chunks_file_idx ON vector_index_chunks (store_id, file_id);

-- +goose Down
DROP TABLE vector_index_chunks;
DROP TABLE vector_index_stores;
DROP SEQUENCE vector_index_version_seq;
