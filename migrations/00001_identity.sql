-- Users, roles, API keys and quotas: the identity tables of the original brief.

-- +goose Up
-- Every change the gateway's snapshot depends on bumps this sequence and sends a NOTIFY on
-- channel maas_changes whose payload is {"version":N,"table":"..."}.
CREATE SEQUENCE maas_change_version;

-- +goose StatementBegin
CREATE FUNCTION maas_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('maas_changes',
        json_build_object('version', nextval('maas_change_version'), 'table', TG_TABLE_NAME)::text);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT        NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.-]{3,64}$'),
    email         TEXT        UNIQUE,
    full_name     TEXT        NOT NULL DEFAULT '',
    password_hash TEXT        NOT NULL,
    is_active     BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE roles (
    id          SMALLSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT ''
);

INSERT INTO roles (name, description) VALUES
    ('admin', 'Operates the platform: users, keys, quotas, models and backends.'),
    ('developer', 'Builds on the platform: own API keys, fine-tuning, knowledge bases and apps.'),
    ('user', 'Uses the platform: own API keys and the models visible to them.');

CREATE TABLE user_roles (
    user_id    BIGINT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id    SMALLINT NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role_id)
);

CREATE TABLE api_keys (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT        NOT NULL,
    prefix       TEXT        NOT NULL,
    key_hash     BYTEA       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    models       TEXT[],
    rpm          INTEGER CHECK (rpm >= 0),
    tpm          INTEGER CHECK (tpm >= 0),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, id);

CREATE TABLE user_quotas (
    user_id              BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    requests_per_minute  INTEGER CHECK (requests_per_minute >= 0),
    tokens_per_minute    INTEGER CHECK (tokens_per_minute >= 0),
    max_concurrent       INTEGER CHECK (max_concurrent >= 0),
    monthly_token_budget BIGINT  CHECK (monthly_token_budget >= 0),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER users_notify AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();
CREATE TRIGGER user_roles_notify AFTER INSERT OR UPDATE OR DELETE ON user_roles
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();
CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE OR UPDATE OF user_id, name, models, rpm, tpm, expires_at, revoked_at ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();
CREATE TRIGGER user_quotas_notify AFTER INSERT OR UPDATE OR DELETE ON user_quotas
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();

-- +goose Down
DROP TABLE user_quotas;
DROP TABLE api_keys;
DROP TABLE user_roles;
DROP TABLE roles;
DROP TABLE users;
DROP FUNCTION maas_notify_change();
DROP SEQUENCE maas_change_version;
