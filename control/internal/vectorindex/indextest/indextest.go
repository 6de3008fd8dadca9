// Package indextest is the conformance suite every vectorindex.Index implementation runs:
// exact ordering, replacement on upsert, every filter operator, filters applied before
// top-k, deletes by file and by store, attribute updates, dimension checks, and isolation
// across many stores. An implementation's test calls Run with a fresh index.
package indextest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/vectorindex"
)

var runSeq atomic.Int64

// Options tunes Run for an implementation.
type Options struct {
	// Settle, when set, is called after each write before searching (for implementations
	// whose writes become searchable asynchronously, e.g. Milvus with a flush); nil means
	// writes are visible at once.
	Settle func(t *testing.T, storeID string)
}

// Run runs the suite against idx. Subtests use store ids unique to this run, so idx may
// already hold other data.
func Run(t *testing.T, idx vectorindex.Index, o Options) {
	prefix := fmt.Sprintf("vs_it%d%d_", time.Now().UnixNano()%1e9, runSeq.Add(1))
	s := &suite{idx: idx, o: o, prefix: prefix}
	t.Run("OrderAndScores", s.orderAndScores)
	t.Run("UpsertReplaces", s.upsertReplaces)
	t.Run("Filters", s.filters)
	t.Run("FilterBeforeTopK", s.filterBeforeTopK)
	t.Run("DeleteFile", s.deleteFile)
	t.Run("DeleteStore", s.deleteStore)
	t.Run("SetAttributes", s.setAttributes)
	t.Run("SearchBetweenWrites", s.searchBetweenWrites)
	t.Run("Dimensions", s.dimensions)
	t.Run("Invalid", s.invalid)
	t.Run("IsolationManyStores", s.isolation)
	t.Run("ExactAgainstBruteForce", s.exact)
}

type suite struct {
	idx    vectorindex.Index
	o      Options
	prefix string
	n      atomic.Int64
}

func (s *suite) store() string { return fmt.Sprintf("%s%d", s.prefix, s.n.Add(1)) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func (s *suite) upsert(t *testing.T, chunks ...vectorindex.Chunk) {
	t.Helper()
	if err := s.idx.Upsert(ctx(t), chunks); err != nil {
		t.Fatalf("upsert: %v", err)
	}
	s.settle(t, chunks[0].StoreID)
}

func (s *suite) settle(t *testing.T, store string) {
	if s.o.Settle != nil {
		s.o.Settle(t, store)
	}
}

func (s *suite) search(t *testing.T, q vectorindex.Query) []vectorindex.Hit {
	t.Helper()
	hits, err := s.idx.Search(ctx(t), q)
	if err != nil {
		t.Fatalf("search %+v: %v", q, err)
	}
	return hits
}

func ids(hits []vectorindex.Hit) []string {
	out := make([]string, len(hits)) // never nil: compared with []string{}
	for i, h := range hits {
		out[i] = h.ChunkID
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// unit returns a 4-dim vector at angle deg from the x axis in the xy plane.
func unit(deg float64) []float32 {
	r := deg * math.Pi / 180
	return []float32{float32(math.Cos(r)), float32(math.Sin(r)), 0, 0}
}

func (s *suite) orderAndScores(t *testing.T) {
	st := s.store()
	// Lengths differ on purpose: cosine ignores them.
	c0 := vectorindex.Chunk{StoreID: st, FileID: "file-a", ChunkID: "c0", Vector: []float32{3, 0, 0, 0}}
	c30 := vectorindex.Chunk{StoreID: st, FileID: "file-a", ChunkID: "c30", Vector: unit(30)}
	c60 := vectorindex.Chunk{StoreID: st, FileID: "file-b", ChunkID: "c60", Vector: unit(60)}
	c90 := vectorindex.Chunk{StoreID: st, FileID: "file-b", ChunkID: "c90", Vector: []float32{0, 0.5, 0, 0}}
	c180 := vectorindex.Chunk{StoreID: st, FileID: "file-b", ChunkID: "c180", Vector: unit(180)}
	s.upsert(t, c90, c0, c180, c60, c30)
	hits := s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10})
	equal(t, "order", ids(hits), []string{"c0", "c30", "c60", "c90", "c180"})
	want := []float64{1, math.Cos(math.Pi / 6), 0.5, 0, -1}
	for i, h := range hits {
		if math.Abs(float64(h.Score)-want[i]) > 1e-4 {
			t.Errorf("score of %s = %v, want %v", h.ChunkID, h.Score, want[i])
		}
	}
	if hits[1].FileID != "file-a" || hits[2].FileID != "file-b" {
		t.Errorf("file ids: %+v", hits)
	}
	equal(t, "k=2", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(50), K: 2})), []string{"c60", "c30"})
	// Ties break by chunk id.
	t2 := s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: t2, FileID: "f", ChunkID: "b", Vector: unit(0)},
		vectorindex.Chunk{StoreID: t2, FileID: "f", ChunkID: "a", Vector: unit(0)},
		vectorindex.Chunk{StoreID: t2, FileID: "f", ChunkID: "c", Vector: unit(0)})
	equal(t, "ties", ids(s.search(t, vectorindex.Query{StoreID: t2, Vector: unit(0), K: 2})), []string{"a", "b"})
	// An unknown store is empty, not an error.
	if hits := s.search(t, vectorindex.Query{StoreID: s.store(), Vector: unit(0), K: 3}); len(hits) != 0 {
		t.Fatalf("unknown store returned %v", hits)
	}
}

