-- The usage ledger becomes cheaper to write and to keep: usage_records is partitioned by
-- calendar month (UTC) of created_at, one partition a month (usage_records_yYYYYmMM) plus a
-- default partition that takes any row whose month has no partition yet, so a write never
-- fails for want of one. control creates partitions ahead and drops those older than the
-- retention (MAAS_USAGE_RETENTION_MONTHS) with usage_records_add_month below.
--
-- Indexes are the ones the queries we run need, and no more (each b-tree costs PostgreSQL
-- CPU on every insert):
--   - primary key (request_id, created_at): the ledger's idempotency (ON CONFLICT); a
--     unique index of a partitioned table must hold the partition key, and a record
--     replayed from a gateway's spool or retried carries the created_at it was first
--     written with, so the pair is as unique as request_id alone. request_id compares
--     bytewise (COLLATE "C"): it is an opaque id, and a locale's collation costs every
--     comparison of every insert.
--   - BRIN on created_at: time ranges (dashboards, reports) within a partition, for a few
--     pages of index instead of a b-tree entry per row.
-- Dropped: the id column (BIGSERIAL primary key, read by nothing; request_id is the key),
-- the b-trees on created_at, (user_id, created_at), (api_key_id, created_at) and
-- (model, created_at). The monthly budget sums, by user or by key, read usage_monthly
-- instead: one row per UTC month, user and key, which the ledger's writer adds each batch's
-- tokens to in the batch's transaction, counting only the records the batch inserted (a
-- b-tree entry per record costs more than an upsert of a few rows per batch, and a sum no
-- longer reads a month of a user's records). Measured on PostgreSQL 15
-- (BenchmarkInsertCost): 16 µs of PostgreSQL CPU per record before, about 5 after.
--
-- Existing rows are copied into the new table (a long statement on a large ledger: run it
-- in a quiet hour; gateways spool while it holds the table). Down restores the previous
-- table, ids numbered anew in created_at order.

-- +goose Up
ALTER TABLE usage_records RENAME TO usage_records_unpartitioned;
ALTER TABLE usage_records_unpartitioned DROP CONSTRAINT usage_records_pkey;
DROP INDEX usage_records_created_at_idx, usage_records_user_idx, usage_records_key_idx, usage_records_model_idx,
    usage_records_request_id_key;

CREATE TABLE usage_records (
    request_id        TEXT COLLATE "C" NOT NULL,
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
    error_type        TEXT        NOT NULL DEFAULT '',
    client_request_id TEXT        NOT NULL DEFAULT '',
    CONSTRAINT usage_records_pkey PRIMARY KEY (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX usage_records_created_at_brin ON usage_records USING brin (created_at);
CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT;

-- usage_records_add_month makes sure the partition of the UTC calendar month holding at
-- exists, moving into it the rows the default partition holds for that month, and returns
-- its name. Safe to call concurrently (an advisory lock serialises callers) and again.
-- +goose StatementBegin
CREATE FUNCTION usage_records_add_month(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi   timestamptz := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    part text := 'usage_records_' || to_char(at AT TIME ZONE 'UTC', '"y"YYYY"m"MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('usage_records partitions'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE usage_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format('WITH moved AS (DELETE FROM usage_records_default WHERE created_at >= %L AND created_at < %L RETURNING *)
        INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE usage_records ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN part;
END
$$;
-- +goose StatementEnd

-- A partition for every month the ledger already has, and for this month and the next two.
SELECT usage_records_add_month(m)
FROM (SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS m FROM usage_records_unpartitioned
      UNION SELECT now() + n * interval '1 month' FROM generate_series(0, 2) AS n) AS months
ORDER BY m;

INSERT INTO usage_records (request_id, created_at, user_id, api_key_id, model, backend_id, endpoint, status,
    prompt_tokens, completion_tokens, estimated, streamed, ttft_ms, duration_ms, error_type, client_request_id)
SELECT request_id, created_at, user_id, api_key_id, model, backend_id, endpoint, status,
    prompt_tokens, completion_tokens, estimated, streamed, ttft_ms, duration_ms, error_type, client_request_id
FROM usage_records_unpartitioned;
DROP TABLE usage_records_unpartitioned;

-- Tokens and requests per user, key (0: none) and UTC month (its first day). A key's
-- rows all carry its user, so a key's sums are found under its user.
CREATE TABLE usage_monthly (
    user_id    BIGINT NOT NULL,
    api_key_id BIGINT NOT NULL,
    month      DATE   NOT NULL,
    tokens     BIGINT NOT NULL,
    requests   BIGINT NOT NULL,
    PRIMARY KEY (user_id, api_key_id, month)
);
INSERT INTO usage_monthly (user_id, api_key_id, month, tokens, requests)
SELECT COALESCE(user_id, 0), COALESCE(api_key_id, 0), date_trunc('month', created_at AT TIME ZONE 'UTC')::date,
    sum(prompt_tokens::bigint + completion_tokens), count(*)
FROM usage_records GROUP BY 1, 2, 3;

-- +goose Down
DROP TABLE usage_monthly;
CREATE TABLE usage_records_unpartitioned (
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
    error_type        TEXT        NOT NULL DEFAULT '',
    client_request_id TEXT        NOT NULL DEFAULT ''
);
INSERT INTO usage_records_unpartitioned (request_id, created_at, user_id, api_key_id, model, backend_id, endpoint,
    status, prompt_tokens, completion_tokens, estimated, streamed, ttft_ms, duration_ms, error_type, client_request_id)
SELECT request_id, created_at, user_id, api_key_id, model, backend_id, endpoint, status,
    prompt_tokens, completion_tokens, estimated, streamed, ttft_ms, duration_ms, error_type, client_request_id
FROM usage_records ORDER BY created_at, request_id;
DROP TABLE usage_records;
DROP FUNCTION usage_records_add_month(timestamptz);
ALTER TABLE usage_records_unpartitioned RENAME TO usage_records;
ALTER TABLE usage_records RENAME CONSTRAINT usage_records_unpartitioned_pkey TO usage_records_pkey;
ALTER SEQUENCE usage_records_unpartitioned_id_seq RENAME TO usage_records_id_seq;
CREATE INDEX usage_records_created_at_idx ON usage_records (created_at);
CREATE INDEX usage_records_user_idx ON usage_records (user_id, created_at);
CREATE INDEX usage_records_key_idx ON usage_records (api_key_id, created_at);
CREATE INDEX usage_records_model_idx ON usage_records (model, created_at);
CREATE UNIQUE INDEX usage_records_request_id_key ON usage_records (request_id);
