-- API keys carry scopes: 'inference' (the OpenAI API) and 'management' (the console API,
-- /api/v1). Keys that exist before this migration keep only 'inference': a key that was
-- used for the console API must be recreated by an admin with scopes ["management"].

-- +goose Up
ALTER TABLE api_keys ADD COLUMN scopes TEXT[] NOT NULL DEFAULT '{inference}'
    CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['inference', 'management']::TEXT[]);

-- The gateway's snapshot reads scopes: changing them must notify.
DROP TRIGGER api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE OR UPDATE OF user_id, name, models, rpm, tpm, expires_at, revoked_at, scopes ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();

-- +goose Down
DROP TRIGGER api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE OR UPDATE OF user_id, name, models, rpm, tpm, expires_at, revoked_at ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_change();
ALTER TABLE api_keys DROP COLUMN scopes;
