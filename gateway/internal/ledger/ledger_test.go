package ledger

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// flakyDB fails while down is true and keeps what it was given otherwise.
type flakyDB struct {
	mu      sync.Mutex
	down    bool
	rows    int
	batches []int
	fails   int
}

func (f *flakyDB) setDown(d bool) { f.mu.Lock(); f.down = d; f.mu.Unlock() }

func (f *flakyDB) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		f.fails++
		return 0, errors.New("connection refused")
	}
	n := 0
	for src.Next() {
		if _, err := src.Values(); err != nil {
			return 0, err
		}
		n++
	}
	f.rows += n
	f.batches = append(f.batches, n)
	return int64(n), nil
}

func (f *flakyDB) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.rows }

func rec(i int) Record {
	return Record{RequestID: fmt.Sprint("r", i), CreatedAt: time.Now(), UserID: 1, KeyID: 2, Model: "m", Status: 200,
		PromptTokens: 3, CompletionTokens: 4, TTFT: -1, Duration: time.Millisecond}
}

func TestBatchesBySizeAndTime(t *testing.T) {
	db := &flakyDB{}
	w, err := New(Options{DB: db, Batch: 10, FlushInterval: 20 * time.Millisecond, Buffer: 1000, Registerer: prometheus.NewRegistry()})
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

// slowDB takes a while per COPY, like a busy database.
type slowDB struct {
	flakyDB
	delay time.Duration
}

func (s *slowDB) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	time.Sleep(s.delay)
	return s.flakyDB.CopyFrom(ctx, table, cols, src)
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
