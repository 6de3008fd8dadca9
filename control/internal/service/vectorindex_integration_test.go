package service

import (
	"slices"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/vectorindex/milvus/milvustest"
)

// Control started with MAAS_MILVUS_ADDR keeps its vector stores in Milvus (the in-process
// fake): ingestion upserts there, a filtered vector search is answered from there, and
// detaching a file deletes its chunks there.
func TestVectorStoresOnMilvus(t *testing.T) {
	srv := milvustest.Start(t)
	emb := &fakeEmbedder{}
	tc := startControl(t, func(o *Options) {
		o.Knowledge.Embedder = emb
		o.Knowledge.EmbedBatch = 2
		o.FineTune.JobPoll = 50 * time.Millisecond
		o.Milvus.Addr = srv.Addr()
	})
	admin := tc.adminToken()
	alice := tc.createUser(admin, "user")
	tides := tc.uploadFile(alice.Token, "tides.txt", "assistants", "Ocean tides follow the moon. Spring tides come with the full moon.")
	bread := tc.uploadFile(alice.Token, "bread.txt", "assistants", "A sourdough starter needs flour, water and patience.")
	var vs storeObj
	tc.call("POST", "/v1/vector_stores", alice.Token, map[string]any{"name": "on milvus"}, 200).decode(t, &vs)
	for _, f := range []struct {
		id   string
		lang string
	}{{tides.ID, "en"}, {bread.ID, "fr"}} {
		tc.call("POST", "/v1/vector_stores/"+vs.ID+"/files", alice.Token, map[string]any{
			"file_id": f.id, "attributes": map[string]any{"lang": f.lang},
		}, 200)
		if got := tc.waitFile(alice.Token, vs.ID, f.id); got.Status != "completed" {
			t.Fatalf("file %s: %+v", f.id, got)
		}
	}
	const coll = "maas_chunks_512" // the fake embedder's length
	if n := srv.Rows(coll); n < 2 {
		t.Fatalf("%s holds %d rows after ingestion, want the chunks of both files", coll, n)
	}
	vectorOnly := map[string]any{"hybrid_search": map[string]any{"embedding_weight": 1, "text_weight": 0}}
	searches := srv.Calls("Search")
	p := tc.search(alice.Token, vs.ID, map[string]any{"query": "sourdough flour", "max_num_results": 5, "ranking_options": vectorOnly})
	if got := p.files(); len(got) == 0 || got[0] != bread.ID {
		t.Fatalf("search: %v, want %s first", got, bread.ID)
	}
	if srv.Calls("Search") == searches {
		t.Fatal("the search was not answered by Milvus")
	}
	p = tc.search(alice.Token, vs.ID, map[string]any{"query": "sourdough flour", "max_num_results": 5, "ranking_options": vectorOnly,
		"filters": map[string]any{"type": "eq", "key": "lang", "value": "en"}})
	if got := p.files(); !slices.Equal(got, []string{tides.ID}) {
		t.Fatalf("filtered search: %v, want only %s", got, tides.ID)
	}
	tc.call("DELETE", "/v1/vector_stores/"+vs.ID+"/files/"+bread.ID, alice.Token, nil, 200)
	p = tc.search(alice.Token, vs.ID, map[string]any{"query": "sourdough flour", "max_num_results": 5, "ranking_options": vectorOnly})
	if slices.Contains(p.files(), bread.ID) {
		t.Fatalf("detached file still found: %v", p.files())
	}
	tc.call("DELETE", "/v1/vector_stores/"+vs.ID, alice.Token, nil, 200)
	waitFor(t, 10*time.Second, "the store's chunks deleted from Milvus", func() bool { return srv.Rows(coll) == 0 })
}