func (s *suite) upsertReplaces(t *testing.T) {
	st := s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "x", Vector: unit(0)},
		vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "y", Vector: unit(90)})
	// Re-upserting (a retried ingestion) replaces instead of duplicating.
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "x", Vector: unit(180)},
		vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "y", Vector: unit(90)})
	hits := s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10})
	equal(t, "after replace", ids(hits), []string{"y", "x"})
	if math.Abs(float64(hits[1].Score)+1) > 1e-4 {
		t.Fatalf("replaced vector not used: %+v", hits)
	}
}

func (s *suite) filters(t *testing.T) {
	st := s.store()
	type doc struct {
		id    string
		attrs map[string]any
	}
	docs := []doc{
		{"d1", map[string]any{"lang": "en", "year": 2019.0, "public": true}},
		{"d2", map[string]any{"lang": "fr", "year": 2021.0, "public": false}},
		{"d3", map[string]any{"lang": "en", "year": 2023.0}},
		{"d4", map[string]any{"lang": "de", "year": "2023", "public": true}},
		{"d5", nil},
	}
	var chunks []vectorindex.Chunk
	for i, d := range docs {
		chunks = append(chunks, vectorindex.Chunk{StoreID: st, FileID: "file-" + d.id, ChunkID: d.id,
			Vector: unit(float64(i * 10)), Attributes: d.attrs})
	}
	s.upsert(t, chunks...)
	cases := []struct {
		name, filter string
		want         []string
	}{
		{"eq string", `{"type":"eq","key":"lang","value":"en"}`, []string{"d1", "d3"}},
		{"ne string (missing key is false)", `{"type":"ne","key":"lang","value":"en"}`, []string{"d2", "d4"}},
		{"eq number", `{"type":"eq","key":"year","value":2021}`, []string{"d2"}},
		{"gt number (string 2023 is another type)", `{"type":"gt","key":"year","value":2019}`, []string{"d2", "d3"}},
		{"gte", `{"type":"gte","key":"year","value":2019}`, []string{"d1", "d2", "d3"}},
		{"lt", `{"type":"lt","key":"year","value":2021}`, []string{"d1"}},
		{"lte", `{"type":"lte","key":"year","value":2021.0}`, []string{"d1", "d2"}},
		{"string order", `{"type":"lt","key":"lang","value":"en"}`, []string{"d4"}},
		{"eq bool", `{"type":"eq","key":"public","value":true}`, []string{"d1", "d4"}},
		{"ne bool", `{"type":"ne","key":"public","value":true}`, []string{"d2"}},
		{"in", `{"type":"in","key":"lang","value":["fr","de"]}`, []string{"d2", "d4"}},
		{"nin", `{"type":"nin","key":"lang","value":["fr","de"]}`, []string{"d1", "d3"}},
		{"and", `{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"gte","key":"year","value":2020}]}`, []string{"d3"}},
		{"or", `{"type":"or","filters":[{"type":"eq","key":"lang","value":"fr"},{"type":"eq","key":"public","value":true}]}`, []string{"d1", "d2", "d4"}},
		{"nested", `{"type":"or","filters":[{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"lt","key":"year","value":2020}]},{"type":"eq","key":"year","value":"2023"}]}`, []string{"d1", "d4"}},
		{"no match", `{"type":"eq","key":"lang","value":"es"}`, nil},
		{"unknown key", `{"type":"eq","key":"nope","value":"x"}`, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := vectorindex.ParseFilter([]byte(c.filter))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			got := ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10, Filter: f}))
			slices.Sort(got)
			if len(got) == 0 {
				got = nil
			}
			equal(t, c.filter, got, c.want)
		})
	}
}

