// Package snapshot keeps the gateway's in-memory view of the control plane's tables: API
// keys (by hash), users with their roles and quotas, models with aliases, and backends.
//
// A Snapshot is immutable once built and is swapped atomically by a Store, so the hot path
// reads it without locks and never waits on PostgreSQL. The Store reloads it when control
// sends NOTIFY maas_changes, every ReloadInterval as a safety net, and re-reads backends'
// load figures every LoadRefreshInterval.
//
// A key created a moment ago may not be in the snapshot yet (the reload after its NOTIFY
// takes a few milliseconds). Store.FindKey looks such a key up in PostgreSQL once, with the
// loader's own SQL and rules (lookup.go): one query per key hash at a time, a short
// negative cache, and a rate limit per gateway so that a flood of random keys cannot reach
// the database. Keys found that way are kept beside the snapshot until a snapshot read
// after them replaces them.
package snapshot
