package service

import (
	"net/url"
	"testing"
)

// TestBadTextRefused: text PostgreSQL refuses (NUL, invalid UTF-8) in a cursor, a name, a
// metadata or attribute key or value, a search query or filter, or a model answers 400
// naming the parameter (or 404 for an id in the path), never 500.
func TestBadTextRefused(t *testing.T) {
	emb := &fakeEmbedder{}
	tc := startKnowledge(t, emb)
	admin, dev, trainID := fineTuneSetup(t, tc)
	_ = admin
	tok := dev.Token
	var vs storeObj
	tc.call("POST", "/v1/vector_stores", tok, map[string]any{"name": "ok"}, 200).decode(t, &vs)
	doc := tc.uploadFile(tok, "doc.txt", "assistants", "Plain words to search for.")
	j := tc.createJob(tok, map[string]any{"model": "base-chat", "training_file": trainID})

	const nul = "a\x00b"
	bad := "%FF"
	store := "/v1/vector_stores/" + vs.ID
	cases := []struct {
		name, method, path string
		body               any
		status             int
		param              string
	}{
		{"stores after", "GET", "/v1/vector_stores?after=" + bad, nil, 400, "after"},
		{"stores after NUL", "GET", "/v1/vector_stores?after=" + url.QueryEscape(nul), nil, 400, "after"},
		{"store id", "GET", "/v1/vector_stores/" + bad, nil, 404, ""},
		{"store files after", "GET", store + "/files?after=" + bad, nil, 400, "after"},
		{"store file id", "GET", store + "/files/" + bad, nil, 404, ""},
		{"batch id", "GET", store + "/file_batches/" + bad, nil, 404, ""},
		{"batch cancel id", "POST", store + "/file_batches/" + bad + "/cancel", nil, 404, ""},
		{"store name", "POST", "/v1/vector_stores", map[string]any{"name": nul}, 400, "name"},
		{"store metadata value", "POST", "/v1/vector_stores", map[string]any{"metadata": map[string]string{"k": nul}}, 400, "metadata"},
		{"store metadata key", "POST", "/v1/vector_stores", map[string]any{"metadata": map[string]string{nul: "v"}}, 400, "metadata"},
		{"embedding model", "POST", "/v1/vector_stores", map[string]any{"embedding_model": nul}, 400, "embedding_model"},
		{"modify name", "POST", store, map[string]any{"name": nul}, 400, "name"},
		{"modify metadata", "POST", store, map[string]any{"metadata": map[string]string{"k": nul}}, 400, "metadata"},
		{"attribute value", "POST", store + "/files", map[string]any{"file_id": doc.ID, "attributes": map[string]any{"k": nul}}, 400, "attributes"},
		{"attribute key", "POST", store + "/files", map[string]any{"file_id": doc.ID, "attributes": map[string]any{nul: "v"}}, 400, "attributes"},
		{"search query", "POST", store + "/search", map[string]any{"query": nul}, 400, "query"},
		{"search queries", "POST", store + "/search", map[string]any{"query": []string{"fine", nul}}, 400, "query"},
		{"filter value", "POST", store + "/search", map[string]any{"query": "x", "filters": map[string]any{"type": "eq", "key": "k", "value": nul}}, 400, "filters.value"},
		{"filter key", "POST", store + "/search", map[string]any{"query": "x", "filters": map[string]any{"type": "eq", "key": nul, "value": "v"}}, 400, "filters.key"},
		{"filter in value", "POST", store + "/search", map[string]any{"query": "x", "filters": map[string]any{"type": "and", "filters": []any{
			map[string]any{"type": "in", "key": "k", "value": []any{"ok", nul}}}}}, 400, "filters.filters[0].value"},
		{"jobs after", "GET", "/v1/fine_tuning/jobs?after=" + bad, nil, 400, "after"},
		{"job id", "GET", "/v1/fine_tuning/jobs/" + bad, nil, 404, ""},
		{"job id NUL", "GET", "/v1/fine_tuning/jobs/a%00b", nil, 404, ""},
		{"store id NUL", "GET", "/v1/vector_stores/a%00b", nil, 404, ""},
		{"store file id NUL", "GET", store + "/files/a%00b", nil, 404, ""},
		{"job cancel id", "POST", "/v1/fine_tuning/jobs/" + bad + "/cancel", nil, 404, ""},
		{"events after", "GET", "/v1/fine_tuning/jobs/" + j.ID + "/events?after=" + bad, nil, 400, "after"},
		{"checkpoints after", "GET", "/v1/fine_tuning/jobs/" + j.ID + "/checkpoints?after=" + bad, nil, 400, "after"},
		{"job model", "POST", "/v1/fine_tuning/jobs", map[string]any{"model": nul, "training_file": trainID}, 400, "model"},
		{"job metadata", "POST", "/v1/fine_tuning/jobs", map[string]any{"model": "base-chat", "training_file": trainID,
			"metadata": map[string]string{"k": nul}}, 400, "metadata"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := tc.do(c.method, c.path, c.body, bearer(tok))
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			e := r.apiErr(t)
			if c.param != "" && (e.Error.Param == nil || *e.Error.Param != c.param) {
				t.Errorf("param %v, want %q: %s", e.Error.Param, c.param, r.Body)
			}
		})
	}

	// A file whose extracted text has NUL (raw in html) is ingested, cleaned.
	html := tc.uploadFile(tok, "nul.html", "assistants", "<html><body><p>Null\x00bytes are dropped.</p></body></html>")
	tc.call("POST", store+"/files", tok, map[string]any{"file_id": html.ID}, 200)
	if got := tc.waitFile(tok, vs.ID, html.ID); got.Status != "completed" {
		t.Errorf("html with NUL: %+v", got)
	}
}
