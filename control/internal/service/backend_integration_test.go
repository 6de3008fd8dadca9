package service

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/pkg/registry"
)

func (tc *testControl) backend(id string) (registry.Backend, int) {
	tc.t.Helper()
	var b registry.Backend
	r := tc.do("GET", "/api/v1/backends/"+id, nil, bearer(tc.adminTokenCached()))
	if r.Status == 200 {
		r.decode(tc.t, &b)
	}
	return b, r.Status
}

var adminTokens = map[*testing.T]string{}

func (tc *testControl) adminTokenCached() string {
	if tok, ok := adminTokens[tc.t]; ok {
		return tok
	}
	tok := tc.adminToken()
	adminTokens[tc.t] = tok
	tc.t.Cleanup(func() { delete(adminTokens, tc.t) })
	return tok
}

func TestBackendHeartbeatExpiry(t *testing.T) {
	tc := startControl(t, func(o *Options) { o.BackendRemoveAfter = 1500 * time.Millisecond })
	const id = "ttl-backend"
	hb := func(body map[string]any) (registry.Backend, response) {
		r := tc.do("POST", "/internal/v1/backends/"+id+"/heartbeat", body, bearer(testInternalToken))
		var b registry.Backend
		if r.Status == 200 {
			r.decode(t, &b)
		}
		return b, r
	}
	var reg registry.Backend
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody(id, 100), 200).decode(t, &reg)
	if reg.State != registry.StateHealthy || reg.HeartbeatIntervalMS != 100 || reg.Weight != 100 {
		t.Fatalf("registered %+v", reg)
	}

	// Heartbeats keep it healthy well past 3 intervals and record the load.
	for range 8 {
		b, r := hb(map[string]any{"state": "healthy", "running_requests": 3, "waiting_requests": 1, "kv_cache_usage": 0.5})
		if r.Status != 200 || b.State != registry.StateHealthy || b.Running != 3 || b.KVCacheUsage != 0.5 {
			t.Fatalf("heartbeat: %d %+v", r.Status, b)
		}
		time.Sleep(50 * time.Millisecond) // the heartbeat cadence of a worker, not a wait for a timer
	}
	// Silence: unhealthy after 3 missed intervals (300ms), checked by polling.
	start := time.Now()
	waitFor(t, 5*time.Second, "backend unhealthy", func() bool {
		b, _ := tc.backend(id)
		return b.State == registry.StateUnhealthy
	})
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("marked unhealthy after %v, before 3 intervals passed", took)
	}
	// A heartbeat brings it back.
	if b, r := hb(map[string]any{"state": "healthy"}); r.Status != 200 || b.State != registry.StateHealthy {
		t.Fatalf("heartbeat after expiry: %d %+v", r.Status, b)
	}
	// Silence again: unhealthy, then removed after MAAS_BACKEND_REMOVE_AFTER.
	waitFor(t, 10*time.Second, "backend removed", func() bool {
		_, status := tc.backend(id)
		return status == 404
	})
	// The worker's next heartbeat learns that control forgot it, and re-registers.
	_, r := hb(map[string]any{"state": "healthy"})
	if r.Status != 404 {
		t.Fatalf("heartbeat of a removed backend: %d %s", r.Status, r.Body)
	}
	if e := r.apiErr(t); e.Error.Code == nil || *e.Error.Code != registry.NotFoundCode {
		t.Errorf("code %v, want %s", e.Error.Code, registry.NotFoundCode)
	}
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody(id, 60000), 200)

	metrics := string(tc.call("GET", "/metrics", "", nil, 200).Body)
	for _, want := range []string{
		`maas_control_backend_reaper_actions_total{action="unhealthy"} 2`,
		`maas_control_backend_reaper_actions_total{action="removed"} 1`,
		`maas_control_http_requests_total{method="POST",route="/internal/v1/backends/{id}/heartbeat",status="200"}`,
		`maas_control_backends{state="healthy"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestBackendOperatorChanges(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminTokenCached()
	const id = "op-backend"
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody(id, 60000), 200)

	var b registry.Backend
	tc.call("PATCH", "/api/v1/backends/"+id, admin, map[string]any{"weight": 7, "drain": true}, 200).decode(t, &b)
	if b.Weight != 7 || b.State != registry.StateDraining {
		t.Fatalf("after drain %+v", b)
	}
	// Draining is sticky across heartbeats and re-registration; operator settings survive.
	tc.call("POST", "/internal/v1/backends/"+id+"/heartbeat", testInternalToken, map[string]any{"state": "healthy"}, 200).decode(t, &b)
	if b.State != registry.StateDraining {
		t.Errorf("heartbeat undrained the backend: %+v", b)
	}
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody(id, 60000), 200).decode(t, &b)
	if b.State != registry.StateDraining || b.Weight != 7 {
		t.Errorf("re-registration lost operator settings: %+v", b)
	}
	tc.call("PATCH", "/api/v1/backends/"+id, admin, map[string]any{"drain": false, "disabled": true}, 200).decode(t, &b)
	if b.State != registry.StateHealthy || !b.Disabled {
		t.Errorf("after undrain+disable %+v", b)
	}
	// Heartbeat may replace the served models.
	tc.call("POST", "/internal/v1/backends/"+id+"/heartbeat", testInternalToken, map[string]any{"models": []string{"only-this"}}, 200).decode(t, &b)
	if len(b.Models) != 1 || b.Models[0] != "only-this" {
		t.Errorf("models %v", b.Models)
	}
	var list struct {
		Data   []registry.Backend `json:"data"`
		LastID string             `json:"last_id"`
	}
	tc.call("GET", "/api/v1/backends", admin, nil, 200).decode(t, &list)
	if len(list.Data) != 1 || list.LastID != id {
		t.Errorf("list %+v", list)
	}
	tc.call("POST", "/internal/v1/backends/"+id+"/deregister", testInternalToken, nil, 204)
	tc.call("POST", "/internal/v1/backends/"+id+"/deregister", testInternalToken, nil, 204)
	tc.call("GET", "/api/v1/backends/"+id, admin, nil, 404)
}

type change struct {
	Version int64  `json:"version"`
	Table   string `json:"table"`
}

// TestNotifyOnChanges checks that API changes reach LISTENers on maas_changes with a
// growing version, and that load-only heartbeats do not.
func TestNotifyOnChanges(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminTokenCached()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, tc.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN maas_changes"); err != nil {
		t.Fatal(err)
	}
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody("n1", 60000), 200)
	// One goroutine owns the connection and forwards notifications.
	lctx, stopListen := context.WithCancel(ctx)
	notes := make(chan change, 100)
	listenDone := make(chan struct{})
	go func() {
		defer close(listenDone)
		for {
			n, err := conn.WaitForNotification(lctx)
			if err != nil {
				return
			}
			var c change
			if err := json.Unmarshal([]byte(n.Payload), &c); err != nil {
				t.Errorf("payload %q: %v", n.Payload, err)
				return
			}
			notes <- c
		}
	}()
	defer func() {
		stopListen()
		<-listenDone
	}()
	// drain collects what arrives until nothing came for 300ms.
	drain := func() []change {
		var out []change
		deadline := time.After(5 * time.Second)
		for {
			select {
			case c := <-notes:
				out = append(out, c)
			case <-time.After(300 * time.Millisecond):
				return out
			case <-deadline:
				t.Errorf("notifications never stop: %d in 5s (is something writing in a loop?)", len(out))
				return out
			}
		}
	}
	drain()
	var last int64
	steps := []struct {
		name  string
		do    func()
		table string // "" = no notification expected
	}{
		{"idle (reaper running)", func() {}, ""},
		{"create user", func() { tc.createUser(admin, "user") }, "users"},
		{"create key", func() { tc.createKey(admin, nil) }, "api_keys"},
		{"revoke key", func() {
			id, _ := tc.createKey(admin, nil)
			drain()
			tc.call("DELETE", "/api/v1/api-keys/"+itoa(id), admin, nil, 204)
		}, "api_keys"},
		{"set quota", func() { tc.call("PUT", "/api/v1/users/1/quota", admin, map[string]any{"tokens_per_minute": 1000}, 200) }, "user_quotas"},
		{"set roles", func() {
			u := tc.createUser(admin, "user")
			drain()
			tc.call("PUT", "/api/v1/users/"+itoa(u.ID)+"/roles", admin, map[string]any{"roles": []string{"developer"}}, 200)
		}, "user_roles"},
		{"create model", func() {
			tc.call("POST", "/api/v1/models", admin, map[string]any{"name": "nm", "type": "chat", "aliases": []string{"nm-alias"}}, 201)
		}, "models"},
		{"load-only heartbeat", func() {
			tc.call("POST", "/internal/v1/backends/n1/heartbeat", testInternalToken, map[string]any{"state": "healthy", "running_requests": 5}, 200)
		}, ""},
		{"state-changing heartbeat", func() {
			tc.call("POST", "/internal/v1/backends/n1/heartbeat", testInternalToken, map[string]any{"state": "unhealthy"}, 200)
		}, "backends"},
		{"operator weight", func() { tc.call("PATCH", "/api/v1/backends/n1", admin, map[string]any{"weight": 3}, 200) }, "backends"},
	}
	for _, s := range steps {
		s.do()
		got := drain()
		if s.table == "" {
			if len(got) != 0 {
				t.Errorf("%s: notified %+v, want nothing", s.name, got)
			}
			continue
		}
		found := false
		for _, c := range got {
			if c.Version <= last {
				t.Errorf("%s: version %d not above %d", s.name, c.Version, last)
			}
			last = c.Version
			if c.Table == s.table {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: notifications %+v, want one for table %s", s.name, got, s.table)
		}
	}
}
