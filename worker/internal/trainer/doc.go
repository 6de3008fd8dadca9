// Package trainer is the worker's training mode: it claims fine-tuning jobs from control's
// internal API (pkg/training documents the protocol; client.go is every call) and runs each
// with a trainer, an external command.
//
// The trainer is a command template (MAAS_TRAINER_COMMAND) split into words once, like a
// shell would split it but with no expansion at all; {placeholders} in the words are
// replaced by the job's values when it runs (see Placeholders). No shell is involved, so a
// value such as "$(touch x)" or "; rm -rf ." is one literal argument. "sim" stands for the
// built-in simulated trainer (package trainsim, `worker train-sim`).
//
// A trainer's contract:
//   - it reads {training_file} (and {validation_file} unless that argument is empty), chat
//     JSONL as OpenAI's fine-tuning API takes it, and writes a LoRA adapter in PEFT's
//     layout (adapter_config.json at the root, adapter_model.safetensors) into {output_dir};
//   - it prints progress on standard output, one JSON object per line:
//     {"step":12,"total_steps":300,"loss":1.83,"val_loss":1.91} (train_loss and valid_loss
//     are accepted too; "checkpoint":true marks a saved checkpoint), {"message":"…",
//     "level":"info|warn|error"}, and {"trained_tokens":123456} once; other lines are kept
//     as log events (at most MaxLogLines per run, each cut at MaxLineBytes);
//   - it exits 0 on success; any other exit fails the job with its last lines of standard
//     error as the message.
//
// Each run gets its own process group. Stopping it — control answered a heartbeat with
// "stop" (the job was cancelled, or its lease given to another worker), the worker shuts
// down, or MAAS_TRAINER_TIMEOUT passed — sends SIGTERM to the group and SIGKILL after
// MAAS_TRAINER_STOP_GRACE; whatever the trainer leaves in its group when it exits is killed
// too. A worker that dies without stopping its trainer (SIGKILL, OOM kill) takes the
// trainer with it (Linux's parent-death signal), but not the trainer's children (a shell
// template's commands, torchrun's workers), which may go on holding the GPU. Each job's
// work directory records the worker's pid and the trainer's process group (sweep.go): at
// start, a worker SIGKILLs the group of every maas-* directory in MAAS_TRAINER_WORK_DIR whose
// worker no longer runs (when processes of that group still run in that directory) and
// removes the directory. So orphans last until a worker starts again with the same work
// directory; a trainer that leaves its group (setsid) or its directory escapes this.
//
// A job's life on the worker: claim (with a lease), download the datasets into a fresh
// work directory, heartbeat every Task.HeartbeatIntervalMS while the trainer runs, send
// events and metrics every second (checkpoints after their metrics), then upload the
// adapter as a tar archive and complete — or fail with a code (training_failed,
// training_timeout, adapter_missing, adapter_rejected, file_unavailable,
// trainer_unavailable) and a message. The work directory is deleted after. A worker that
// stops while its trainer runs stops the trainer and sends no verdict: the lease expires
// and control re-queues the job. A worker that stops after its trainer exited 0 first
// uploads the adapter and completes the job, heartbeats going on, within 2 minutes plus a
// second per MiB of adapter (a slower upload is given up): finished work is not trained
// again. The worker holds no database credentials, only the internal token.
//
// MAAS_TRAINER_GPUS_PER_JOB splits the worker's GPUs into slots that each run one job,
// the trainer seeing only its slot's devices in CUDA_VISIBLE_DEVICES.
package trainer
