package embedded

import (
	"context"
	"slices"
	"testing"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/control/internal/vectorindex/indextest"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

func TestConformance(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	indextest.Run(t, New(pool, Options{}), indextest.Options{})
}

// A tiny cache bound forces a load per search (nothing kept): results must not change.
func TestConformanceNoCache(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	indextest.Run(t, New(pool, Options{CacheBytes: 1, Parallelism: 3}), indextest.Options{})
}

// Two indexes on one database stand for two control replicas: a write through one is seen
// by the next search through the other, whose cached copy is older.
func TestReplicasSeeEachOthersWrites(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	a, b := New(pool, Options{}), New(pool, Options{})
	ctx := context.Background()
	q := vectorindex.Query{StoreID: "vs_r", Vector: []float32{1, 0}, K: 5}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	got := func(x *Index) []string {
		t.Helper()
		hits, err := x.Search(ctx, q)
		must(err)
		var out []string
		for _, h := range hits {
			out = append(out, h.ChunkID)
		}
		return out
	}
	must(a.Upsert(ctx, []vectorindex.Chunk{{StoreID: "vs_r", FileID: "f1", ChunkID: "c1", Vector: []float32{1, 0}}}))
	if g := got(b); !slices.Equal(g, []string{"c1"}) {
		t.Fatalf("b before: %v", g)
	}
	must(a.Upsert(ctx, []vectorindex.Chunk{{StoreID: "vs_r", FileID: "f2", ChunkID: "c2", Vector: []float32{1, 1}}}))
	if g := got(b); !slices.Equal(g, []string{"c1", "c2"}) {
		t.Fatalf("b after a's upsert: %v", g)
	}
	must(a.DeleteFile(ctx, "vs_r", "f1"))
	if g := got(b); !slices.Equal(g, []string{"c2"}) {
		t.Fatalf("b after a's delete: %v", g)
	}
	// Deleted and refilled: the version is new even though the store row is.
	must(a.DeleteStore(ctx, "vs_r"))
	must(a.Upsert(ctx, []vectorindex.Chunk{{StoreID: "vs_r", FileID: "f3", ChunkID: "c3", Vector: []float32{0, 1}}}))
	if g := got(b); !slices.Equal(g, []string{"c3"}) {
		t.Fatalf("b after a's delete and refill: %v", g)
	}
}

// Writes made with vectorindex.WithTx commit and roll back with the caller's transaction.
func TestWritesInCallersTransaction(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	x := New(pool, Options{})
	ctx := context.Background()
	search := func() int {
		t.Helper()
		hits, err := x.Search(ctx, vectorindex.Query{StoreID: "vs_tx", Vector: []float32{1, 0}, K: 5})
		if err != nil {
			t.Fatal(err)
		}
		return len(hits)
	}
	for _, commit := range []bool{false, true} {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tctx := vectorindex.WithTx(ctx, tx)
		if err := x.Upsert(tctx, []vectorindex.Chunk{{StoreID: "vs_tx", FileID: "f", ChunkID: "c", Vector: []float32{1, 0}}}); err != nil {
			t.Fatal(err)
		}
		if n := search(); n != 0 {
			t.Fatalf("uncommitted upsert visible: %d hits", n)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]int{false: 0, true: 1}[commit]
		if n := search(); n != want {
			t.Fatalf("commit=%v: %d hits, want %d", commit, n, want)
		}
	}
}
