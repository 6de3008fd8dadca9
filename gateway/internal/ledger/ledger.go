// Package ledger writes the usage ledger: one usage_records row per request, buffered in
// memory and written in batches with COPY, by size or by time. The same transaction moves
// api_keys.last_used_at forward for the keys of the batch (one UPDATE per batch). While
// PostgreSQL is unreachable records are held in a bounded buffer and retried; anything that
// cannot be held is dropped and counted in maas_usage_records_dropped_total. Stop flushes.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// Record is one request's usage.
type Record struct {
	RequestID        string
	CreatedAt        time.Time
	UserID           int64 // 0: unknown (NULL)
	KeyID            int64 // 0: unknown (NULL)
	Model            string
	Backend          string
	Endpoint         string
	Status           int
	PromptTokens     int64
	CompletionTokens int64
	Estimated        bool
	Streamed         bool
	TTFT             time.Duration // < 0: none (NULL)
	Duration         time.Duration
	ErrorType        string
}

// DB is what the Writer needs of a pool (pgxpool.Pool implements it): each batch is one
// transaction with a COPY and an UPDATE.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Options configures a Writer.
type Options struct {
	DB            DB
	Batch         int           // records per COPY at most
	FlushInterval time.Duration // longest a record waits
	Buffer        int           // records held while the database is unreachable
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{Batch: 1000, FlushInterval: 200 * time.Millisecond, Buffer: 200000}
}

var columns = []string{"request_id", "created_at", "user_id", "api_key_id", "model", "backend_id", "endpoint",
	"status", "prompt_tokens", "completion_tokens", "estimated", "streamed", "ttft_ms", "duration_ms", "error_type"}

// Writer batches records into usage_records. Add is safe for concurrent use.
//
// Add appends to a slice under a mutex and wakes the writer loop only when a batch is full;
// otherwise the loop collects on its timer. (A channel send per record woke the loop for
// every request, and a bounded channel dropped records in bursts even with room to spare.)
type Writer struct {
	o    Options
	kick chan struct{} // a batch is ready (capacity 1)
	stop chan context.Context
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	intake  []Record // added, not yet taken by the loop
	spare   []Record // the loop's empty slice, swapped with intake
	closed  bool
	pending int // taken by the loop and not yet written

	dropped prometheus.Counter
	written prometheus.Counter
	errors  prometheus.Counter
	flushes prometheus.Histogram

	// Scratch of the writer loop for the last_used_at update, reused across batches.
	lastUsed map[int64]time.Time
	keyIDs   []int64
	keyTimes []time.Time
}

// New starts a Writer.
func New(o Options) (*Writer, error) {
	if o.DB == nil {
		return nil, errors.New("ledger: Options.DB is required")
	}
	if o.Batch <= 0 || o.FlushInterval <= 0 || o.Buffer <= 0 {
		return nil, errors.New("ledger: Batch, FlushInterval and Buffer must be positive")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Writer{
		o:    o,
		kick: make(chan struct{}, 1),
		stop: make(chan context.Context),
		done: make(chan struct{}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "maas_usage_records_dropped_total",
			Help: "Usage records lost because the in-memory buffer was full or shutdown could not flush them. Must stay 0."}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "maas_gateway_usage_records_written_total",
			Help: "Usage records written to PostgreSQL."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "maas_gateway_usage_flush_errors_total",
			Help: "Failed COPY batches (retried)."}),
		flushes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "maas_gateway_usage_flush_seconds",
			Help: "Duration of one COPY of usage records.", Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12)}),
	}
	if o.Registerer != nil {
		depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "maas_gateway_usage_queue_depth",
			Help: "Usage records waiting to be written."}, func() float64 {
			w.mu.Lock()
			defer w.mu.Unlock()
			return float64(len(w.intake) + w.pending)
		})
		for _, c := range []prometheus.Collector{w.dropped, w.written, w.errors, w.flushes, depth} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	go w.run()
	return w, nil
}

// Add queues r without blocking. When Buffer records are held already, or after Stop, r
// is dropped and counted.
func (w *Writer) Add(r Record) {
	w.mu.Lock()
	if w.closed || len(w.intake)+w.pending >= w.o.Buffer {
		w.mu.Unlock()
		w.dropped.Inc()
		return
	}
	w.intake = append(w.intake, r)
	full := len(w.intake) == w.o.Batch
	w.mu.Unlock()
	if full {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// Dropped returns how many records were dropped so far.
func (w *Writer) Dropped() float64 {
	var m = &dtoCounter{}
	return m.read(w.dropped)
}

// Stop stops accepting records and writes what is buffered, retrying until ctx ends;
// records still unwritten then are counted as dropped. Idempotent.
func (w *Writer) Stop(ctx context.Context) error {
	w.once.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		w.stop <- ctx
	})
	<-w.done
	return nil
}

// take moves the records added since the last call to the end of buf.
func (w *Writer) take(buf []Record) []Record {
	w.mu.Lock()
	in := w.intake
	w.intake = w.spare
	w.pending = len(buf) + len(in)
	w.mu.Unlock()
	buf = append(buf, in...)
	clear(in)
	if cap(in) > 4*w.o.Batch { // grown during an outage: let it go
		in = nil
	}
	w.mu.Lock()
	w.spare = in[:0]
	w.mu.Unlock()
	return buf
}

