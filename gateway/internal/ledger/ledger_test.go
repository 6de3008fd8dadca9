package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/gateway/internal/panics"
)

// fakeDB keeps committed rows by request id, like usage_records with its unique index. It
// fails while down is true; failCommit makes commits apply and then report an error (a lost
// acknowledgement); panics makes the next Begin panic.
type fakeDB struct {
	mu         sync.Mutex
	down       bool
	failCommit int
	panics     int
	refuse     string // a model value refused with a data error (SQLSTATE 22021)
	ids        map[string]int
	order      []string
	batches    []int
	fails      int
	touches    []touch // committed last_used_at updates, one per batch with keys
	block      chan struct{}
}

// touch is one last_used_at update: its key ids and times.
type touch struct {
	IDs []int64
	Ats []time.Time
}

func (f *fakeDB) setDown(d bool) { f.mu.Lock(); f.down = d; f.mu.Unlock() }

func (f *fakeDB) Begin(ctx context.Context) (pgx.Tx, error) {
	f.mu.Lock()
	block := f.block
	if f.panics > 0 {
		f.panics--
		f.mu.Unlock()
		panic("injected")
	}
	if f.down {
		f.fails++
		f.mu.Unlock()
		return nil, errors.New("dial tcp 127.0.0.1:5432: connection refused")
	}
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &fakeTx{db: f}, nil
}

// fakeTx keeps a batch until Commit. Methods the Writer does not use panic (nil pgx.Tx).
type fakeTx struct {
	pgx.Tx
	db      *fakeDB
	staged  []string
	touches []touch
}

func (tx *fakeTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	n := 0
	for src.Next() {
		v, err := src.Values()
		if err != nil {
			return 0, err
		}
		if tx.db.refuse != "" && v[4] == tx.db.refuse {
			return 0, &pgconn.PgError{Code: "22021", Message: "invalid byte sequence for encoding \"UTF8\""}
		}
		id := v[0].(string)
		if table[0] == "usage_records" {
			// Straight into the table: a request id already there fails the COPY.
			tx.db.mu.Lock()
			dup := tx.db.ids[id] != 0
			tx.db.mu.Unlock()
			if dup || slices.Contains(tx.staged, id) {
				return 0, &pgconn.PgError{Code: "23505", Message: "duplicate key value violates unique constraint \"usage_records_y2026m11_pkey\""}
			}
		}
		tx.staged = append(tx.staged, id)
		n++
	}
	return int64(n), nil
}

func (tx *fakeTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	switch sql {
	case createStage:
		return pgconn.NewCommandTag("CREATE TABLE"), nil
	case addMonthly:
		return pgconn.NewCommandTag(fmt.Sprintf("INSERT 0 %d", len(args[0].([]int64)))), nil
	case touchKeys:
		// The Writer reuses its slices: copy.
		tx.touches = append(tx.touches, touch{IDs: slices.Clone(args[0].([]int64)), Ats: slices.Clone(args[1].([]time.Time))})
		return pgconn.NewCommandTag("UPDATE 0"), nil
	}
	return pgconn.CommandTag{}, fmt.Errorf("unexpected statement %q", sql)
}

// QueryRow answers insertStaged: the count of staged records not yet committed.
func (tx *fakeTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if sql != insertStaged {
		return errRow{fmt.Errorf("unexpected statement %q", sql)}
	}
	tx.db.mu.Lock()
	defer tx.db.mu.Unlock()
	n := 0
	for _, id := range tx.staged {
		if tx.db.ids[id] == 0 && !slices.Contains(tx.staged[:n], id) {
			n++
		}
	}
	return countRow(n)
}

type countRow int64

func (c countRow) Scan(dest ...any) error { *dest[0].(*int64) = int64(c); return nil }

type errRow struct{ err error }

func (e errRow) Scan(...any) error { return e.err }

func (tx *fakeTx) Commit(ctx context.Context) error {
	f := tx.db
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		f.fails++
		return errors.New("connection reset by peer")
	}
	if f.ids == nil {
		f.ids = map[string]int{}
	}
	for _, id := range tx.staged {
		if f.ids[id] == 0 {
			f.order = append(f.order, id)
		}
		f.ids[id]++
	}
	f.batches = append(f.batches, len(tx.staged))
	f.touches = append(f.touches, tx.touches...)
	if f.failCommit > 0 {
		f.failCommit--
		return errors.New("read tcp: connection reset by peer") // applied, but not acknowledged
	}
	return nil
}

func (tx *fakeTx) Rollback(ctx context.Context) error { return nil }

// count returns the distinct rows committed.
func (f *fakeDB) count() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.order) }

func rec(i int) Record {
	return Record{RequestID: fmt.Sprint("r", i), CreatedAt: time.Now(), UserID: 1, KeyID: 2, Model: "m", Status: 200,
		PromptTokens: 3, CompletionTokens: 4, TTFT: -1, Duration: time.Millisecond}
}

