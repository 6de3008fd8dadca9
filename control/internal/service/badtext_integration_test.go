package service

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/maas-platform/maas/pkg/training"
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

// TestFineTuneWorkerText: a worker's messages are stored whatever their bytes (NUL dropped,
// cut on a character boundary: a cut inside one failed the call on every resend), and a
// worker_id or error code PostgreSQL would refuse answers 400.
func TestFineTuneWorkerText(t *testing.T) {
	tc := startControl(t, fineTuneOptions)
	_, dev, trainID := fineTuneSetup(t, tc)
	j := tc.createJob(dev.Token, map[string]any{"model": "base-chat", "training_file": trainID})
	tc.waitStatus(dev.Token, j.ID, "queued")

	r := tc.internal("POST", "/internal/v1/fine_tuning/claim", "", training.ClaimRequest{WorkerID: "gpu\x00worker", GPUs: 1}, 400)
	if e := r.apiErr(t); e.Error.Param == nil || *e.Error.Param != "worker_id" {
		t.Errorf("claim with NUL in worker_id: %s", r.Body)
	}
	task := tc.claim("gpu-worker-1", 30)
	if task == nil {
		t.Fatal("claim: no task although a job is queued")
	}
	long := "x" + strings.Repeat("é", 1500) // 3001 bytes: byte 2000 is inside an é
	base := "/internal/v1/fine_tuning/jobs/" + j.ID
	tc.internal("POST", base+"/events", task.LeaseToken, training.EventsRequest{Events: []training.Event{
		{Message: long}, {Message: "nul\x00here"}}}, 204)
	msgs := map[string]bool{}
	for _, e := range tc.events(dev.Token, j.ID, "?limit=100").Data {
		msgs[e.Message] = true
	}
	if want := "x" + strings.Repeat("é", 999); !msgs[want] {
		t.Errorf("the long message is not stored cut to %d bytes: %v", len(want), msgs)
	}
	if !msgs["nulhere"] {
		t.Errorf("the message with NUL is not stored cleaned: %v", msgs)
	}

	r = tc.internal("POST", base+"/fail", task.LeaseToken, training.FailRequest{Code: "oom\x00", Message: "out of memory"}, 400)
	if e := r.apiErr(t); e.Error.Param == nil || *e.Error.Param != "code" {
		t.Errorf("fail with NUL in code: %s", r.Body)
	}
	tc.internal("POST", base+"/fail", task.LeaseToken, training.FailRequest{Code: "oom", Message: long}, 204)
	failed := tc.waitStatus(dev.Token, j.ID, "failed")
	if failed.Error == nil || !utf8.ValidString(failed.Error.Message) || len(failed.Error.Message) > 2000 {
		t.Errorf("failed job's error %+v", failed.Error)
	}
}
