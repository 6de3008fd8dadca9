package service

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/knowledge"
)

// fakeEmbedder is a bag-of-words hashing embedder (512 dims) standing in for the gateway
// in these tests; the gateway path is tested end to end once the gateway accepts signed
// identities. It records who each request was made for and can fail or block.
type fakeEmbedder struct {
	mu       sync.Mutex
	calls    []knowledge.Identity
	failNext int            // transient failures (503) still to answer
	block    chan struct{}  // when set, each call waits for it to close
	inputs   map[string]int // model → inputs embedded
}

func (f *fakeEmbedder) Embed(ctx context.Context, as knowledge.Identity, model string, inputs []string) ([][]float32, error) {
	f.mu.Lock()
	f.calls = append(f.calls, as)
	block := f.block
	if f.inputs == nil {
		f.inputs = map[string]int{}
	}
	f.inputs[model] += len(inputs)
	fail := f.failNext > 0
	if fail {
		f.failNext--
	}
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail {
		return nil, &knowledge.EmbedError{Status: 503, Message: "no healthy backend"}
	}
	if model == "no-such-model" {
		return nil, &knowledge.EmbedError{Status: 404, Code: "model_not_found", Message: "model no-such-model does not exist"}
	}
	out := make([][]float32, len(inputs))
	for i, in := range inputs {
		v := make([]float32, 512)
		for _, w := range strings.FieldsFunc(strings.ToLower(in), func(r rune) bool { return !('a' <= r && r <= 'z' || '0' <= r && r <= '9') }) {
			h := fnv.New32a()
			h.Write([]byte(w))
			v[h.Sum32()%512]++
		}
		var n float64
		for _, x := range v {
			n += float64(x * x)
		}
		if n == 0 {
			v[0] = 1
		}
		out[i] = v
	}
	return out, nil
}

func (f *fakeEmbedder) identities() []knowledge.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func startKnowledge(t *testing.T, emb *fakeEmbedder) *testControl {
	return startControl(t, func(o *Options) {
		o.Knowledge.Embedder = emb
		o.Knowledge.EmbedBatch = 2
		o.FineTune.JobPoll = 50 * time.Millisecond
	})
}

type storeObj struct {
	ID             string            `json:"id"`
	Object         string            `json:"object"`
	Name           string            `json:"name"`
	Status         string            `json:"status"`
	UsageBytes     int64             `json:"usage_bytes"`
	EmbeddingModel string            `json:"embedding_model"`
	Metadata       map[string]string `json:"metadata"`
	ExpiresAfter   *struct {
		Anchor string `json:"anchor"`
		Days   int    `json:"days"`
	} `json:"expires_after"`
	ExpiresAt  *int64 `json:"expires_at"`
	FileCounts struct {
		InProgress, Completed, Failed, Cancelled, Total int64
	} `json:"file_counts"`
}

