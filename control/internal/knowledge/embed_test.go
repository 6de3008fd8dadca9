package knowledge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/internalauth"
)

// TestGatewayEmbedder checks the request control sends the gateway (the contract in
// pkg/internalauth's doc) and how answers are read.
func TestGatewayEmbedder(t *testing.T) {
	const token = "internal-token-for-the-test"
	now := time.Unix(1_800_000_000, 0)
	var status int
	var answer string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/embeddings" || r.Method != "POST" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		if !internalauth.CheckBearer(r.Header.Get("Authorization"), token) {
			t.Errorf("bearer %q is not the internal token", r.Header.Get("Authorization"))
		}
		id, err := internalauth.Verify(token, r.Header.Get, now)
		if err != nil || id.UserID != 42 || id.KeyID != 0 || !slices.Equal(id.Roles, []string{"user"}) {
			t.Errorf("signed identity %+v, %v", id, err)
		}
		if r.Header.Get(ServiceHeader) != "knowledge" {
			t.Errorf("%s = %q", ServiceHeader, r.Header.Get(ServiceHeader))
		}
		var req embeddingsRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "m" || req.EncodingFormat != "float" || len(req.Input) != 2 {
			t.Errorf("body %+v, %v", req, err)
		}
		w.WriteHeader(status)
		w.Write([]byte(answer))
	}))
	defer srv.Close()
	g := &GatewayEmbedder{URL: srv.URL + "/", Token: token, Now: func() time.Time { return now }}
	call := func() ([][]float32, error) {
		return g.Embed(context.Background(), Identity{UserID: 42, Roles: []string{"user"}}, "m", []string{"a", "b"})
	}

	status, answer = 200, `{"data":[{"index":1,"embedding":[0,1]},{"index":0,"embedding":[1,0]}]}`
	vecs, err := call()
	if err != nil || len(vecs) != 2 || vecs[0][0] != 1 || vecs[1][1] != 1 {
		t.Fatalf("vectors %v, %v (answers are placed by index)", vecs, err)
	}
	for _, c := range []struct {
		status    int
		answer    string
		permanent bool
		code      string
	}{
		{429, `{"error":{"message":"slow down","code":"rate_limit_exceeded"}}`, false, "rate_limit_exceeded"},
		{404, `{"error":{"message":"model m does not exist","code":"model_not_found"}}`, true, "model_not_found"},
		{503, `not json`, false, ""},
		{200, `{"data":[{"index":0,"embedding":[1]}]}`, false, ""}, // one vector missing
		{200, `{"data":[{"index":5,"embedding":[1]},{"index":0,"embedding":[1]}]}`, false, ""},
	} {
		status, answer = c.status, c.answer
		_, err := call()
		var ee *EmbedError
		if !errors.As(err, &ee) || ee.Status != c.status || ee.Permanent() != c.permanent || ee.Code != c.code {
			t.Errorf("answer %d %s: %v (%+v)", c.status, c.answer, err, ee)
		}
	}
	srv.Close()
	if _, err := call(); err == nil {
		t.Fatal("no error from a closed gateway")
	} else if ee := (*EmbedError)(nil); !errors.As(err, &ee) || ee.Status != 0 || ee.Permanent() {
		t.Fatalf("closed gateway: %v", err)
	}
}
