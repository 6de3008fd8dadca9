-- LoRA adapters placed on backends: each backend's adapter slots and the adapters its worker
-- loaded (as last reported by heartbeat), and the last time an adapter was asked for while
-- loaded nowhere (the on-demand hook), which counts as a use for placement.

-- +goose Up
-- Neither column is watched by the backends NOTIFY trigger: what gateways route on is the
-- models column, which the worker's heartbeat updates with its loaded adapters.
ALTER TABLE backends
    ADD COLUMN adapter_slots INTEGER NOT NULL DEFAULT 0 CHECK (adapter_slots >= 0),
    ADD COLUMN adapters      TEXT[]  NOT NULL DEFAULT '{}';

CREATE TABLE adapter_demands (
    model_id    BIGINT      PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    demanded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE adapter_demands;
ALTER TABLE backends DROP COLUMN adapters, DROP COLUMN adapter_slots;
