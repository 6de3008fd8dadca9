-- Fine-tuning jobs (OpenAI's /v1/fine_tuning/jobs), their state transitions, events, step
-- metrics and checkpoints; models learn the base model an adapter applies to. River's own
-- tables (the job queue) are applied by control's migration step through River's migrator,
-- not here.

-- +goose Up
-- base_model names the model a LoRA adapter applies to (registered by a fine-tuning job);
-- NULL for a base model.
ALTER TABLE models ADD COLUMN base_model TEXT CHECK (base_model IS NULL OR base_model <> name);

CREATE TABLE fine_tuning_jobs (
    seq              BIGSERIAL   UNIQUE,                 -- list order and cursor position
    id               TEXT        PRIMARY KEY CHECK (id ~ '^ftjob-[A-Za-z0-9]{8,64}$'),
    user_id          BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    model            TEXT        NOT NULL,               -- the base model's name
    training_file    TEXT        NOT NULL,
    validation_file  TEXT,
    suffix           TEXT,
    seed             BIGINT      NOT NULL,
    method           JSONB       NOT NULL,               -- resolved: {"type": "supervised", "supervised": {...}}
    metadata         JSONB,                              -- the caller's key/value pairs, as given
    status           TEXT        NOT NULL DEFAULT 'validating_files'
                     CHECK (status IN ('validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled')),
    fine_tuned_model TEXT,                               -- set on success
    trained_tokens   BIGINT      CHECK (trained_tokens >= 0),
    error            JSONB,                              -- {"code", "message", "param"} when failed
    result_files     TEXT[]      NOT NULL DEFAULT '{}',
    -- Dispatch to training workers: each claim takes a lease renewed by heartbeat; a lease
    -- that expires re-queues the job (attempts bounded) or fails it.
    attempts         INTEGER     NOT NULL DEFAULT 0,
    worker_id        TEXT,
    lease_token      TEXT,
    lease_expires_at TIMESTAMPTZ,
    lease_ms         INTEGER,                            -- the lease length the worker was given
    started_at       TIMESTAMPTZ,                        -- the current attempt's claim
    -- The trainer's output: an adapter archive in the blob store, then completion (the
    -- registration job turns it into a model and the job into succeeded).
    adapter_key      TEXT,
    adapter_bytes    BIGINT,
    trained          BOOLEAN     NOT NULL DEFAULT FALSE,
    estimated_finish TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ
);
CREATE INDEX fine_tuning_jobs_user_idx ON fine_tuning_jobs (user_id, seq);
CREATE INDEX fine_tuning_jobs_active_idx ON fine_tuning_jobs (status, seq)
    WHERE status IN ('validating_files', 'queued', 'running');

-- Every change of status, with its time and reason.
CREATE TABLE fine_tuning_job_transitions (
    seq     BIGSERIAL   PRIMARY KEY,
    job_id  TEXT        NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    status  TEXT        NOT NULL,
    reason  TEXT        NOT NULL DEFAULT '',
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX fine_tuning_job_transitions_job_idx ON fine_tuning_job_transitions (job_id, seq);

-- The job's events as OpenAI lists them (newest first): messages and metrics.
CREATE TABLE fine_tuning_events (
    seq        BIGSERIAL   PRIMARY KEY,
    id         TEXT        NOT NULL UNIQUE,
    job_id     TEXT        NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    level      TEXT        NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    type       TEXT        NOT NULL CHECK (type IN ('message', 'metrics')),
    message    TEXT        NOT NULL,
    data       JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX fine_tuning_events_job_idx ON fine_tuning_events (job_id, seq);

-- Step metrics of the current attempt (a re-queued job starts again from step 0); the
-- metrics CSV result file is written from them.
CREATE TABLE fine_tuning_metrics (
    job_id                    TEXT        NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    step                      INTEGER     NOT NULL CHECK (step >= 0),
    total_steps               INTEGER     NOT NULL CHECK (total_steps >= 0),
    train_loss                DOUBLE PRECISION,
    valid_loss                DOUBLE PRECISION,
    train_mean_token_accuracy DOUBLE PRECISION,
    valid_mean_token_accuracy DOUBLE PRECISION,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step)
);

CREATE TABLE fine_tuning_checkpoints (
    seq        BIGSERIAL   PRIMARY KEY,
    id         TEXT        NOT NULL UNIQUE,
    job_id     TEXT        NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    step       INTEGER     NOT NULL CHECK (step >= 0),
    name       TEXT        NOT NULL,
    metrics    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX fine_tuning_checkpoints_job_idx ON fine_tuning_checkpoints (job_id, seq);

-- +goose Down
DROP TABLE fine_tuning_checkpoints;
DROP TABLE fine_tuning_metrics;
DROP TABLE fine_tuning_events;
DROP TABLE fine_tuning_job_transitions;
DROP TABLE fine_tuning_jobs;
ALTER TABLE models DROP COLUMN base_model;
