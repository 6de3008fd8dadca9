// Package faults is the platform's fault suite: real gateway, control and worker
// processes (pkg/testenv), real PostgreSQL and Redis, and one fault per test, injected
// under load on loopback.
//
// The cases (issue 9, item 11):
//
//   - TestBackendKilled: a simulator backend is killed with SIGKILL under load; no
//     non-streamed request may fail (the gateway fails over before the first byte).
//   - TestBackendHangs: a registered backend accepts requests and never answers; the
//     first-byte timeout fails over, no request fails.
//   - TestPostgresDown: PostgreSQL stopped under ~1,000 req/s, then started: the gateway
//     serves from its snapshot throughout, and the ledger ends with exactly one row per
//     request answered (0 lost, 0 duplicated). The in-memory ledger buffer is set small
//     so that the outage cannot be absorbed in memory.
//   - TestRedisDown: Redis stopped and started under load: no request fails, the quota
//     tier falls back to local limits and returns to Redis.
//   - TestGatewayKilled: the gateway killed with SIGKILL under load: the records lost are
//     within the ledger's stated bound and counted when the gateway restarts on the same
//     data directory.
//   - TestSIGTERMWithOpenStreams: SIGTERM with 200 open streams: no stream is cut and the
//     ledger has all of them.
//   - TestControlDown: control stopped under load: the gateway keeps serving, and keys
//     revoked before and during the outage stay refused after control returns.
//   - TestEngineRestarted: the only engine of a model killed with SIGKILL under streamed
//     and non-streamed load and started again on its address: only requests refused
//     while nothing listened may fail, and service is full once it listens (issue 16).
//   - TestSoak: a steady rate for 10 minutes, the gateway's RSS sampled and its slope
//     stated (MAAS_FAULTS_FULL only).
//
// Every case is bounded in time and in requests and stops by itself. `go test` (and so
// `make test`) runs short versions; with MAAS_FAULTS_FULL=1 (`make faults`) the outages
// last their full length, the soak runs, and with MAAS_FAULTS_OUT=FILE the figures of
// every case are written to FILE as Markdown (bench/results/faults.md).
package faults
