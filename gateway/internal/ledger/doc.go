// Package ledger writes the usage ledger: one usage_records row per request, so that
// nothing a client used goes unbilled, whatever PostgreSQL, the disk or the process do.
//
// What it decides and guarantees:
//
//   - Sanitised on entry. Add makes every text field valid UTF-8 (invalid bytes become
//     U+FFFD), removes NUL and cuts it to a bound (ids 128 bytes, model 256, backend and
//     endpoint 128, error type 64); token counts are clamped to INTEGER. A value a client
//     chose can no longer make PostgreSQL refuse a batch.
//   - Idempotent writes. usage_records' key is (request_id, created_at) (migration 00010:
//     the table is partitioned by month and a unique index must hold the partition key; a
//     record retried or replayed from the spool carries the created_at it was first
//     written with, to the nanosecond, so the pair is as unique as the request id). A
//     batch is COPYed straight into usage_records, in one transaction with the
//     api_keys.last_used_at update. When that COPY meets a record already written
//     (unique_violation: a batch retried after a lost COMMIT acknowledgement, or replayed
//     from the spool) the transaction is rolled back and the batch is written again
//     through a temporary staging table and INSERT ... ON CONFLICT DO NOTHING, so a batch
//     written twice counts once (maas_gateway_usage_records_duplicate_total counts what
//     was skipped, maas_gateway_usage_batches_staged_total the batches that took that
//     path).
//   - Monthly sums kept with the records. In the same transaction, the tokens and requests
//     of the records the batch inserted (all of them after a plain COPY, those the staged
//     insert did not skip otherwise) are added to usage_monthly (user, key, UTC month), which
//     the budget counters start from; rows are locked in (user, key, month) order, so
//     gateways adding to the same rows wait for each other instead of deadlocking.
//   - Poison isolated. A batch refused for its content (SQLSTATE classes 22, 23, 54) is
//     split in halves until each refused record is alone; those go to the dead-letter file
//     (DataDir/ledger/dead-letters.jsonl, one JSON line each, with the error) and to
//     maas_gateway_usage_dead_letters_total, the rest is written. Any other failure
//     (connection, timeout, missing table) is transient: the batch is kept and retried with
//     backoff (100 ms doubling to 5 s), never dead-lettered.
//   - Nothing dropped for lack of memory. Records wait in memory up to Buffer; beyond it, and
//     whenever PostgreSQL fails, they are appended to the spool (DataDir/ledger/spool), an
//     append-only queue of segment files with a CRC-32C per record, replayed in order (the
//     spool first, then newer records) as soon as PostgreSQL answers, and at the next start.
//     A torn tail (a crash in the middle of a write) is detected, skipped and counted.
//     maas_usage_records_dropped_total counts only records neither PostgreSQL nor the spool
//     could take (a full or failing disk while PostgreSQL is down), or added after Stop.
//   - Durability. Every spool append is one write followed by fsync, from the writer loop
//     (never from Add); a new segment also syncs the directory. A kill -9 keeps the spool
//     and everything committed; it loses the records still in memory: at most about
//     Buffer + 2 × Batch (in practice the records of the last FlushInterval plus the batch
//     being committed). Those are counted: a state file mapped into memory (in /dev/shm,
//     see state.go) holds the records accepted and settled (committed, spooled or
//     dead-lettered); it survives the kill, and the next start sets
//     maas_gateway_usage_records_lost_total to accepted − settled and logs it at error
//     level. A batch whose COMMIT or spool write was in flight at the kill is checked (its
//     first request id in PostgreSQL, the segment's size), so the count is exact. A reboot
//     loses the state file; the spool, fsynced, is kept.
//   - Stop writes what is held to PostgreSQL until its context ends or PostgreSQL fails,
//     then spools the rest. Panics in the writer are recovered and counted
//     (maas_gateway_panics_total{where="ledger"}); the batch is kept.
//
// Several gateways may share one data directory: each locks the first free slot (ledger,
// ledger-1, … ledger-7) and replays only its own spool.
//
// Costs: Add is a mutex, an append and an atomic increment of the mapped counter (see
// BenchmarkAdd). In PostgreSQL a record costs a plain COPY row: the heap, the key's b-tree
// and a BRIN summary, plus its share of one upsert of a few usage_monthly rows per batch
// (BenchmarkInsertCost: about 5–6 µs of PostgreSQL CPU per record, against 16 for the
// staged insert into the table of migration 00005 with its six b-trees); a replayed batch
// costs the failed COPY and the staged insert.
package ledger