func (s *suite) filterBeforeTopK(t *testing.T) {
	st := s.store()
	// 200 near chunks tagged "near", 3 far chunks tagged "far": a filter on "far" with k=3
	// must return all three, which a filter applied after a top-k would miss.
	var chunks []vectorindex.Chunk
	for i := range 200 {
		chunks = append(chunks, vectorindex.Chunk{StoreID: st, FileID: "file-near", ChunkID: fmt.Sprintf("n%03d", i),
			Vector: unit(float64(i) * 0.1), Attributes: map[string]any{"tag": "near"}})
	}
	for i := range 3 {
		chunks = append(chunks, vectorindex.Chunk{StoreID: st, FileID: "file-far", ChunkID: fmt.Sprintf("f%d", i),
			Vector: unit(150 + float64(i)*10), Attributes: map[string]any{"tag": "far"}})
	}
	s.upsert(t, chunks...)
	f, _ := vectorindex.ParseFilter([]byte(`{"type":"eq","key":"tag","value":"far"}`))
	equal(t, "filtered top-3", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 3, Filter: f})),
		[]string{"f0", "f1", "f2"})
	equal(t, "filtered top-2", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 2, Filter: f})),
		[]string{"f0", "f1"})
}

func (s *suite) deleteFile(t *testing.T) {
	st := s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "file-1", ChunkID: "a", Vector: unit(0)},
		vectorindex.Chunk{StoreID: st, FileID: "file-1", ChunkID: "b", Vector: unit(5)},
		vectorindex.Chunk{StoreID: st, FileID: "file-2", ChunkID: "c", Vector: unit(10)})
	other := s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: other, FileID: "file-1", ChunkID: "a", Vector: unit(0)})
	if err := s.idx.DeleteFile(ctx(t), st, "file-1"); err != nil {
		t.Fatal(err)
	}
	s.settle(t, st)
	equal(t, "after delete", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10})), []string{"c"})
	// The same file in another store is untouched; deleting again is no error.
	equal(t, "other store", ids(s.search(t, vectorindex.Query{StoreID: other, Vector: unit(0), K: 10})), []string{"a"})
	if err := s.idx.DeleteFile(ctx(t), st, "file-1"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}

func (s *suite) deleteStore(t *testing.T) {
	st, other := s.store(), s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f", ChunkID: "a", Vector: unit(0)})
	s.upsert(t, vectorindex.Chunk{StoreID: other, FileID: "f", ChunkID: "a", Vector: unit(0)})
	if err := s.idx.DeleteStore(ctx(t), st); err != nil {
		t.Fatal(err)
	}
	s.settle(t, st)
	if hits := s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10}); len(hits) != 0 {
		t.Fatalf("deleted store still returns %v", hits)
	}
	equal(t, "other store", ids(s.search(t, vectorindex.Query{StoreID: other, Vector: unit(0), K: 10})), []string{"a"})
	if err := s.idx.DeleteStore(ctx(t), st); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	// A deleted store can be filled again, with another dimension.
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f", ChunkID: "z", Vector: []float32{1, 0}})
	equal(t, "refilled", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: []float32{1, 0}, K: 10})), []string{"z"})
}

