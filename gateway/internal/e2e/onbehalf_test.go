package e2e

import (
	"context"
	"database/sql"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/internalauth"
)

// A platform service (control's knowledge ingestion) embeds for a user with the internal
// token and the user's identity signed with it, instead of an API key: served as the
// user's own request on /v1/embeddings (ledger row under the user, no key, the service
// named in its endpoint), refused on any other endpoint and with a bad or stale signature.
func TestEmbeddingsOnBehalfOfUser(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-ob")
	_, gw := e.gateway()
	e.key(gw, nil) // the gateway is ready and knows the admin

	var alice struct {
		ID int64 `json:"id"`
	}
	e.p.Do("POST", e.p.ControlURL+"/api/v1/users", e.admin,
		map[string]any{"username": "alice", "password": "alice-password-1", "roles": []string{"user"}}, 201, &alice)
	aliceKey := e.p.CreateKey(e.p.Login("alice", "alice-password-1"), map[string]any{"name": "alice"})
	waitStatus(t, gw, aliceKey, 200, time.Second)

	const emb = `{"model":"sim-embedding","input":["hello world"]}`
	signed := func(path, token string, uid, keyID int64, at time.Time, bearer string) (int, http.Header, []byte) {
		var hdr []string
		for k, v := range internalauth.Sign(token, internalauth.Identity{UserID: uid, KeyID: keyID, Roles: []string{"admin"}}, at) {
			hdr = append(hdr, k, v)
		}
		hdr = append(hdr, "X-Maas-Service", "knowledge")
		body := emb
		if path == "/v1/chat/completions" {
			body = `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
		}
		return post(t, gw+path, bearer, body, hdr...)
	}
	tok := e.p.Token
	now := time.Now()

	// Valid: 200, and a ledger row for alice with no key, marked as the knowledge service's.
	// (A user reaches the gateway's snapshot with its next reload, by NOTIFY: up to a moment
	// after control created it; a key is looked up on its first use, its user with it.)
	var (
		st int
		h  http.Header
		b  []byte
	)
	for wait := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, h, b = signed("/v1/embeddings", tok, alice.ID, 0, time.Now(), tok)
		if st != 401 || time.Now().After(wait) {
			break
		}
	}
	if st != 200 || !strings.Contains(string(b), `"embedding"`) {
		t.Fatalf("signed embeddings request: %d %s", st, b)
	}
	var (
		uid, kid sql.NullInt64
		endpoint string
	)
	id := h.Get("X-Request-Id")
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := e.db.QueryRow(context.Background(), `SELECT user_id, api_key_id, endpoint FROM usage_records WHERE request_id = $1`, id).
			Scan(&uid, &kid, &endpoint)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no usage record for %s: %v", id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if uid.Int64 != alice.ID || kid.Valid || endpoint != "knowledge:/v1/embeddings" {
		t.Errorf("usage record: user %v key %v endpoint %q; want user %d, no key, knowledge:/v1/embeddings", uid, kid, endpoint, alice.ID)
	}

	for _, tc := range []struct {
		name   string
		path   string
		token  string
		uid    int64
		keyID  int64
		at     time.Time
		bearer string
	}{
		{"expired", "/v1/embeddings", tok, alice.ID, 0, now.Add(-2 * internalauth.MaxSkew), tok},
		{"signed with another token", "/v1/embeddings", "not-the-internal-token-0", alice.ID, 0, now, tok},
		{"bearer is not the internal token", "/v1/embeddings", tok, alice.ID, 0, now, "not-the-internal-token-0"},
		{"no bearer", "/v1/embeddings", tok, alice.ID, 0, now, ""},
		{"names a key", "/v1/embeddings", tok, alice.ID, 1, now, tok},
		{"unknown user", "/v1/embeddings", tok, alice.ID + 1000, 0, now, tok},
		{"chat completions", "/v1/chat/completions", tok, alice.ID, 0, now, tok},
		{"completions", "/v1/completions", tok, alice.ID, 0, now, tok},
	} {
		if st, _, b := signed(tc.path, tc.token, tc.uid, tc.keyID, tc.at, tc.bearer); st != 401 {
			t.Errorf("%s: %d %s, want 401", tc.name, st, b)
		}
	}
	// Nor does a signed identity open the models list.
	req, _ := http.NewRequest("GET", gw+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	for k, v := range internalauth.Sign(tok, internalauth.Identity{UserID: alice.ID}, now) {
		req.Header.Set(k, v)
	}
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("GET /v1/models with a signed identity: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}

	// A disabled user: 401.
	if _, err := e.db.Exec(context.Background(), `UPDATE users SET is_active = false WHERE id = $1`, alice.ID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, gw, aliceKey, 401, 2*time.Second)
	if st, _, b := signed("/v1/embeddings", tok, alice.ID, 0, time.Now(), tok); st != 401 {
		t.Errorf("disabled user: %d %s", st, b)
	}
	if _, err := e.db.Exec(context.Background(), `UPDATE users SET is_active = true WHERE id = $1`, alice.ID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, gw, aliceKey, 200, 2*time.Second)

	// A model the user may not see: refused as for the user's own key.
	if _, err := e.db.Exec(context.Background(), `INSERT INTO models (name, type, visibility, allowed_roles)
		VALUES ('sim-embedding', 'embedding', 'restricted', '{developer}')
		ON CONFLICT (name) DO UPDATE SET visibility = 'restricted', allowed_roles = '{developer}'`); err != nil {
		t.Fatal(err)
	}
	var keySt int
	deadline = time.Now().Add(2 * time.Second)
	for {
		keySt, _, _ = post(t, gw+"/v1/embeddings", aliceKey, emb)
		if keySt != 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, _, b = signed("/v1/embeddings", tok, alice.ID, 0, time.Now(), tok)
	if keySt == 200 || st != keySt {
		t.Errorf("restricted model: signed request %d %s, alice's key %d; want the key's refusal", st, b, keySt)
	}
	t.Logf("restricted model: %d for the key and for the signed identity: %s", keySt, b)
}
