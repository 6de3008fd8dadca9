package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/riverqueue/river"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

type noteArgs struct {
	Note string `json:"note"`
}

func (noteArgs) Kind() string { return "test.note" }

type noteWorker struct {
	river.WorkerDefaults[noteArgs]
	seen chan string
}

func (w *noteWorker) Work(_ context.Context, j *river.Job[noteArgs]) error {
	w.seen <- j.Args.Note
	return nil
}

// A job inserted in a transaction exists exactly when the transaction commits.
func TestInsertTxFollowsTheTransaction(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	if _, err := Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := Migrate(ctx, pool, nil); err != nil || n != 0 {
		t.Fatalf("second migrate: %d, %v", n, err)
	}
	cur, latest, err := SchemaVersion(ctx, pool)
	if err != nil || cur != latest || latest == 0 {
		t.Fatalf("schema version %d of %d (%v)", cur, latest, err)
	}
	q := New(pool, Options{PollInterval: 20 * time.Millisecond})
	w := &noteWorker{seen: make(chan string, 4)}
	river.AddWorker(q.Workers(), w)
	if _, err := q.InsertTx(ctx, nil, noteArgs{}, nil); err != ErrNotStarted {
		t.Fatalf("insert before start: %v", err)
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer q.Stop(ctx) //nolint:errcheck

	for _, commit := range []bool{false, true} {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		note := "rolled back"
		if commit {
			note = "committed"
		}
		if _, err := q.InsertTx(ctx, tx, noteArgs{Note: note}, nil); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	select {
	case got := <-w.seen:
		if got != "committed" {
			t.Fatalf("worked %q", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the committed job was not worked")
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("river_job rows %d (%v), want only the committed one", n, err)
	}
}