// setPending records how many taken records are still unwritten.
func (w *Writer) setPending(buf []Record) {
	w.mu.Lock()
	w.pending = len(buf)
	w.mu.Unlock()
}

func (w *Writer) run() {
	defer close(w.done)
	var buf []Record
	timer := time.NewTimer(w.o.FlushInterval)
	defer timer.Stop()
	backoff := time.Duration(0)
	var retryAt time.Time

	flush := func(ctx context.Context) bool {
		for len(buf) > 0 {
			n := min(len(buf), w.o.Batch)
			if err := w.copy(ctx, buf[:n]); err != nil {
				w.errors.Inc()
				if backoff == 0 {
					w.o.Logger.Warn("ledger: cannot write usage records, buffering and retrying", "err", err, "buffered", len(buf))
				}
				backoff = min(max(backoff*2, 100*time.Millisecond), 5*time.Second)
				retryAt = time.Now().Add(backoff)
				return false
			}
			if backoff != 0 {
				w.o.Logger.Info("ledger: writing usage records again")
				backoff = 0
			}
			clear(buf[:n])
			buf = append(buf[:0], buf[n:]...)
			w.setPending(buf)
		}
		return true
	}

	for {
		select {
		case <-w.kick:
			if time.Now().After(retryAt) {
				buf = w.take(buf)
				flush(context.Background())
			}
		case <-timer.C:
			buf = w.take(buf)
			if time.Now().After(retryAt) {
				flush(context.Background())
			}
			timer.Reset(w.o.FlushInterval)
		case ctx := <-w.stop:
			buf = w.take(buf) // closed: nothing is added after this
			for !flush(ctx) {
				select {
				case <-ctx.Done():
					w.o.Logger.Error("ledger: shutdown before usage records could be written", "lost", len(buf))
					w.dropped.Add(float64(len(buf)))
					return
				case <-time.After(backoff):
				}
			}
			return
		}
	}
}

// touchKeys moves api_keys.last_used_at forward: $1 are key ids (sorted, distinct), $2
// the latest request time of each. Rows are locked in id order first, so that gateways
// flushing overlapping keys at the same time wait for each other instead of deadlocking;
// rows already as recent are neither locked nor written. Only last_used_at is set: the
// api_keys NOTIFY trigger ignores that column, so this causes no snapshot reload.
const touchKeys = `WITH used AS (
    SELECT k.id, t.at
    FROM unnest($1::bigint[], $2::timestamptz[]) AS t (id, at)
    JOIN api_keys AS k ON k.id = t.id
    WHERE k.last_used_at IS NULL OR k.last_used_at < t.at
    ORDER BY k.id
    FOR NO KEY UPDATE OF k
)
UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, used.at)
FROM used WHERE k.id = used.id`

// copy writes recs and their keys' last_used_at in one transaction: a failed batch is
// retried whole, never written twice.
func (w *Writer) copy(ctx context.Context, recs []Record) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tx, err := w.o.DB.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin usage batch: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // no-op once committed
	i := 0
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"usage_records"}, columns, pgx.CopyFromFunc(func() ([]any, error) {
		if i >= len(recs) {
			return nil, nil
		}
		r := &recs[i]
		i++
		var user, key, ttft any
		if r.UserID != 0 {
			user = r.UserID
		}
		if r.KeyID != 0 {
			key = r.KeyID
		}
		if r.TTFT >= 0 {
			ttft = float64(r.TTFT) / float64(time.Millisecond)
		}
		return []any{r.RequestID, r.CreatedAt, user, key, r.Model, r.Backend, r.Endpoint, int32(r.Status),
			int32(r.PromptTokens), int32(r.CompletionTokens), r.Estimated, r.Streamed, ttft,
			float64(r.Duration) / float64(time.Millisecond), r.ErrorType}, nil
	}))
	if err != nil {
		return fmt.Errorf("copy usage records: %w", err)
	}
	if ids, ats := w.keysUsed(recs); len(ids) > 0 {
		if _, err := tx.Exec(ctx, touchKeys, ids, ats); err != nil {
			return fmt.Errorf("set last_used_at of %d keys: %w", len(ids), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit usage batch: %w", err)
	}
	w.flushes.Observe(time.Since(start).Seconds())
	w.written.Add(float64(len(recs)))
	return nil
}

// keysUsed returns the keys of recs, sorted by id, with the latest CreatedAt of each.
// The slices are the Writer's scratch, valid until the next call.
func (w *Writer) keysUsed(recs []Record) ([]int64, []time.Time) {
	if w.lastUsed == nil {
		w.lastUsed = map[int64]time.Time{}
	}
	clear(w.lastUsed)
	for i := range recs {
		r := &recs[i]
		if r.KeyID == 0 {
			continue
		}
		if at, ok := w.lastUsed[r.KeyID]; !ok || r.CreatedAt.After(at) {
			w.lastUsed[r.KeyID] = r.CreatedAt
		}
	}
	w.keyIDs, w.keyTimes = w.keyIDs[:0], w.keyTimes[:0]
	for id := range w.lastUsed {
		w.keyIDs = append(w.keyIDs, id)
	}
	slices.Sort(w.keyIDs)
	for _, id := range w.keyIDs {
		w.keyTimes = append(w.keyTimes, w.lastUsed[id])
	}
	return w.keyIDs, w.keyTimes
}
