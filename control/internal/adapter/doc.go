// Package adapter places LoRA adapters on backends: it decides, at each heartbeat of a
// worker that reports adapter slots, which adapters that backend's engine should hold, and
// takes the on-demand requests of gateways that met an adapter loaded nowhere. It owns the
// adapter_demands table and reads models, fine_tuning_jobs, usage_records and backends.
//
// An adapter is a model with base_model set, enabled, whose archive a fine-tuning job stored
// (fine_tuning_jobs.fine_tuned_model names it, adapter_key is set). Placement rule, for a
// backend whose worker reports adapter slots N > 0:
//
//   - candidates are the adapters whose base model the backend serves (its models minus the
//     adapters it loaded): by default every backend of the base, no other choice is made;
//   - when there are more candidates than N, the N most recently used are kept, least
//     recently used evicted. An adapter's last use is the latest of: its last request in
//     the usage ledger (usage_records; folded into adapter_uses at most every FoldInterval,
//     reading only the ledger's records since the previous fold, as the ledger has no index
//     by model), an on-demand request (adapter_uses too), and its registration
//     (models.created_at, so a newly trained adapter is placed at once);
//   - ties go by name, so every backend of a base with as many slots holds the same set.
//
// The set is computed afresh at every heartbeat: deleting or disabling an adapter's model
// drops it from every desired set, and each worker unloads it at its next heartbeat.
// Adapters registered by an operator without an archive (base_model set by hand for an
// adapter the engine loads itself, e.g. vLLM --lora-modules) are not placed: they are served
// where engines list them.
//
// Routing needs nothing of this package: a worker lists the adapters it loaded among its
// served models (backends.models), which is what gateways route on. The on-demand hook, POST
// /internal/v1/adapters/demand {"model"}, records a use now, so that every backend of the
// base places the adapter at its next heartbeat (evicting its least recently used one when
// full), and answers where it is loaded and where it can be. Operators see every adapter's
// placement with GET /api/v1/adapters (admin); each backend's slots and loaded adapters are
// in GET /api/v1/backends.
package adapter
