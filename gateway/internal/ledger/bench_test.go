package ledger

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// discardDB takes every batch and forgets it, without even reading it.
type discardDB struct{}

func (discardDB) Begin(ctx context.Context) (pgx.Tx, error) { return discardTx{}, nil }

type discardTx struct{ pgx.Tx }

func (discardTx) CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error) {
	return 0, nil
}
func (discardTx) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	return pgconn.NewCommandTag("INSERT 0 0"), nil
}
func (discardTx) Commit(context.Context) error   { return nil }
func (discardTx) Rollback(context.Context) error { return nil }

// BenchmarkAdd is the hot path: sanitising a clean record, the append under the mutex and
// the increment of the mapped counter, plus the writer loop's take of every 1,000 (done
// here, on the same goroutine: the loop itself is kept idle, so that the batches' writing,
// done at the request rate rather than the benchmark's, is not counted).
func BenchmarkAdd(b *testing.B) {
	w, err := New(Options{DB: discardDB{}, DataDir: b.TempDir(), Batch: 1 << 30, FlushInterval: time.Hour, Buffer: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop(context.Background())
	r := Record{RequestID: "gw-abc-123", ClientRequestID: "c-1", CreatedAt: time.Now(), UserID: 1, KeyID: 2,
		Model: "sim-chat", Backend: "sim-1", Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 10, TTFT: -1}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		w.Add(r)
		if n++; n == 1000 {
			n = 0
			w.take()
			clear(w.memBuf)
			w.memBuf = w.memBuf[:0]
		}
	}
	b.StopTimer()
}

// BenchmarkPipeline is Add plus the writer loop's share, end to end into a database that
// discards the batches: records added one after the other, then Stop.
func BenchmarkPipeline(b *testing.B) {
	w, err := New(Options{DB: discardDB{}, DataDir: b.TempDir(), Batch: 1000, FlushInterval: 10 * time.Millisecond, Buffer: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	r := Record{RequestID: "gw-abc-123", ClientRequestID: "c-1", CreatedAt: time.Now(), UserID: 1, KeyID: 2,
		Model: "sim-chat", Backend: "sim-1", Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 10, TTFT: -1}
	b.ReportAllocs()
	for b.Loop() {
		w.Add(r)
	}
	w.Stop(context.Background())
}

// BenchmarkInsertCost measures what one usage record costs the PostgreSQL backend process
// (user + system CPU read from /proc/<pid>/stat around the run, so the server must be
// local), by way of writing: the Writer's commit (a plain COPY into usage_records), the
// staged COPY + INSERT ... ON CONFLICT it falls back to, a replay (commit of a batch
// already written: the COPY fails on the first record, the staged insert skips them all),
// and a single INSERT ... SELECT FROM unnest(arrays) ON CONFLICT. Each iteration writes one
// batch of 1,000 records with last_used_at updates for 20 keys, after 50 batches written
// to warm the table and its indexes.
//
//	go test -run '^$' -bench InsertCost -benchtime 100x ./gateway/internal/ledger/
func BenchmarkInsertCost(b *testing.B) {
	for _, method := range []string{"commit", "staged", "replay", "unnest"} {
		b.Run(method, func(b *testing.B) {
			_, url := pgtest.NewPool(b)
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			var pid int
			if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				b.Fatal(err)
			}
			var uid int64
			if err := conn.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('bench', 'x') RETURNING id`).Scan(&uid); err != nil {
				b.Fatal(err)
			}
			var keys []int64
			for i := range 20 {
				var id int64
				if err := conn.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'sk-x', $2) RETURNING id`,
					uid, []byte(fmt.Sprintf("%032d", i))).Scan(&id); err != nil {
					b.Fatal(err)
				}
				keys = append(keys, id)
			}
			w := &Writer{o: Options{DB: conn}}
			w.flushes, w.staged = discardHistogram(), prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
			recs := make([]Record, 1000)
			seq := 0
			write := func(method string) error {
				switch method {
				case "staged":
					_, err := w.commitTx(ctx, recs, true, nil, nil)
					return err
				case "unnest":
					return unnestInsert(ctx, w, conn, recs)
				}
				_, err := w.commit(ctx, recs, nil, nil)
				return err
			}
			// run returns the CPU of the writes measured: for a replay only the second write
			// of each batch (read around each, so to the clock tick: unbiased over many).
			run := func(n int) (time.Duration, time.Duration, bool) {
				var cpu time.Duration
				ok := true
				cpu0, ok0 := procCPU(pid)
				start := time.Now()
				for range n {
					for i := range recs {
						seq++
						recs[i] = Record{RequestID: "gw-3kf9a2-" + strconv.FormatInt(int64(seq), 36), CreatedAt: time.Now(), UserID: uid,
							KeyID: keys[seq%len(keys)], Model: "sim-chat", Backend: "sim-1", Endpoint: "/v1/chat/completions", Status: 200,
							PromptTokens: 12, CompletionTokens: 40, TTFT: 3 * time.Millisecond, Duration: 20 * time.Millisecond}
					}
					if method != "replay" {
						if err := write(method); err != nil {
							b.Fatal(err)
						}
						continue
					}
					if err := write("commit"); err != nil {
						b.Fatal(err)
					}
					c0, ok0 := procCPU(pid)
					if err := write("commit"); err != nil {
						b.Fatal(err)
					}
					c1, ok1 := procCPU(pid)
					cpu, ok = cpu+c1-c0, ok && ok0 && ok1
				}
				if method != "replay" {
					cpu1, ok1 := procCPU(pid)
					cpu, ok = cpu1-cpu0, ok0 && ok1
				}
				return cpu, time.Since(start), ok
			}
			run(50)
			b.ResetTimer()
			cpu, wall, ok := run(b.N)
			n := float64(b.N * len(recs))
			if ok {
				b.ReportMetric(float64(cpu)/n/float64(time.Microsecond), "pg-cpu-µs/record")
			}
			b.ReportMetric(float64(wall)/n/float64(time.Microsecond), "wall-µs/record")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// unnestInsert sends the batch as one array per column.
func unnestInsert(ctx context.Context, w *Writer, conn *pgx.Conn, recs []Record) error {
	n := len(recs)
	reqID, client, model, backend, endpoint, errType := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	created := make([]time.Time, n)
	user, key := make([]*int64, n), make([]*int64, n)
	status, prompt, completion := make([]int32, n), make([]int32, n), make([]int32, n)
	estimated, streamed := make([]bool, n), make([]bool, n)
	ttft, dur := make([]*float64, n), make([]float64, n)
	for i := range recs {
		r := &recs[i]
		reqID[i], client[i], model[i], backend[i], endpoint[i], errType[i] = r.RequestID, r.ClientRequestID, r.Model, r.Backend, r.Endpoint, r.ErrorType
		created[i] = r.CreatedAt
		if r.UserID != 0 {
			user[i] = &r.UserID
		}
		if r.KeyID != 0 {
			key[i] = &r.KeyID
		}
		status[i], prompt[i], completion[i] = int32(r.Status), int32(r.PromptTokens), int32(r.CompletionTokens)
		estimated[i], streamed[i] = r.Estimated, r.Streamed
		if r.TTFT >= 0 {
			v := float64(r.TTFT) / float64(time.Millisecond)
			ttft[i] = &v
		}
		dur[i] = float64(r.Duration) / float64(time.Millisecond)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO usage_records (`+strings.Join(columns, ", ")+`)
		SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
			$8::int[], $9::int[], $10::int[], $11::bool[], $12::bool[], $13::float8[], $14::float8[], $15::text[], $16::text[])
		ON CONFLICT (request_id, created_at) DO NOTHING`,
		reqID, created, user, key, model, backend, endpoint, status, prompt, completion, estimated, streamed, ttft, dur, errType, client); err != nil {
		return err
	}
	ids, ats := w.keysUsed(recs)
	if _, err := tx.Exec(ctx, touchKeys, ids, ats); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// procCPU returns the user + system CPU time of process pid.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Fields after the command (which may contain spaces): state is field 3; utime and
	// stime are fields 14 and 15, in clock ticks (100 a second on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * 10 * time.Millisecond, true
}

func discardHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"})
}

// BenchmarkStateAccept is the mapped counter's share of Add: one atomic increment of a
// word in a shared file mapping.
func BenchmarkStateAccept(b *testing.B) {
	st, _, err := openState(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	for b.Loop() {
		st.accept()
	}
}
