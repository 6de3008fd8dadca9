package snapshot

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

func seed(t *testing.T, pool *pgxpool.Pool, key string) int64 {
	t.Helper()
	ctx := context.Background()
	var uid, kid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('alice', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	h := apikey.Sum([]byte(key))
	if err := pool.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash, rpm) VALUES ($1, 'k', 'sk-', $2, 60) RETURNING id`,
		uid, h[:]).Scan(&kid); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO user_roles (user_id, role_id) SELECT $1, id FROM roles WHERE name = 'developer'`,
		`INSERT INTO user_quotas (user_id, requests_per_minute, monthly_token_budget) VALUES ($1, 100, 5000)`,
	} {
		if _, err := pool.Exec(ctx, q, uid); err != nil {
			t.Fatal(err)
		}
	}
	_, err := pool.Exec(ctx, `
		INSERT INTO models (name, type, max_output_tokens, routing_policy) VALUES ('chat', 'chat', 256, 'prefix_affinity');
		INSERT INTO models (name, type, base_model) VALUES ('ft:chat:x:ftjob-1', 'chat', 'chat');
		INSERT INTO model_aliases (alias, model_id) SELECT 'chat-latest', id FROM models WHERE name = 'chat';
		INSERT INTO backends (id, url, engine_kind, models, capacity, weight) VALUES ('b1', 'http://127.0.0.1:9', 'sim', '{chat}', 8, 50);`)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}

func TestReadTranslatesTables(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	const key = "sk-test-key"
	kid := seed(t, pool, key)
	s, err := Read(context.Background(), pool, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	k := s.Key(apikey.Sum([]byte(key)))
	if k == nil || k.ID != kid || k.RequestsPerMinute != 60 || k.Models != nil {
		t.Fatalf("key %+v", k)
	}
	u := k.User
	if u.Username != "alice" || !u.HasRole("developer") || u.Quota.RequestsPerMinute != 100 || u.Quota.MonthlyTokenBudget != 5000 || u.Quota.TokensPerMinute != 0 {
		t.Errorf("user %+v", u)
	}
	m := s.Model("chat-latest")
	if m == nil || m.Name != "chat" || m.MaxOutputTokens != 256 || m.Policy != PolicyPrefixAffinity || m.Type != "chat" {
		t.Errorf("model %+v", m)
	}
	if m.BaseModel != "" {
		t.Errorf("model %s has base model %q", m.Name, m.BaseModel)
	}
	if a := s.Model("ft:chat:x:ftjob-1"); a == nil || a.BaseModel != "chat" {
		t.Errorf("adapter %+v, want base model chat", a)
	}
	if len(s.Backends) != 1 || s.Backends[0].Capacity != 8 || s.Backends[0].Weight != 50 || s.Backends[0].HeartbeatInterval != 2*time.Second {
		t.Errorf("backends %+v", s.Backends)
	}
}

func TestStoreFollowsNotifications(t *testing.T) {
	pool, url := pgtest.NewPool(t)
	const key = "sk-revoke-me"
	kid := seed(t, pool, key)
	o := DefaultOptions()
	o.Pool, o.DatabaseURL = pool, url
	var mu sync.Mutex
	var loads int
	o.OnLoad = func([]Load) { mu.Lock(); loads++; mu.Unlock() }
	o.LoadRefreshInterval = 50 * time.Millisecond
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-s.Loaded()
	if ok, why := s.Status(); !ok {
		t.Fatalf("not ready: %s", why)
	}
	h := apikey.Sum([]byte(key))
	if s.Current().Key(h) == nil {
		t.Fatal("key missing")
	}
	// Revocation reaches the snapshot within a second, through NOTIFY (the full reload
	// runs only every 30 s).
	start := time.Now()
	if _, err := pool.Exec(context.Background(), `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, kid); err != nil {
		t.Fatal(err)
	}
	for s.Current().Key(h) != nil {
		if time.Since(start) > time.Second {
			t.Fatal("revoked key still in the snapshot after 1 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("revocation visible after %v", time.Since(start))
	// Load figures are refreshed without NOTIFY.
	mu.Lock()
	before := loads
	mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	after := loads
	mu.Unlock()
	if after <= before {
		t.Error("load figures not refreshed")
	}
}

func TestStoreDegradedWithoutDatabase(t *testing.T) {
	pool, url := pgtest.NewPool(t)
	seed(t, pool, "sk-x")
	// A second pool we can close, standing for the database going away.
	pool2, err := pgdb.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Pool, o.DatabaseURL = pool2, url
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	pool2.Close()
	if err := s.ReloadNow(context.Background()); err == nil {
		t.Fatal("reload on a closed pool succeeded")
	}
	ok, why := s.Status()
	if ok || why == "" {
		t.Errorf("status %v %q, want degraded", ok, why)
	}
	if s.Current() == nil || s.Current().Key(apikey.Sum([]byte("sk-x"))) == nil {
		t.Error("last snapshot not kept")
	}
}
