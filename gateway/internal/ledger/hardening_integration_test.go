package ledger

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/migrations"
	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
	"github.com/prometheus/client_golang/prometheus"
)

// faultyDB is a real pool with faults on demand: while down, transactions go to a pool on a
// closed port (a real connection error); lostAcks commits report an error after the commit
// happened; panics Begins panic.
type faultyDB struct {
	pool, dead *pgxpool.Pool
	mu         sync.Mutex
	down       bool
	lostAcks   int
	panics     int
}

func newFaultyDB(t *testing.T, pool *pgxpool.Pool) *faultyDB {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	cfg, err := pgxpool.ParseConfig("postgres://postgres@" + addr + "/none?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	dead, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dead.Close)
	return &faultyDB{pool: pool, dead: dead}
}

func (d *faultyDB) setDown(v bool) { d.mu.Lock(); d.down = v; d.mu.Unlock() }

func (d *faultyDB) Begin(ctx context.Context) (pgx.Tx, error) {
	d.mu.Lock()
	down := d.down
	if d.panics > 0 {
		d.panics--
		d.mu.Unlock()
		panic("injected panic in the ledger's database")
	}
	d.mu.Unlock()
	if down {
		return d.dead.Begin(ctx)
	}
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &faultyTx{Tx: tx, d: d}, nil
}

type faultyTx struct {
	pgx.Tx
	d *faultyDB
}

func (tx *faultyTx) Commit(ctx context.Context) error {
	if err := tx.Tx.Commit(ctx); err != nil {
		return err
	}
	tx.d.mu.Lock()
	defer tx.d.mu.Unlock()
	if tx.d.lostAcks > 0 {
		tx.d.lostAcks--
		return errors.New("commit usage batch: read tcp 127.0.0.1:5432: connection reset by peer")
	}
	return nil
}

func rows(t *testing.T, pool *pgxpool.Pool) (n, distinct int) {
	t.Helper()
	if err := pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT request_id) FROM usage_records`).Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	return n, distinct
}

func TestHostileTextIsWrittenOnRealDatabase(t *testing.T) {
	// Invalid UTF-8 and NUL in every text field: PostgreSQL refuses both (22021), and
	// before sanitising one such record blocked every batch behind it.
	pool, _ := pgtest.NewPool(t)
	w := newWriter(t, Options{DB: pool, Batch: 100, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	var n int
	for _, bad := range []string{"\xff\xfe", "a\x00b", "\xc3", strings.Repeat("ü", 300) + "\x00"} {
		for field := range 6 {
			r := rec(n)
			n++
			switch field {
			case 0:
				r.RequestID += bad
			case 1:
				r.ClientRequestID = bad
			case 2:
				r.Model = bad
			case 3:
				r.Backend = bad
			case 4:
				r.Endpoint = bad
			case 5:
				r.ErrorType = bad
			}
			w.Add(r)
		}
	}
	ok := rec(n) // a good record after them
	n++
	ok.PromptTokens = 1 << 40 // beyond INTEGER: clamped
	w.Add(ok)
	if err := w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, distinct := rows(t, pool); got != n || distinct != n {
		t.Errorf("%d rows (%d distinct), want %d", got, distinct, n)
	}
	if counter(w.deadLetters) != 0 || w.Dropped() != 0 {
		t.Errorf("dead letters %v dropped %v", counter(w.deadLetters), w.Dropped())
	}
}

func TestPoisonRecordIsIsolatedOnRealDatabase(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	// A record PostgreSQL refuses for its content whatever sanitising does (23514).
	if _, err := pool.Exec(ctx, `ALTER TABLE usage_records ADD CONSTRAINT no_poison CHECK (model <> 'poison')`); err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, Options{DB: pool, Batch: 100, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	for i := range 200 {
		r := rec(i)
		if i == 3 || i == 150 || i == 151 {
			r.Model = "poison"
		}
		w.Add(r)
	}
	waitFor(t, "197 rows", func() bool { n, _ := rows(t, pool); return n == 197 })
	// Nothing blocks: a record added after the poison is written too.
	w.Add(rec(1000))
	waitFor(t, "198 rows", func() bool { n, _ := rows(t, pool); return n == 198 })
	w.Stop(ctx)
	if got := counter(w.deadLetters); got != 3 {
		t.Errorf("dead letters %v, want 3", got)
	}
	lines := readLines(t, w.deadPath)
	if len(lines) != 3 || !strings.Contains(lines[0], `"sqlstate":"23514"`) || !strings.Contains(lines[0], `"request_id":"r3"`) {
		t.Errorf("dead-letter file:\n%s", strings.Join(lines, "\n"))
	}
	checkMonthly(t, pool) // the refused records are in neither
}

func TestOutageIsSpooledAndReplayedOnRealDatabase(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	db := newFaultyDB(t, pool)
	db.setDown(true)
	reg := prometheus.NewRegistry()
	// Buffer 100: far fewer than the records of the outage.
	w := newWriter(t, Options{DB: db, Batch: 100, FlushInterval: 5 * time.Millisecond, Buffer: 100, Registerer: reg})
	const n = 1000
	for i := range n {
		w.Add(rec(i))
	}
	waitFor(t, "every record in the spool", func() bool { return w.sp.records.Load() == n })
	if got, _ := rows(t, pool); got != 0 {
		t.Fatalf("%d rows while the database was unreachable", got)
	}
	db.setDown(false)
	waitFor(t, "the spool replayed", func() bool { got, _ := rows(t, pool); return got == n })
	w.Stop(context.Background())
	got, distinct := rows(t, pool)
	if got != n || distinct != n || w.Dropped() != 0 {
		t.Errorf("%d rows, %d distinct, %v dropped; want %d", got, distinct, w.Dropped(), n)
	}
	// In order: the rows' physical order (an insert-only partition fills its pages in the
	// order of the inserts) follows the records' order.
	var outOfOrder int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM (
		SELECT substr(request_id, 2)::int - lag(substr(request_id, 2)::int) OVER (ORDER BY tableoid, ctid) AS step
		FROM usage_records) s
		WHERE step <> 1`).Scan(&outOfOrder); err != nil {
		t.Fatal(err)
	}
	if outOfOrder != 0 {
		t.Errorf("%d records replayed out of order", outOfOrder)
	}
	checkMonthly(t, pool)
}

