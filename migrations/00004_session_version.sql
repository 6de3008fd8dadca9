-- Console sessions (JWTs) carry the user's session_version; bumping it (password change,
-- admin password reset, disabling the user) ends every session issued before.

-- +goose Up
ALTER TABLE users ADD COLUMN session_version BIGINT NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE users DROP COLUMN session_version;
