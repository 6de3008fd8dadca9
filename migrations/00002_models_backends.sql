-- The model registry (with aliases) and the backend registry fed by workers.

-- +goose Up
CREATE TABLE models (
    id                        BIGSERIAL PRIMARY KEY,
    name                      TEXT        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
    type                      TEXT        NOT NULL CHECK (type IN ('chat', 'completion', 'embedding')),
    description               TEXT        NOT NULL DEFAULT '',
    context_window            INTEGER     NOT NULL DEFAULT 8192 CHECK (context_window > 0),
    max_output_tokens         INTEGER     NOT NULL DEFAULT 1024 CHECK (max_output_tokens > 0),
    input_price_per_million   NUMERIC(12, 6) NOT NULL DEFAULT 0 CHECK (input_price_per_million >= 0),
    output_price_per_million  NUMERIC(12, 6) NOT NULL DEFAULT 0 CHECK (output_price_per_million >= 0),
    visibility                TEXT        NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'restricted')),
    allowed_roles             TEXT[]      NOT NULL DEFAULT '{}',
    allowed_users             BIGINT[]    NOT NULL DEFAULT '{}',
    routing_policy            TEXT        NOT NULL DEFAULT 'least_outstanding'
                              CHECK (routing_policy IN ('least_outstanding', 'prefix_affinity', 'weighted_random')),
    enabled                   BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One namespace for names and aliases: an alias may not equal any model's name (checked by
-- control) nor another alias (the primary key).
CREATE TABLE model_aliases (
    alias    TEXT   PRIMARY KEY CHECK (alias ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
    model_id BIGINT NOT NULL REFERENCES models (id) ON DELETE CASCADE
);
CREATE INDEX model_aliases_model_id_idx ON model_aliases (model_id);

-- A backend is one inference engine as announced by its worker. Heartbeats refresh
-- last_heartbeat_at; control marks a backend unhealthy after 3 missed intervals and
-- removes it later. Operators may disable a backend or change its weight.
CREATE TABLE backends (
    id                   TEXT PRIMARY KEY,
    url                  TEXT        NOT NULL,
    engine_kind          TEXT        NOT NULL,
    models               TEXT[]      NOT NULL DEFAULT '{}',
    capacity             INTEGER     NOT NULL DEFAULT 64 CHECK (capacity > 0),
    weight               INTEGER     NOT NULL DEFAULT 100 CHECK (weight >= 0 AND weight <= 10000),
    state                TEXT        NOT NULL DEFAULT 'healthy' CHECK (state IN ('healthy', 'unhealthy', 'draining')),
    disabled             BOOLEAN     NOT NULL DEFAULT FALSE,
    heartbeat_interval_ms INTEGER    NOT NULL DEFAULT 2000 CHECK (heartbeat_interval_ms > 0),
    running_requests     INTEGER     NOT NULL DEFAULT 0,
    waiting_requests     INTEGER     NOT NULL DEFAULT 0,
    kv_cache_usage       DOUBLE PRECISION NOT NULL DEFAULT 0,
    in_flight            INTEGER     NOT NULL DEFAULT 0,
    worker_version       TEXT        NOT NULL DEFAULT '',
    registered_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER models_notify AFTER INSERT OR UPDATE OR DELETE ON models
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();
CREATE TRIGGER model_aliases_notify AFTER INSERT OR UPDATE OR DELETE ON model_aliases
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();
-- Load figures change every heartbeat; they reach gateways through the periodic reload and
-- not through NOTIFY, so only membership and routing-relevant columns notify.
CREATE TRIGGER backends_notify AFTER INSERT OR DELETE OR UPDATE OF url, models, capacity, weight, state, disabled ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();

-- +goose Down
DROP TABLE backends;
DROP TABLE model_aliases;
DROP TABLE models;
