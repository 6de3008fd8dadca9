// Package finetune is the fine-tuning domain: OpenAI's /v1/fine_tuning/jobs API (create,
// list, retrieve, cancel, events, checkpoints), the orchestration of each job in River jobs,
// and the internal API through which training workers claim and run them. It owns the
// fine_tuning_* tables.
//
// A job's life:
//
//	validating_files → queued → running → succeeded
//	        │             │         ├────→ failed     (trainer error, lease lost too often)
//	        └─────────────┴─────────┴────→ cancelled  (by its owner or an admin)
//	                      ↑         │
//	                      └─────────┘ lease expired: re-queued (bounded attempts)
//
// Creation inserts the job row and a River validation job in one transaction. The
// validation job checks the files (the user's own, purpose fine-tune, well-formed, not
// empty) and moves the job to queued, or fails it with an error code and message.
//
// Training runs on workers that offer training capacity and hold no database credentials.
// A worker claims the oldest queued job through the internal API and receives a lease
// (default 60 s) that every call it makes renews; control answers a heartbeat with "stop"
// once the job was cancelled or given to another worker. A lease that expires — the worker
// died or lost its network — is found by a River periodic job (and by every claim), which
// re-queues the job for another worker, or fails it with code worker_lost once it was
// claimed MaxAttempts times: a job is never left running without a live lease.
//
// The worker streams events and step metrics (become job events, and at the end a metrics
// CSV result file), posts checkpoints, uploads the adapter (a tar archive kept in the blob
// store) and completes. Completion enqueues, in the same transaction, a River job that
// registers the model ft:<base>:<suffix>:<job-id> as an adapter of its base model (visible
// to the job's owner only, priced like its base), writes the result file, and marks the
// job succeeded; River retries it until it does.
//
// Visibility: a job, its events and checkpoints are seen by its owner and by admins; anyone
// else gets 404.
package finetune
