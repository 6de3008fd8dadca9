package embedded

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// BenchmarkSearch100k measures one search over a store of 100,000 chunks of 384 dimensions
// (MAAS_BENCH_CHUNKS and MAAS_BENCH_DIMS change them), loaded once, with a filter that keeps
// about half the chunks (files carry attributes; 1,000 files of 100 chunks), k = 10. It
// reports the p50 and p99 latency of the searches it ran and the memory of the loaded store.
// Run by bench/relevance's script (go test -run '^$' -bench Search100k -benchtime 200x).
func BenchmarkSearch100k(b *testing.B) {
	n, dims := envInt("MAAS_BENCH_CHUNKS", 100_000), envInt("MAAS_BENCH_DIMS", 384)
	pool, _ := pgtest.NewPool(b)
	x := New(pool, Options{CacheBytes: 2 << 30})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 11))
	const perFile = 100
	start := time.Now()
	batch := make([]vectorindex.Chunk, 0, 2000)
	for i := range n {
		v := make([]float32, dims)
		for d := range v {
			v[d] = float32(rng.NormFloat64())
		}
		f := i / perFile
		batch = append(batch, vectorindex.Chunk{StoreID: "vs_bench", FileID: fmt.Sprintf("file-%05d", f),
			ChunkID: fmt.Sprintf("file-%05d-%d", f, i%perFile), Vector: v,
			Attributes: map[string]any{"lang": []string{"en", "fr"}[f%2], "year": float64(2000 + f%25)}})
		if len(batch) == cap(batch) || i == n-1 {
			if err := x.Upsert(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	b.Logf("inserted %d chunks of %d dims in %v", n, dims, time.Since(start).Round(time.Millisecond))
	filter, err := vectorindex.ParseFilter([]byte(`{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"gte","key":"year","value":2000}]}`))
	if err != nil {
		b.Fatal(err)
	}
	q := vectorindex.Query{StoreID: "vs_bench", K: 10, Filter: filter}
	q.Vector = make([]float32, dims)
	for d := range q.Vector {
		q.Vector[d] = float32(rng.NormFloat64())
	}
	start = time.Now()
	if _, err := x.Search(ctx, q); err != nil { // the load
		b.Fatal(err)
	}
	b.Logf("first search (loads the store) %v, store in memory %d MiB", time.Since(start).Round(time.Millisecond), x.used>>20)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		q.Filter = filter
		if i%4 == 3 {
			q.Filter = nil // one search in four unfiltered
		}
		t0 := time.Now()
		hits, err := x.Search(ctx, q)
		lat = append(lat, time.Since(t0))
		if err != nil || len(hits) != 10 {
			b.Fatalf("search: %d hits, %v", len(hits), err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	p := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(p(0.5), "p50_ms")
	b.ReportMetric(p(0.99), "p99_ms")
	b.ReportMetric(float64(x.used>>20), "store_MiB")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