func newWriter(t *testing.T, o Options) *Writer {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	w, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func counter(c prometheus.Counter) float64 { return dtoCounter{}.read(c) }

func TestBatchesBySizeAndTime(t *testing.T) {
	db := &fakeDB{}
	reg := prometheus.NewRegistry()
	w := newWriter(t, Options{DB: db, Batch: 10, FlushInterval: 20 * time.Millisecond, Buffer: 1000, Registerer: reg})
	for i := range 25 {
		w.Add(rec(i))
	}
	waitFor(t, "25 rows", func() bool { return db.count() == 25 })
	for _, b := range db.batches {
		if b > 10 {
			t.Errorf("batch of %d, limit 10", b)
		}
	}
	w.Stop(context.Background())
	if w.Dropped() != 0 {
		t.Errorf("dropped %v", w.Dropped())
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	written := -1.0
	for _, f := range fams {
		if f.GetName() == "maas_gateway_usage_records_written_total" {
			written = f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if written != 25 {
		t.Errorf("maas_gateway_usage_records_written_total = %v, want 25", written)
	}
}

func TestOutageIsSpooledAndReplayedInOrder(t *testing.T) {
	db := &fakeDB{down: true}
	// Buffer 20: without a spool, 300 records during an outage could not be held.
	w := newWriter(t, Options{DB: db, Batch: 50, FlushInterval: 5 * time.Millisecond, Buffer: 20})
	for i := range 300 {
		w.Add(rec(i))
	}
	waitFor(t, "the records in the spool, a failed attempt", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		return w.sp.records.Load() == 300 && db.fails > 0
	})
	if db.count() != 0 {
		t.Fatalf("rows %d during the outage", db.count())
	}
	if w.held.Load() != 0 {
		t.Errorf("%d records held in memory during the outage", w.held.Load())
	}
	db.setDown(false)
	waitFor(t, "300 rows after the outage", func() bool { return db.count() == 300 })
	w.Stop(context.Background())
	if w.Dropped() != 0 {
		t.Errorf("dropped %v", w.Dropped())
	}
	for i, id := range db.order {
		if id != fmt.Sprint("r", i) {
			t.Fatalf("row %d is %s: replayed out of order", i, id)
		}
	}
	if w.sp.records.Load() != 0 || w.sp.bytes.Load() != 0 {
		t.Errorf("spool after replay: %d records, %d bytes", w.sp.records.Load(), w.sp.bytes.Load())
	}
}

func TestStopWithDatabaseDownSpoolsAndNextStartReplays(t *testing.T) {
	dir := t.TempDir()
	db := &fakeDB{down: true}
	w := newWriter(t, Options{DB: db, DataDir: dir, Batch: 10, FlushInterval: time.Hour, Buffer: 1000})
	for i := range 25 {
		w.Add(rec(i))
	}
	w.Stop(context.Background())
	if w.Dropped() != 0 {
		t.Errorf("dropped %v at stop with the database down", w.Dropped())
	}
	w.Add(rec(99))
	if got := w.Dropped(); got != 1 {
		t.Errorf("add after stop: dropped %v, want 1", got)
	}

	db.setDown(false)
	w2 := newWriter(t, Options{DB: db, DataDir: dir, Batch: 10, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	waitFor(t, "the spool replayed", func() bool { return db.count() == 25 })
	w2.Stop(context.Background())
	if n := counter(w2.lost); n != 0 {
		t.Errorf("lost %v after a clean stop", n)
	}
}

func TestLostAcknowledgementWritesNothingTwice(t *testing.T) {
	db := &fakeDB{failCommit: 1}
	w := newWriter(t, Options{DB: db, Batch: 10, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	for i := range 10 {
		w.Add(rec(i))
	}
	waitFor(t, "the retry", func() bool { return counter(w.duplicates) == 10 })
	w.Stop(context.Background())
	for id, n := range db.ids {
		if n != 2 {
			t.Errorf("%s written %d times, want 2 (once, then again as a duplicate)", id, n)
		}
	}
	if db.count() != 10 {
		t.Errorf("%d distinct rows, want 10", db.count())
	}
}

func TestPoisonIsDeadLettered(t *testing.T) {
	db := &fakeDB{refuse: "poison"}
	w := newWriter(t, Options{DB: db, Batch: 100, FlushInterval: 5 * time.Millisecond, Buffer: 1000})
	for i := range 100 {
		r := rec(i)
		if i == 37 || i == 80 {
			r.Model = "poison"
		}
		w.Add(r)
	}
	waitFor(t, "98 rows", func() bool { return db.count() == 98 })
	w.Stop(context.Background())
	if got := counter(w.deadLetters); got != 2 {
		t.Errorf("dead letters %v, want 2", got)
	}
	lines := readLines(t, w.deadPath)
	if len(lines) != 2 || !strings.Contains(lines[0], `"request_id":"r37"`) || !strings.Contains(lines[1], `"sqlstate":"22021"`) {
		t.Errorf("dead-letter file:\n%s", strings.Join(lines, "\n"))
	}
}

func TestPanicInWriterKeepsTheBatch(t *testing.T) {
	db := &fakeDB{panics: 1}
	rec0, err := panics.New(nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, Options{DB: db, Batch: 10, FlushInterval: 5 * time.Millisecond, Buffer: 1000, Panics: rec0})
	for i := range 25 {
		w.Add(rec(i))
	}
	waitFor(t, "25 rows", func() bool { return db.count() == 25 })
	w.Stop(context.Background())
	if got := rec0.Count(panics.Ledger); got != 1 {
		t.Errorf("panics counted %v, want 1", got)
	}
	if w.Dropped() != 0 {
		t.Errorf("dropped %v", w.Dropped())
	}
}

func TestStopFlushes(t *testing.T) {
	db := &fakeDB{}
	w := newWriter(t, Options{DB: db, Batch: 1000, FlushInterval: time.Hour, Buffer: 1000})
	for i := range 7 {
		w.Add(rec(i))
	}
	w.Stop(context.Background())
	w.Stop(context.Background()) // idempotent
	if db.count() != 7 {
		t.Errorf("%d of 7 written at stop", db.count())
	}
}

func TestStopWhileTheDatabaseHangs(t *testing.T) {
	// A COMMIT that never answers: Stop's context ends, the batch goes to the spool.
	dir := t.TempDir()
	db := &fakeDB{block: make(chan struct{})}
	w := newWriter(t, Options{DB: db, DataDir: dir, Batch: 5, FlushInterval: time.Millisecond, Buffer: 1000})
	for i := range 5 {
		w.Add(rec(i))
	}
	waitFor(t, "a batch in flight", func() bool { return w.held.Load() == 5 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	w.Stop(ctx)
	if w.Dropped() != 0 {
		t.Fatalf("dropped %v", w.Dropped())
	}
	close(db.block)
	db.mu.Lock()
	db.block = nil
	db.mu.Unlock()
	w2 := newWriter(t, Options{DB: db, DataDir: dir, Batch: 5, FlushInterval: time.Millisecond, Buffer: 1000})
	waitFor(t, "the spool replayed", func() bool { return db.count() == 5 })
	w2.Stop(context.Background())
}

func TestBurstWithinBufferIsNotDropped(t *testing.T) {
	// 20,000 records from 8 goroutines at once while batches are being written.
	db := &fakeDB{}
	w := newWriter(t, Options{DB: db, Batch: 1000, FlushInterval: 10 * time.Millisecond, Buffer: 5000})
	const writers, each = 8, 2500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				w.Add(rec(g*each + i))
			}
		})
	}
	wg.Wait()
	if err := w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := w.Dropped(); got != 0 {
		t.Errorf("dropped %v of %d", got, writers*each)
	}
	if got := db.count(); got != writers*each {
		t.Errorf("%d of %d written", got, writers*each)
	}
}

func TestSlotsOfASharedDataDirectory(t *testing.T) {
	dir := t.TempDir()
	a := newWriter(t, Options{DB: &fakeDB{}, DataDir: dir, Batch: 10, FlushInterval: time.Hour, Buffer: 100})
	b := newWriter(t, Options{DB: &fakeDB{}, DataDir: dir, Batch: 10, FlushInterval: time.Hour, Buffer: 100})
	if a.Dir() == b.Dir() {
		t.Errorf("two writers share %s", a.Dir())
	}
	a.Stop(context.Background())
	b.Stop(context.Background())
}

func TestLastUsedOncePerBatch(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	n := 0
	keyed := func(key int64, sec int) Record {
		r := rec(n)
		n++
		r.KeyID, r.CreatedAt = key, at(sec)
		return r
	}
	for _, tc := range []struct {
		name  string
		batch int
		recs  []Record
		want  []touch
	}{
		{"latest time per key, ids sorted", 10,
			[]Record{keyed(5, 2), keyed(3, 0), keyed(5, 0), keyed(0, 9), keyed(5, 1)},
			[]touch{{IDs: []int64{3, 5}, Ats: []time.Time{at(0), at(2)}}}},
		{"one update per batch", 2,
			[]Record{keyed(7, 1), keyed(7, 2), keyed(7, 3), keyed(8, 4), keyed(7, 0)},
			[]touch{{IDs: []int64{7}, Ats: []time.Time{at(2)}}, {IDs: []int64{7, 8}, Ats: []time.Time{at(3), at(4)}},
				{IDs: []int64{7}, Ats: []time.Time{at(0)}}}},
		{"no key, no update", 10, []Record{keyed(0, 1), keyed(0, 2)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := &fakeDB{}
			// FlushInterval: the batches below are cut by size or by Stop only.
			w := newWriter(t, Options{DB: db, Batch: tc.batch, FlushInterval: time.Hour, Buffer: 1000})
			for _, r := range tc.recs {
				// One batch at a time, so that the batches are the records in order.
				w.Add(r)
				waitFor(t, "a full batch written", func() bool { return w.queued() < tc.batch })
			}
			if err := w.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, db.touches); diff != "" {
				t.Errorf("last_used_at updates (-want +got):\n%s", diff)
			}
		})
	}
}

// queued is how many records are added and not yet written.
func (w *Writer) queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.intake) + int(w.held.Load())
}
