package proxy

import (
	"context"
	"net"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// A key inserted in PostgreSQL works on its very first request, before any snapshot reload
// (the Store's loops are not even running): the gateway looks it up once. A revoked key is
// still refused. Without the look-up every one of these requests is a 401.
func TestNewKeyWorksBeforeTheSnapshotHasIt(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	so := snapshot.DefaultOptions()
	so.Pool, so.Registerer = pool, prometheus.NewRegistry()
	so.KeyLookupRate = 1000 // the default (50/s) would make 200 back-to-back keys take 4 s
	store, err := snapshot.New(so)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.ReloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	ups, err := upstream.New(upstream.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Snapshots, o.Pool, o.AccessLog = store, ups, false
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h.Models}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	url := "http://" + ln.Addr().String() + "/v1/models"
	get := func(key string) int {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	ctx := context.Background()
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('first', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	insert := func(scopes string) (string, int64) {
		secret, err := apikey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		sum := apikey.Sum([]byte(secret))
		var id int64
		if err := pool.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes) VALUES ($1, 'k', 'sk-', $2, $3) RETURNING id`,
			uid, sum[:], scopes).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return secret, id
	}
	refused := 0
	for range 200 {
		key, _ := insert("{inference}")
		if st := get(key); st != 200 {
			refused++
		}
	}
	if refused != 0 {
		t.Errorf("%d of 200 new keys refused on their first request", refused)
	}

	revoked, id := insert("{inference}")
	if _, err := pool.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if st := get(revoked); st != 401 {
		t.Errorf("revoked key: status %d, want 401", st)
	}
	// A new key without the inference scope is found but refused for the OpenAI API.
	mgmt, _ := insert("{management}")
	if st := get(mgmt); st != 403 {
		t.Errorf("management-only key on /v1/models: status %d, want 403", st)
	}
}