func (s *suite) setAttributes(t *testing.T) {
	st := s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "a", Vector: unit(0), Attributes: map[string]any{"v": 1.0}},
		vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "b", Vector: unit(1), Attributes: map[string]any{"v": 1.0}},
		vectorindex.Chunk{StoreID: st, FileID: "f2", ChunkID: "c", Vector: unit(2), Attributes: map[string]any{"v": 1.0}})
	if err := s.idx.SetAttributes(ctx(t), st, "f1", map[string]any{"v": 2.0}); err != nil {
		t.Fatal(err)
	}
	s.settle(t, st)
	f, _ := vectorindex.ParseFilter([]byte(`{"type":"eq","key":"v","value":2}`))
	equal(t, "v=2", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10, Filter: f})), []string{"a", "b"})
	f, _ = vectorindex.ParseFilter([]byte(`{"type":"eq","key":"v","value":1}`))
	equal(t, "v=1", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10, Filter: f})), []string{"c"})
}

// searchBetweenWrites checks that each write is seen by the next search (no stale copy).
func (s *suite) searchBetweenWrites(t *testing.T) {
	st := s.store()
	q := vectorindex.Query{StoreID: st, Vector: unit(0), K: 10}
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f1", ChunkID: "a", Vector: unit(10), Attributes: map[string]any{"k": "x"}})
	equal(t, "first", ids(s.search(t, q)), []string{"a"})
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f2", ChunkID: "b", Vector: unit(0)})
	equal(t, "after upsert", ids(s.search(t, q)), []string{"b", "a"})
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f2", ChunkID: "b", Vector: unit(20)})
	equal(t, "after replace", ids(s.search(t, q)), []string{"a", "b"})
	f, _ := vectorindex.ParseFilter([]byte(`{"type":"eq","key":"k","value":"y"}`))
	fq := q
	fq.Filter = f
	equal(t, "filter before", ids(s.search(t, fq)), []string{})
	if err := s.idx.SetAttributes(ctx(t), st, "f1", map[string]any{"k": "y"}); err != nil {
		t.Fatal(err)
	}
	s.settle(t, st)
	equal(t, "filter after set", ids(s.search(t, fq)), []string{"a"})
	if err := s.idx.DeleteFile(ctx(t), st, "f1"); err != nil {
		t.Fatal(err)
	}
	s.settle(t, st)
	equal(t, "after delete file", ids(s.search(t, q)), []string{"b"})
	if err := s.idx.DeleteStore(ctx(t), st); err != nil {
		t.Fatal(err)
	}
	s.settle(t, st)
	equal(t, "after delete store", ids(s.search(t, q)), []string{})
}

func (s *suite) dimensions(t *testing.T) {
	st := s.store()
	s.upsert(t, vectorindex.Chunk{StoreID: st, FileID: "f", ChunkID: "a", Vector: unit(0)})
	err := s.idx.Upsert(ctx(t), []vectorindex.Chunk{{StoreID: st, FileID: "f", ChunkID: "b", Vector: []float32{1, 2, 3}}})
	if !errors.Is(err, vectorindex.ErrDimensions) {
		t.Fatalf("upsert of another length: %v, want ErrDimensions", err)
	}
	_, err = s.idx.Search(ctx(t), vectorindex.Query{StoreID: st, Vector: []float32{1, 2}, K: 1})
	if !errors.Is(err, vectorindex.ErrDimensions) {
		t.Fatalf("query of another length: %v, want ErrDimensions", err)
	}
	equal(t, "unchanged", ids(s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 10})), []string{"a"})
}

func (s *suite) invalid(t *testing.T) {
	st := s.store()
	for _, c := range [][]vectorindex.Chunk{
		{{StoreID: "", FileID: "f", ChunkID: "a", Vector: unit(0)}},
		{{StoreID: st, FileID: "", ChunkID: "a", Vector: unit(0)}},
		{{StoreID: st, FileID: "f", ChunkID: "", Vector: unit(0)}},
		{{StoreID: st, FileID: "f", ChunkID: "a"}},
		{{StoreID: st, FileID: "f", ChunkID: "a", Vector: unit(0), Attributes: map[string]any{"x": []int{1}}}},
	} {
		if err := s.idx.Upsert(ctx(t), c); !errors.Is(err, vectorindex.ErrInvalid) {
			t.Errorf("upsert %+v: %v, want ErrInvalid", c, err)
		}
	}
	for _, q := range []vectorindex.Query{
		{StoreID: st, Vector: unit(0), K: 0},
		{StoreID: st, Vector: unit(0), K: vectorindex.MaxK + 1},
		{StoreID: st, K: 1},
	} {
		if _, err := s.idx.Search(ctx(t), q); !errors.Is(err, vectorindex.ErrInvalid) {
			t.Errorf("search %+v: %v, want ErrInvalid", q, err)
		}
	}
	if hits := s.search(t, vectorindex.Query{StoreID: st, Vector: unit(0), K: 5}); len(hits) != 0 {
		t.Fatalf("invalid upserts stored something: %v", hits)
	}
}

