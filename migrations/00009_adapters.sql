-- LoRA adapters placed on backends: each backend's adapter slots and the adapters its worker
-- loaded (as last reported by heartbeat), and each adapter's last use as control knows it
-- (the latest ledger record for it, folded in periodically, or an on-demand request from a
-- gateway), which decides what is evicted when slots are full.

-- +goose Up
-- Neither column is watched by the backends NOTIFY trigger: what gateways route on is the
-- models column, which the worker's heartbeat updates with its loaded adapters.
ALTER TABLE backends
    ADD COLUMN adapter_slots INTEGER NOT NULL DEFAULT 0 CHECK (adapter_slots >= 0),
    ADD COLUMN adapters      TEXT[]  NOT NULL DEFAULT '{}';

CREATE TABLE adapter_uses (
    model_id BIGINT      PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    used_at  TIMESTAMPTZ NOT NULL
);

-- +goose Down
DROP TABLE adapter_uses;
ALTER TABLE backends DROP COLUMN adapters, DROP COLUMN adapter_slots;