type storeFileObj struct {
	ID            string `json:"id"`
	Object        string `json:"object"`
	Status        string `json:"status"`
	VectorStoreID string `json:"vector_store_id"`
	UsageBytes    int64  `json:"usage_bytes"`
	LastError     *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"last_error"`
	ChunkingStrategy struct {
		Type   string `json:"type"`
		Static struct {
			MaxChunkSizeTokens int `json:"max_chunk_size_tokens"`
			ChunkOverlapTokens int `json:"chunk_overlap_tokens"`
		} `json:"static"`
	} `json:"chunking_strategy"`
	Attributes map[string]any `json:"attributes"`
}

type searchPage struct {
	Object      string   `json:"object"`
	SearchQuery []string `json:"search_query"`
	Data        []struct {
		FileID     string         `json:"file_id"`
		Filename   string         `json:"filename"`
		Score      float64        `json:"score"`
		Attributes map[string]any `json:"attributes"`
		Content    []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	} `json:"data"`
}

func (p searchPage) files() []string {
	var out []string
	for _, d := range p.Data {
		out = append(out, d.FileID)
	}
	return out
}

// waitFile waits until a store's file leaves in_progress and returns it.
func (tc *testControl) waitFile(tok, store, file string) storeFileObj {
	tc.t.Helper()
	var f storeFileObj
	waitFor(tc.t, 20*time.Second, "file "+file+" processed", func() bool {
		tc.call("GET", "/v1/vector_stores/"+store+"/files/"+file, tok, nil, 200).decode(tc.t, &f)
		return f.Status != "in_progress"
	})
	return f
}

func (tc *testControl) search(tok, store string, body any) searchPage {
	tc.t.Helper()
	var p searchPage
	tc.call("POST", "/v1/vector_stores/"+store+"/search", tok, body, 200).decode(tc.t, &p)
	return p
}

func (tc *testControl) count(sql string, args ...any) int {
	tc.t.Helper()
	var n int
	if err := tc.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		tc.t.Fatal(err)
	}
	return n
}

func TestVectorStoresLifecycle(t *testing.T) {
	emb := &fakeEmbedder{}
	tc := startKnowledge(t, emb)
	admin := tc.adminToken()
	alice := tc.createUser(admin, "user")

	pdf, err := os.ReadFile("../knowledge/testdata/sample.pdf")
	if err != nil {
		t.Fatal(err)
	}
	txt := tc.uploadFile(alice.Token, "tides.txt", "assistants", "Ocean tides follow the moon. Spring tides come with the full moon and the new moon.")
	md := tc.uploadFile(alice.Token, "bread.md", "assistants", "# Sourdough\n\nA sourdough starter needs flour, water and patience; feed it daily.")
	html := tc.uploadFile(alice.Token, "comets.html", "assistants", "<html><body><h1>Comets</h1><p>A comet's tail always points away from the sun.</p><script>var sun=1</script></body></html>")
	pdfFile := tc.uploadFile(alice.Token, "azores.pdf", "assistants", string(pdf))

	var vs storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{
		"name": "notes", "file_ids": []string{txt.ID, md.ID, html.ID}, "metadata": map[string]string{"team": "x"},
		"expires_after": map[string]any{"anchor": "last_active_at", "days": 7},
	}, 200).decode(t, &vs)
	if !strings.HasPrefix(vs.ID, "vs_") || vs.Object != "vector_store" || vs.EmbeddingModel != "sim-embedding" ||
		vs.FileCounts.Total != 3 || vs.Metadata["team"] != "x" || vs.ExpiresAfter == nil || vs.ExpiresAt == nil {
		t.Fatalf("created store: %+v", vs)
	}
	for _, f := range []string{txt.ID, md.ID, html.ID} {
		if got := tc.waitFile(alice.Token, vs.ID, f); got.Status != "completed" || got.UsageBytes == 0 ||
			got.ChunkingStrategy.Type != "static" || got.ChunkingStrategy.Static.MaxChunkSizeTokens != 800 || got.ChunkingStrategy.Static.ChunkOverlapTokens != 400 {
			t.Fatalf("file %s: %+v", f, got)
		}
	}
	// The pdf is attached on its own, with attributes and a static strategy.
	var sf storeFileObj
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/files", alice.Token, map[string]any{
		"file_id": pdfFile.ID, "attributes": map[string]any{"region": "azores", "year": 2024, "public": true},
		"chunking_strategy": map[string]any{"type": "static", "static": map[string]any{"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}},
	}, 200).decode(t, &sf)
	if sf.Object != "vector_store.file" || sf.VectorStoreID != vs.ID || sf.ChunkingStrategy.Static.MaxChunkSizeTokens != 100 {
		t.Fatalf("attached: %+v", sf)
	}
	if got := tc.waitFile(alice.Token, vs.ID, pdfFile.ID); got.Status != "completed" {
		t.Fatalf("pdf: %+v", got)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID, alice.Token, nil, 200).decode(t, &vs)
	if vs.Status != "completed" || vs.FileCounts.Completed != 4 || vs.FileCounts.Total != 4 || vs.UsageBytes == 0 {
		t.Fatalf("store after ingestion: %+v", vs)
	}
	// Ingestion embedded as the store's owner.
	for _, id := range emb.identities() {
		if id.UserID != alice.ID || id.KeyID != 0 {
			t.Fatalf("embedded for %+v, want alice (%d)", id, alice.ID)
		}
	}

	// Each document is found by its own words, in every mode.
	for _, c := range []struct{ q, want string }{
		{"when are spring tides", txt.ID}, {"feeding a sourdough starter", md.ID},
		{"which way does a comet tail point", html.ID}, {"pineapples grown in volcanic soil", pdfFile.ID},
	} {
		for _, ro := range []any{nil,
			map[string]any{"hybrid_search": map[string]any{"embedding_weight": 1, "text_weight": 0}},
			map[string]any{"hybrid_search": map[string]any{"embedding_weight": 0, "text_weight": 1}}} {
			body := map[string]any{"query": c.q, "max_num_results": 2}
			if ro != nil {
				body["ranking_options"] = ro
			}
			p := tc.search(alice.Token, vs.ID, body)
			if len(p.Data) == 0 || p.Data[0].FileID != c.want || p.Object != "vector_store.search_results.page" {
				t.Fatalf("search %q (%v): %+v, want %s first", c.q, ro, p, c.want)
			}
			if d := p.Data[0]; d.Filename == "" || len(d.Content) == 0 || d.Content[0].Type != "text" || d.Score <= 0 || d.Score > 1 {
				t.Fatalf("result: %+v", d)
			}
		}
	}
	// The html's script is not indexed.
	if p := tc.search(alice.Token, vs.ID, map[string]any{"query": "var sun", "ranking_options": map[string]any{"hybrid_search": map[string]any{"embedding_weight": 0, "text_weight": 1}}}); slices.Contains(p.files(), html.ID) &&
		strings.Contains(p.Data[0].Content[0].Text, "var") {
		t.Fatalf("script text indexed: %+v", p)
	}
	// Filters apply to attributes, before top-k, in every mode.
	for _, w := range [][2]int{{1, 1}, {1, 0}, {0, 1}} {
		p := tc.search(alice.Token, vs.ID, map[string]any{"query": "spring tides moon pineapples", "max_num_results": 5,
			"ranking_options": map[string]any{"hybrid_search": map[string]any{"embedding_weight": w[0], "text_weight": w[1]}},
			"filters": map[string]any{"type": "and", "filters": []any{
				map[string]any{"type": "eq", "key": "region", "value": "azores"},
				map[string]any{"type": "gte", "key": "year", "value": 2020}}}})
		if !slices.Equal(p.files(), []string{pdfFile.ID}) || p.Data[0].Attributes["region"] != "azores" {
			t.Fatalf("filtered search, weights %v: %+v", w, p)
		}
	}
	// A score threshold of 1 leaves nothing but a perfect match.
	if p := tc.search(alice.Token, vs.ID, map[string]any{"query": "tides", "ranking_options": map[string]any{"score_threshold": 0.9999, "hybrid_search": map[string]any{"embedding_weight": 1, "text_weight": 0}}}); len(p.Data) != 0 {
		t.Fatalf("threshold: %+v", p)
	}

	// Attributes can be changed, and filters see the change.
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/files/"+txt.ID, alice.Token, map[string]any{"attributes": map[string]any{"region": "atlantic"}}, 200)
	p := tc.search(alice.Token, vs.ID, map[string]any{"query": "moon", "filters": map[string]any{"type": "eq", "key": "region", "value": "atlantic"}})
	if !slices.Equal(p.files(), []string{txt.ID}) {
		t.Fatalf("after attribute change: %+v", p)
	}

	// Content, list and modify.
	var content struct {
		Data []struct{ Text string } `json:"data"`
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/files/"+md.ID+"/content", alice.Token, nil, 200).decode(t, &content)
	if len(content.Data) != 1 || !strings.Contains(content.Data[0].Text, "sourdough starter") {
		t.Fatalf("content: %+v", content)
	}
	var list struct {
		Data    []storeFileObj `json:"data"`
		HasMore bool           `json:"has_more"`
		FirstID string         `json:"first_id"`
		LastID  string         `json:"last_id"`
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/files?limit=3&order=asc", alice.Token, nil, 200).decode(t, &list)
	if len(list.Data) != 3 || !list.HasMore || list.FirstID != txt.ID || list.LastID != html.ID {
		t.Fatalf("file list: %+v", list)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/files?limit=3&order=asc&after="+list.LastID, alice.Token, nil, 200).decode(t, &list)
	if len(list.Data) != 1 || list.HasMore || list.Data[0].ID != pdfFile.ID {
		t.Fatalf("file list page 2: %+v", list)
	}
	tc.call("POST", "/v1/vector_stores/"+vs.ID, alice.Token, map[string]any{"name": "renamed", "expires_after": nil}, 200).decode(t, &vs)
	if vs.Name != "renamed" || vs.ExpiresAfter != nil || vs.ExpiresAt != nil {
		t.Fatalf("modified: %+v", vs)
	}

	// Detaching a file removes it from search and from the index at once.
	tc.call("DELETE", "/v1/vector_stores/"+vs.ID+"/files/"+txt.ID, alice.Token, nil, 200)
	for _, ro := range []any{nil, map[string]any{"hybrid_search": map[string]any{"embedding_weight": 0, "text_weight": 1}}} {
		body := map[string]any{"query": "spring tides moon", "max_num_results": 50}
		if ro != nil {
			body["ranking_options"] = ro
		}
		if p := tc.search(alice.Token, vs.ID, body); slices.Contains(p.files(), txt.ID) {
			t.Fatalf("detached file still found: %+v", p)
		}
	}
	if n := tc.count(`SELECT count(*) FROM vector_index_chunks WHERE store_id = $1 AND file_id = $2`, vs.ID, txt.ID); n != 0 {
		t.Fatalf("%d vectors of the detached file remain", n)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/files/"+txt.ID, alice.Token, nil, 404)

	// Deleting the store removes everything.
	if n := tc.count(`SELECT count(*) FROM vector_index_chunks WHERE store_id = $1`, vs.ID); n == 0 {
		t.Fatal("no vectors before the store's deletion")
	}
	var del struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Deleted bool   `json:"deleted"`
	}
	tc.call("DELETE", "/v1/vector_stores/"+vs.ID, alice.Token, nil, 200).decode(t, &del)
	if del.ID != vs.ID || del.Object != "vector_store.deleted" || !del.Deleted {
		t.Fatalf("deleted: %+v", del)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID, alice.Token, nil, 404)
	if n := tc.count(`SELECT count(*) FROM vector_index_chunks WHERE store_id = $1`, vs.ID) +
		tc.count(`SELECT count(*) FROM vector_store_chunks WHERE store_id = $1`, vs.ID); n != 0 {
		t.Fatalf("%d vectors or chunks remain after the store's deletion", n)
	}
}

func TestVectorStoresRefused(t *testing.T) {
	emb := &fakeEmbedder{}
	tc := startKnowledge(t, emb)
	admin := tc.adminToken()
	alice, bob := tc.createUser(admin, "user"), tc.createUser(admin, "user")
	af := tc.uploadFile(alice.Token, "a.txt", "assistants", "alice's secret recipe for plum jam")
	bf := tc.uploadFile(bob.Token, "b.txt", "assistants", "bob's notes")
	var vs storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{"file_ids": []string{af.ID}}, 200).decode(t, &vs)
	tc.waitFile(alice.Token, vs.ID, af.ID)

	static := func(max, overlap any) map[string]any {
		st := map[string]any{"max_chunk_size_tokens": max}
		if overlap != nil {
			st["chunk_overlap_tokens"] = overlap
		}
		return map[string]any{"type": "static", "static": st}
	}
	bad := []struct {
		method, path string
		body         any
		param        string
	}{
		{"POST", "/v1/vector_stores", map[string]any{"file_ids": []string{af.ID}, "chunking_strategy": static(99, 10)}, "chunking_strategy.static.max_chunk_size_tokens"},
		{"POST", "/v1/vector_stores", map[string]any{"file_ids": []string{af.ID}, "chunking_strategy": static(4097, 10)}, "chunking_strategy.static.max_chunk_size_tokens"},
		{"POST", "/v1/vector_stores", map[string]any{"file_ids": []string{af.ID}, "chunking_strategy": static(200, 101)}, "chunking_strategy.static.chunk_overlap_tokens"},
		{"POST", "/v1/vector_stores", map[string]any{"file_ids": []string{af.ID}, "chunking_strategy": map[string]any{"type": "fancy"}}, "chunking_strategy.type"},
		{"POST", "/v1/vector_stores", map[string]any{"chunking_strategy": map[string]any{"type": "auto"}}, "chunking_strategy"},
		{"POST", "/v1/vector_stores", map[string]any{"file_ids": []string{bf.ID}}, "file_ids[0]"},
		{"POST", "/v1/vector_stores", map[string]any{"file_ids": []string{"file-nope"}}, "file_ids[0]"},
		{"POST", "/v1/vector_stores", map[string]any{"expires_after": map[string]any{"anchor": "created_at", "days": 3}}, "expires_after.anchor"},
		{"POST", "/v1/vector_stores", map[string]any{"expires_after": map[string]any{"anchor": "last_active_at", "days": 366}}, "expires_after.days"},
		{"POST", "/v1/vector_stores", map[string]any{"metadata": map[string]any{"k": strings.Repeat("v", 513)}}, "metadata"},
		{"POST", "/v1/vector_stores", map[string]any{"nmae": "typo"}, "nmae"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/files", map[string]any{"file_id": bf.ID}, "file_id"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/files", map[string]any{"file_id": af.ID, "attributes": map[string]any{"x": []int{1}}}, "attributes"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/files", map[string]any{"file_id": af.ID, "attributes": map[string]any{strings.Repeat("k", 65): 1}}, "attributes"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/file_batches", map[string]any{}, "file_ids"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": ""}, "query"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": 3}, "query"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "x", "max_num_results": 0}, "max_num_results"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "x", "max_num_results": 51}, "max_num_results"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "x", "filters": map[string]any{"type": "or", "filters": []any{map[string]any{"type": "eq", "key": "a", "value": 1}, map[string]any{"type": "like", "key": "a", "value": 1}}}}, "filters.filters[1].type"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "x", "ranking_options": map[string]any{"score_threshold": 1.5}}, "ranking_options.score_threshold"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "x", "ranking_options": map[string]any{"ranker": "best"}}, "ranking_options.ranker"},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "x", "ranking_options": map[string]any{"hybrid_search": map[string]any{"embedding_weight": 0, "text_weight": 0}}}, "ranking_options.hybrid_search"},
		{"GET", "/v1/vector_stores?order=sideways", nil, "order"},
		{"GET", "/v1/vector_stores?limit=101", nil, "limit"},
		{"GET", "/v1/vector_stores/" + vs.ID + "/files?filter=done", nil, "filter"},
	}
	for _, b := range bad {
		r := tc.do(b.method, b.path, b.body, bearer(alice.Token))
		if r.Status != 400 {
			t.Errorf("%s %s %v: status %d, want 400: %s", b.method, b.path, b.body, r.Status, r.Body)
			continue
		}
		if e := r.apiErr(t); e.Error.Param == nil || *e.Error.Param != b.param {
			t.Errorf("%s %s %v: param %v, want %s (%s)", b.method, b.path, b.body, e.Error.Param, b.param, e.Error.Message)
		}
	}

	// Bob sees nothing of alice's store: every route answers 404, as for a missing store.
	for _, r := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/vector_stores/" + vs.ID, nil},
		{"POST", "/v1/vector_stores/" + vs.ID, map[string]any{"name": "mine"}},
		{"DELETE", "/v1/vector_stores/" + vs.ID, nil},
		{"POST", "/v1/vector_stores/" + vs.ID + "/search", map[string]any{"query": "plum jam"}},
		{"GET", "/v1/vector_stores/" + vs.ID + "/files", nil},
		{"POST", "/v1/vector_stores/" + vs.ID + "/files", map[string]any{"file_id": bf.ID}},
		{"GET", "/v1/vector_stores/" + vs.ID + "/files/" + af.ID, nil},
		{"GET", "/v1/vector_stores/" + vs.ID + "/files/" + af.ID + "/content", nil},
		{"POST", "/v1/vector_stores/" + vs.ID + "/files/" + af.ID, map[string]any{"attributes": map[string]any{}}},
		{"DELETE", "/v1/vector_stores/" + vs.ID + "/files/" + af.ID, nil},
		{"POST", "/v1/vector_stores/" + vs.ID + "/file_batches", map[string]any{"file_ids": []string{bf.ID}}},
		{"GET", "/v1/vector_stores/vs_doesnotexist000", nil},
	} {
		tc.call(r.method, r.path, bob.Token, r.body, 404)
	}
	var list struct {
		Data []storeObj `json:"data"`
	}
	tc.call("GET", "/v1/vector_stores", bob.Token, nil, 200).decode(t, &list)
	if len(list.Data) != 0 {
		t.Fatalf("bob lists %+v", list.Data)
	}
	// The admin may, and alice's store is intact.
	if p := tc.search(admin, vs.ID, map[string]any{"query": "plum jam"}); !slices.Equal(p.files(), []string{af.ID}) {
		t.Fatalf("admin search: %+v", p)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/files/"+af.ID, alice.Token, nil, 200)
	tc.call("GET", "/v1/vector_stores/"+vs.ID, "", nil, 401)
}

// TestVectorStoresIsolation fills many stores of two users with the same text and checks
// that no search ever returns another store's file.
func TestVectorStoresIsolation(t *testing.T) {
	tc := startKnowledge(t, &fakeEmbedder{})
	admin := tc.adminToken()
	users := []testUser{tc.createUser(admin, "user"), tc.createUser(admin, "user")}
	type st struct {
		tok, store, file string
	}
	var stores []st
	for i := range 12 {
		u := users[i%2]
		f := tc.uploadFile(u.Token, fmt.Sprintf("same-%d.txt", i), "assistants", "identical text about lighthouses and foghorns")
		var vs storeObj
		tc.call("POST", "/v1/vector_stores", u.Token, map[string]any{"file_ids": []string{f.ID}}, 200).decode(t, &vs)
		stores = append(stores, st{u.Token, vs.ID, f.ID})
	}
	for _, s := range stores {
		tc.waitFile(s.tok, s.store, s.file)
	}
	for _, s := range stores {
		for _, ro := range []any{nil, map[string]any{"hybrid_search": map[string]any{"embedding_weight": 0, "text_weight": 1}}} {
			body := map[string]any{"query": "lighthouses and foghorns", "max_num_results": 50}
			if ro != nil {
				body["ranking_options"] = ro
			}
			if p := tc.search(s.tok, s.store, body); !slices.Equal(p.files(), []string{s.file}) {
				t.Fatalf("store %s returned %v, want only %s", s.store, p.files(), s.file)
			}
		}
	}
}

func TestVectorStoreIngestionFailures(t *testing.T) {
	emb := &fakeEmbedder{}
	tc := startKnowledge(t, emb)
	admin := tc.adminToken()
	alice := tc.createUser(admin, "user")
	corrupt := tc.uploadFile(alice.Token, "broken.pdf", "assistants", "%PDF-1.7\n"+strings.Repeat("\x00\xff garbage ", 50))
	binary := tc.uploadFile(alice.Token, "photo.png", "assistants", "\x89PNG\r\n\x1a\n\x00\x00")
	good := tc.uploadFile(alice.Token, "ok.txt", "assistants", strings.Repeat("harbour seals rest on the sandbank at low tide. ", 40))
	var vs storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{"file_ids": []string{corrupt.ID, binary.ID}}, 200).decode(t, &vs)
	for f, code := range map[string]string{corrupt.ID: "invalid_file", binary.ID: "unsupported_file"} {
		got := tc.waitFile(alice.Token, vs.ID, f)
		if got.Status != "failed" || got.LastError == nil || got.LastError.Code != code || got.LastError.Message == "" {
			t.Fatalf("file %s: %+v, want failed with %s", f, got, code)
		}
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID, alice.Token, nil, 200).decode(t, &vs)
	if vs.FileCounts.Failed != 2 || vs.Status != "completed" {
		t.Fatalf("store: %+v", vs)
	}

	// Transient embedding failures are retried by River; the file ends complete, its chunks
	// written once.
	emb.mu.Lock()
	emb.failNext = 1
	emb.mu.Unlock()
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/files", alice.Token, map[string]any{"file_id": good.ID,
		"chunking_strategy": map[string]any{"type": "static", "static": map[string]any{"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}}, 200)
	waitFor(t, 60*time.Second, "retried ingestion", func() bool {
		var f storeFileObj
		tc.call("GET", "/v1/vector_stores/"+vs.ID+"/files/"+good.ID, alice.Token, nil, 200).decode(t, &f)
		if f.Status == "failed" {
			t.Fatalf("retried file failed: %+v", f)
		}
		return f.Status == "completed"
	})
	chunks := tc.count(`SELECT count(*) FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2`, vs.ID, good.ID)
	vecs := tc.count(`SELECT count(*) FROM vector_index_chunks WHERE store_id = $1 AND file_id = $2`, vs.ID, good.ID)
	if want := 2000 / 400; chunks < want || chunks != vecs {
		t.Fatalf("%d chunks and %d vectors, want the same, at least %d", chunks, vecs, want)
	}
	// Attaching the same file again rebuilds it without duplicates.
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/files", alice.Token, map[string]any{"file_id": good.ID,
		"chunking_strategy": map[string]any{"type": "static", "static": map[string]any{"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}}, 200)
	tc.waitFile(alice.Token, vs.ID, good.ID)
	if c, v := tc.count(`SELECT count(*) FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2`, vs.ID, good.ID),
		tc.count(`SELECT count(*) FROM vector_index_chunks WHERE store_id = $1 AND file_id = $2`, vs.ID, good.ID); c != chunks || v != chunks {
		t.Fatalf("after re-attach: %d chunks, %d vectors, want %d", c, v, chunks)
	}

	// A model the gateway refuses fails the file with the gateway's reason.
	var vs2 storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{"file_ids": []string{good.ID}, "embedding_model": "no-such-model"}, 200).decode(t, &vs2)
	got := tc.waitFile(alice.Token, vs2.ID, good.ID)
	if got.Status != "failed" || got.LastError == nil || got.LastError.Code != "server_error" || !strings.Contains(got.LastError.Message, "no-such-model") {
		t.Fatalf("file with a refused model: %+v", got)
	}
	// Searching it fails with the gateway's status class, not a 500.
	r := tc.do("POST", "/v1/vector_stores/"+vs2.ID+"/search", map[string]any{"query": "seals"}, bearer(alice.Token))
	if r.Status != 400 {
		t.Fatalf("search with a refused model: %d %s", r.Status, r.Body)
	}
}

func TestVectorStoreFileBatches(t *testing.T) {
	emb := &fakeEmbedder{}
	tc := startKnowledge(t, emb)
	admin := tc.adminToken()
	alice := tc.createUser(admin, "user")
	f1 := tc.uploadFile(alice.Token, "one.txt", "assistants", "first file about otters")
	f2 := tc.uploadFile(alice.Token, "two.txt", "assistants", "second file about beavers")
	var vs storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{"name": "b"}, 200).decode(t, &vs)
	type batchObj struct {
		ID         string `json:"id"`
		Object     string `json:"object"`
		Status     string `json:"status"`
		FileCounts struct {
			InProgress, Completed, Failed, Cancelled, Total int64
		} `json:"file_counts"`
	}
	var b batchObj
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/file_batches", alice.Token, map[string]any{
		"file_ids": []string{f1.ID, f2.ID}, "attributes": map[string]any{"kind": "animal"}}, 200).decode(t, &b)
	if !strings.HasPrefix(b.ID, "vsfb_") || b.Object != "vector_store.files_batch" || b.FileCounts.Total != 2 {
		t.Fatalf("batch: %+v", b)
	}
	waitFor(t, 20*time.Second, "batch completed", func() bool {
		tc.call("GET", "/v1/vector_stores/"+vs.ID+"/file_batches/"+b.ID, alice.Token, nil, 200).decode(t, &b)
		return b.Status == "completed"
	})
	if b.FileCounts.Completed != 2 {
		t.Fatalf("batch: %+v", b)
	}
	var files struct {
		Data []storeFileObj `json:"data"`
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/file_batches/"+b.ID+"/files", alice.Token, nil, 200).decode(t, &files)
	if len(files.Data) != 2 || files.Data[0].Attributes["kind"] != "animal" {
		t.Fatalf("batch files: %+v", files)
	}

	// A batch cancelled while its files embed: they end cancelled, with no vectors.
	emb.mu.Lock()
	emb.block = make(chan struct{})
	block := emb.block
	emb.mu.Unlock()
	f3 := tc.uploadFile(alice.Token, "three.txt", "assistants", "third file about herons")
	var b2 batchObj
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/file_batches", alice.Token, map[string]any{"files": []any{map[string]any{"file_id": f3.ID}}}, 200).decode(t, &b2)
	waitFor(t, 20*time.Second, "ingestion to start embedding", func() bool { return len(emb.identities()) > 2 })
	tc.call("POST", "/v1/vector_stores/"+vs.ID+"/file_batches/"+b2.ID+"/cancel", alice.Token, nil, 200).decode(t, &b2)
	close(block)
	if b2.Status != "cancelled" || b2.FileCounts.Cancelled != 1 {
		t.Fatalf("cancelled batch: %+v", b2)
	}
	// The job, released, must not complete the file or leave vectors.
	waitFor(t, 20*time.Second, "cancelled ingestion to end", func() bool {
		return tc.count(`SELECT count(*) FROM river_job WHERE kind = 'knowledge.ingest' AND state NOT IN ('completed', 'discarded', 'cancelled')`) == 0
	})
	if f := tc.waitFile(alice.Token, vs.ID, f3.ID); f.Status != "cancelled" {
		t.Fatalf("file of the cancelled batch: %+v", f)
	}
	if n := tc.count(`SELECT count(*) FROM vector_index_chunks WHERE store_id = $1 AND file_id = $2`, vs.ID, f3.ID); n != 0 {
		t.Fatalf("%d vectors of a cancelled file", n)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID+"/file_batches/vsfb_nope", alice.Token, nil, 404)
}

var _ = math.Abs

// A store past its expires_after is reported expired and refuses searches; a modify that
// sets a new policy restarts the clock.
func TestVectorStoreExpiry(t *testing.T) {
	tc := startKnowledge(t, &fakeEmbedder{})
	alice := tc.createUser(tc.adminToken(), "user")
	var vs storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{"expires_after": map[string]any{"anchor": "last_active_at", "days": 2}}, 200).decode(t, &vs)
	if vs.Status != "completed" || vs.ExpiresAt == nil {
		t.Fatalf("new store: %+v", vs)
	}
	tc.search(alice.Token, vs.ID, map[string]any{"query": "anything"})
	if _, err := tc.Pool.Exec(context.Background(), `UPDATE vector_stores SET last_active_at = now() - interval '3 days' WHERE id = $1`, vs.ID); err != nil {
		t.Fatal(err)
	}
	tc.call("GET", "/v1/vector_stores/"+vs.ID, alice.Token, nil, 200).decode(t, &vs)
	if vs.Status != "expired" {
		t.Fatalf("store 3 days idle with a 2-day policy: %+v", vs)
	}
	r := tc.do("POST", "/v1/vector_stores/"+vs.ID+"/search", map[string]any{"query": "anything"}, bearer(alice.Token))
	if e := r.apiErr(t); r.Status != 400 || e.Error.Code == nil || *e.Error.Code != "vector_store_expired" {
		t.Fatalf("search of an expired store: %d %s", r.Status, r.Body)
	}
	tc.call("POST", "/v1/vector_stores/"+vs.ID, alice.Token, map[string]any{"expires_after": map[string]any{"anchor": "last_active_at", "days": 2}}, 200).decode(t, &vs)
	if vs.Status != "completed" {
		t.Fatalf("after a new policy: %+v", vs)
	}
	tc.search(alice.Token, vs.ID, map[string]any{"query": "anything"})
}
