package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
)

// flakyDB fails while down is true and keeps what it was given otherwise.
type flakyDB struct {
	mu      sync.Mutex
	down    bool
	rows    int
	batches []int
	fails   int
	touches []touch // committed last_used_at updates, one per batch with keys
}

// touch is one last_used_at update: its key ids and times.
type touch struct {
	IDs []int64
	Ats []time.Time
}

func (f *flakyDB) setDown(d bool) { f.mu.Lock(); f.down = d; f.mu.Unlock() }

func (f *flakyDB) Begin(ctx context.Context) (pgx.Tx, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		f.fails++
		return nil, errors.New("connection refused")
	}
	return &fakeTx{db: f}, nil
}

// fakeTx keeps a batch until Commit. Methods the Writer does not use panic (nil pgx.Tx).
type fakeTx struct {
	pgx.Tx
	db      *flakyDB
	rows    int
	touches []touch
}

func (tx *fakeTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	n := 0
	for src.Next() {
		if _, err := src.Values(); err != nil {
			return 0, err
		}
		n++
	}
	tx.rows += n
	return int64(n), nil
}

func (tx *fakeTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if sql != touchKeys || len(args) != 2 {
		return pgconn.CommandTag{}, fmt.Errorf("unexpected statement %q with %d arguments", sql, len(args))
	}
	// The Writer reuses its slices: copy.
	tx.touches = append(tx.touches, touch{IDs: slices.Clone(args[0].([]int64)), Ats: slices.Clone(args[1].([]time.Time))})
	return pgconn.NewCommandTag("UPDATE 0"), nil
}

func (tx *fakeTx) Commit(ctx context.Context) error {
	f := tx.db
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		f.fails++
		return errors.New("connection reset")
	}
	f.rows += tx.rows
	f.batches = append(f.batches, tx.rows)
	f.touches = append(f.touches, tx.touches...)
	return nil
}

func (tx *fakeTx) Rollback(ctx context.Context) error { return nil }

func (f *flakyDB) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.rows }

func rec(i int) Record {
	return Record{RequestID: fmt.Sprint("r", i), CreatedAt: time.Now(), UserID: 1, KeyID: 2, Model: "m", Status: 200,
		PromptTokens: 3, CompletionTokens: 4, TTFT: -1, Duration: time.Millisecond}
}

func TestBatchesBySizeAndTime(t *testing.T) {
	db := &flakyDB{}
	reg := prometheus.NewRegistry()
	w, err := New(Options{DB: db, Batch: 10, FlushInterval: 20 * time.Millisecond, Buffer: 1000, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		w.Add(rec(i))
	}
	deadline := time.Now().Add(2 * time.Second)
	for db.count() < 25 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 25 written", db.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
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

func TestOutageIsBufferedAndRetried(t *testing.T) {
	db := &flakyDB{down: true}
	w, err := New(Options{DB: db, Batch: 50, FlushInterval: 10 * time.Millisecond, Buffer: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		w.Add(rec(i))
	}
	time.Sleep(100 * time.Millisecond) // several failed attempts
	db.mu.Lock()
	fails := db.fails
	db.mu.Unlock()
	if db.count() != 0 || fails == 0 {
		t.Fatalf("rows %d fails %d during the outage", db.count(), fails)
	}
	db.setDown(false)
	deadline := time.Now().Add(10 * time.Second)
	for db.count() < 300 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 300 written after the outage", db.count())
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.Stop(context.Background())
	if w.Dropped() != 0 {
		t.Errorf("dropped %v", w.Dropped())
	}
}

func TestBufferBoundCountsDrops(t *testing.T) {
	db := &flakyDB{down: true}
	w, err := New(Options{DB: db, Batch: 10, FlushInterval: 10 * time.Millisecond, Buffer: 20})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		w.Add(rec(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	w.Stop(ctx) // cannot flush: the buffered 20 are counted too
	if got := w.Dropped(); got != 50 {
		t.Errorf("dropped %v, want 50 (30 over the bound + 20 unflushable at shutdown)", got)
	}
	w.Add(rec(99))
	if got := w.Dropped(); got != 51 {
		t.Errorf("add after stop: dropped %v, want 51", got)
	}
}

func TestStopFlushes(t *testing.T) {
	db := &flakyDB{}
	w, _ := New(Options{DB: db, Batch: 1000, FlushInterval: time.Hour, Buffer: 1000})
	for i := range 7 {
		w.Add(rec(i))
	}
	w.Stop(context.Background())
	w.Stop(context.Background()) // idempotent
	if db.count() != 7 {
		t.Errorf("%d of 7 written at stop", db.count())
	}
}

// slowDB takes a while per batch, like a busy database.
type slowDB struct {
	flakyDB
	delay time.Duration
}

func (s *slowDB) Begin(ctx context.Context) (pgx.Tx, error) {
	time.Sleep(s.delay)
	return s.flakyDB.Begin(ctx)
}

func TestBurstWithinBufferIsNotDropped(t *testing.T) {
	// 10,000 streams ending at once while a COPY is running: every record is within the
	// buffer bound, so none may be dropped.
	db := &slowDB{delay: 20 * time.Millisecond}
	w, err := New(Options{DB: db, Batch: 1000, FlushInterval: 10 * time.Millisecond, Buffer: 200000})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 2500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				w.Add(rec(g*each + i))
			}
		}()
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

func TestLastUsedOncePerBatch(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	keyed := func(key int64, sec int) Record {
		r := rec(sec)
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
			db := &flakyDB{}
			// FlushInterval: the batches below are cut by size or by Stop only.
			w, err := New(Options{DB: db, Batch: tc.batch, FlushInterval: time.Hour, Buffer: 1000})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tc.recs {
				// One batch at a time, so that the batches are the records in order.
				w.Add(r)
				deadline := time.Now().Add(5 * time.Second)
				for w.queued() >= tc.batch {
					if time.Now().After(deadline) {
						t.Fatal("a full batch was not written")
					}
					time.Sleep(time.Millisecond)
				}
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
	return len(w.intake) + w.pending
}