func TestLostCommitAcknowledgementOnRealDatabase(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	db := newFaultyDB(t, pool)
	db.lostAcks = 2
	w := newWriter(t, Options{DB: db, Batch: 50, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	for i := range 200 {
		w.Add(rec(i))
	}
	waitFor(t, "200 rows", func() bool { got, _ := rows(t, pool); return got >= 200 })
	w.Stop(context.Background())
	if got, distinct := rows(t, pool); got != 200 || distinct != 200 {
		t.Errorf("%d rows (%d distinct), want 200: a retried batch was written twice", got, distinct)
	}
	if counter(w.duplicates) == 0 {
		t.Error("no duplicate skipped: the lost acknowledgement was not retried")
	}
	checkMonthly(t, pool)
}

func TestPanicInWriterOnRealDatabase(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	db := newFaultyDB(t, pool)
	db.panics = 1
	pr, err := panics.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, Options{DB: db, Batch: 50, FlushInterval: 5 * time.Millisecond, Buffer: 1000, Panics: pr})
	for i := range 120 {
		w.Add(rec(i))
	}
	w.Stop(context.Background()) // after the panic, one more try: everything is written
	if got, _ := rows(t, pool); got != 120 {
		t.Errorf("%d of 120 rows after a panic", got)
	}
	if pr.Count(panics.Ledger) != 1 {
		t.Errorf("ledger panics %v, want 1", pr.Count(panics.Ledger))
	}
}

func TestRestartReplaysTheSpoolOnRealDatabase(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	dir := t.TempDir()
	db := newFaultyDB(t, pool)
	db.setDown(true)
	w := newWriter(t, Options{DB: db, DataDir: dir, Batch: 100, FlushInterval: time.Hour, Buffer: 1000})
	for i := range 250 {
		w.Add(rec(i))
	}
	w.Stop(context.Background()) // the database is away: all to the spool
	if got, _ := rows(t, pool); got != 0 || w.Dropped() != 0 {
		t.Fatalf("%d rows, %v dropped", got, w.Dropped())
	}
	w2 := newWriter(t, Options{DB: pool, DataDir: dir, Batch: 100, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	waitFor(t, "the spool replayed at start", func() bool { got, _ := rows(t, pool); return got == 250 })
	w2.Stop(context.Background())
	if got := counter(w2.lost); got != 0 {
		t.Errorf("lost %v after a clean stop", got)
	}
}

// TestKilledWriterCountsWhatItLost runs a writer in a child process, kills it with SIGKILL
// while it adds records, and starts a writer on the same data directory: every record the
// child accepted is either in PostgreSQL (after the spool is replayed) or counted lost.
func TestKilledWriterCountsWhatItLost(t *testing.T) {
	if os.Getenv("MAAS_LEDGER_CHILD_DIR") != "" {
		killChild()
		return
	}
	pool, url := pgtest.NewPool(t)
	dir := t.TempDir()
	for round := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriterCountsWhatItLost$")
		cmd.Env = append(os.Environ(), "MAAS_LEDGER_CHILD_DIR="+dir, "MAAS_LEDGER_CHILD_DB="+url,
			fmt.Sprintf("MAAS_LEDGER_CHILD_PREFIX=k%d-", round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "adding") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child: %q %v", line, err)
		}
		// Kill it while it adds and writes.
		waitFor(t, "rows from the child", func() bool { got, _ := rows(t, pool); return got > 500*(round+1) })
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
	}
	// Each child used its own slot? No: the first one was dead before the second started.
	accepted := readAccepted(t, statePath(filepath.Join(dir, "ledger")))
	if _, err := os.Stat(filepath.Join(dir, "ledger-1")); err == nil {
		t.Fatal("the second child took another slot: the first one's lock outlived it")
	}
	w := newWriter(t, Options{DB: pool, DataDir: dir, Batch: 500, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	w.Stop(context.Background()) // replays the spool
	lost := int(counter(w.lost))
	var got, distinct int
	if err := pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT request_id) FROM usage_records WHERE request_id LIKE 'k1-%'`).
		Scan(&got, &distinct); err != nil {
		t.Fatal(err)
	}
	t.Logf("second child: accepted %d, in PostgreSQL %d, counted lost %d", accepted, got, lost)
	if got+lost != int(accepted) || got != distinct {
		t.Errorf("accepted %d, written %d (%d distinct), counted lost %d: written + lost must equal accepted", accepted, got, distinct, lost)
	}
	if w.sp.records.Load() != 0 {
		t.Errorf("%d records left in the spool", w.sp.records.Load())
	}
}

// readAccepted reads the records accepted from a state file left by a killed process.
func readAccepted(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < stateSize || string(b[:8]) != stateMagic {
		t.Fatalf("state file: %d bytes, %v", len(b), err)
	}
	return binary.NativeEndian.Uint64(b[offAccepted:])
}

// killChild adds records until it is killed.
func killChild() {
	ctx := context.Background()
	pool, err := pgdb.Connect(ctx, os.Getenv("MAAS_LEDGER_CHILD_DB"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	w, err := New(Options{DB: pool, DataDir: os.Getenv("MAAS_LEDGER_CHILD_DIR"), Batch: 100,
		FlushInterval: 10 * time.Millisecond, Buffer: 300})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	prefix := os.Getenv("MAAS_LEDGER_CHILD_PREFIX")
	fmt.Println("adding")
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		r := rec(i)
		r.RequestID = prefix + r.RequestID
		w.Add(r)
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // about 20,000 records a second at most
		}
	}
	os.Exit(2) // never reached in the test: killed before
}

// TestMigrationDeduplicatesUsageRecords applies 00005 over rows written before it.
func TestMigrationDeduplicatesUsageRecords(t *testing.T) {
	ctx := context.Background()
	pool, err := pgdb.Connect(ctx, pgtest.EmptyDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 4); err != nil {
		t.Fatal(err)
	}
	// a: written twice by a retried batch; b: two requests with the same X-Request-Id; c: once.
	if _, err := pool.Exec(ctx, `INSERT INTO usage_records (request_id, created_at, model, status, prompt_tokens)
		VALUES ('a', '2026-11-30 00:00:00Z', 'm', 200, 1), ('a', '2026-11-30 00:00:00Z', 'm', 200, 1),
		       ('b', '2026-11-30 00:00:01Z', 'm', 200, 1), ('b', '2026-11-30 00:00:02Z', 'm', 200, 2),
		       ('c', '2026-11-30 00:00:03Z', 'm', 200, 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 5); err != nil {
		t.Fatal(err)
	}
	var got []string
	r, err := pool.Query(ctx, `SELECT request_id || '|' || client_request_id FROM usage_records ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var s string
		if err := r.Scan(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if len(got) != 4 || got[0] != "a|" || got[1] != "b|" || !strings.HasPrefix(got[2], "b~") || got[2][len(got[2])-2:] != "|b" || got[3] != "c|" {
		t.Errorf("rows after 00005: %q", got)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO usage_records (request_id, created_at, model, status) VALUES ('c', now(), 'm', 200)`); err == nil {
		t.Error("a second row with request_id 'c' was accepted: request_id is not unique")
	}
	if _, err := p.DownTo(ctx, 4); err != nil {
		t.Fatalf("down from 00005: %v", err)
	}
	if _, err := p.UpTo(ctx, 5); err != nil {
		t.Fatalf("up again: %v", err)
	}
}

// checkMonthly fails t unless usage_monthly holds exactly the sums of usage_records by
// user, key and UTC month: what a batch inserted was added once, what it skipped never.
func checkMonthly(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var diff, groups int
	if err := pool.QueryRow(context.Background(), `WITH r AS (
		SELECT COALESCE(user_id, 0) AS user_id, COALESCE(api_key_id, 0) AS api_key_id,
			date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
			sum(prompt_tokens::bigint + completion_tokens)::bigint AS tokens, count(*) AS requests
		FROM usage_records GROUP BY 1, 2, 3)
		SELECT count(*) FILTER (WHERE r IS DISTINCT FROM m), count(*)
		FROM r FULL JOIN (SELECT user_id, api_key_id, month, tokens, requests FROM usage_monthly) AS m
			USING (user_id, api_key_id, month)`).Scan(&diff, &groups); err != nil {
		t.Fatal(err)
	}
	if diff != 0 {
		t.Errorf("usage_monthly differs from usage_records in %d of %d (user, key, month) sums", diff, groups)
	}
}