// isolation fills many stores whose chunks all point the same way as the query, then checks
// that every search returns only its own store's chunks.
func (s *suite) isolation(t *testing.T) {
	const stores, per = 40, 5
	names := make([]string, stores)
	var all []vectorindex.Chunk
	for i := range stores {
		names[i] = s.store()
		for j := range per {
			all = append(all, vectorindex.Chunk{StoreID: names[i], FileID: "file-shared", ChunkID: fmt.Sprintf("s%d-c%d", i, j),
				Vector: unit(float64(j)), Attributes: map[string]any{"owner": "same"}})
		}
	}
	if err := s.idx.Upsert(ctx(t), all); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		s.settle(t, n)
	}
	f, _ := vectorindex.ParseFilter([]byte(`{"type":"eq","key":"owner","value":"same"}`))
	for i, n := range names {
		for _, filter := range []*vectorindex.Filter{nil, f} {
			hits := s.search(t, vectorindex.Query{StoreID: n, Vector: unit(0), K: 50, Filter: filter})
			if len(hits) != per {
				t.Fatalf("store %d: %d hits, want %d", i, len(hits), per)
			}
			for _, h := range hits {
				var si, cj int
				if _, err := fmt.Sscanf(h.ChunkID, "s%d-c%d", &si, &cj); err != nil || si != i {
					t.Fatalf("store %d returned chunk %s of another store", i, h.ChunkID)
				}
			}
		}
	}
}

// exact checks the results against brute force on random vectors, with and without a filter.
func (s *suite) exact(t *testing.T) {
	st := s.store()
	rng := rand.New(rand.NewPCG(1, 2))
	const n, dims = 600, 16
	vecs := map[string][]float32{}
	groups := map[string]float64{}
	var chunks []vectorindex.Chunk
	for i := range n {
		v := make([]float32, dims)
		for d := range v {
			v[d] = float32(rng.NormFloat64())
		}
		id := fmt.Sprintf("r%04d", i)
		g := float64(i % 7)
		vecs[id], groups[id] = v, g
		chunks = append(chunks, vectorindex.Chunk{StoreID: st, FileID: fmt.Sprintf("file-%d", i%13), ChunkID: id,
			Vector: v, Attributes: map[string]any{"g": g}})
	}
	s.upsert(t, chunks...)
	f, _ := vectorindex.ParseFilter([]byte(`{"type":"in","key":"g","value":[1,4]}`))
	for q := range 10 {
		qv := make([]float32, dims)
		for d := range qv {
			qv[d] = float32(rng.NormFloat64())
		}
		for _, filter := range []*vectorindex.Filter{nil, f} {
			type scored struct {
				id string
				s  float64
			}
			var all []scored
			for id, v := range vecs {
				if filter != nil && groups[id] != 1 && groups[id] != 4 {
					continue
				}
				all = append(all, scored{id, cosine(qv, v)})
			}
			slices.SortFunc(all, func(a, b scored) int {
				if c := cmp.Compare(b.s, a.s); c != 0 {
					return c
				}
				return cmp.Compare(a.id, b.id)
			})
			var want []string
			for _, x := range all[:10] {
				want = append(want, x.id)
			}
			got := ids(s.search(t, vectorindex.Query{StoreID: st, Vector: qv, K: 10, Filter: filter}))
			equal(t, fmt.Sprintf("query %d filter=%v", q, filter != nil), got, want)
		}
	}
}

func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return dot / math.Sqrt(na*nb)
}
