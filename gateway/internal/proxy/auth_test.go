package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
)

// findingSnapshots is a snapshot source that also finds keys created after it (like
// snapshot.Store.FindKey), counting the look-ups.
type findingSnapshots struct {
	s      *snapshot.Snapshot
	late   map[apikey.Hash]*snapshot.Key
	err    error
	finds  atomic.Int64
	lastCx context.Context
}

func (f *findingSnapshots) Current() *snapshot.Snapshot { return f.s }

func (f *findingSnapshots) FindKey(ctx context.Context, h apikey.Hash) (*snapshot.Key, error) {
	f.finds.Add(1)
	f.lastCx = ctx
	if f.err != nil {
		return nil, f.err
	}
	return f.late[h], nil
}

const (
	mgmtKey  = "sk-MGMT456789abcdefghijklmnopqrstuvwxyzABCDEFG"
	bothKey  = "sk-BOTH456789abcdefghijklmnopqrstuvwxyzABCDEFG"
	lateKey  = "sk-LATE456789abcdefghijklmnopqrstuvwxyzABCDEFG"
	otherKey = "sk-NONE456789abcdefghijklmnopqrstuvwxyzABCDEFG"
)

func scopedHandler(t *testing.T, controlURL string) (*Handler, *findingSnapshots) {
	t.Helper()
	b := snapshot.NewBuilder(time.Now())
	b.AddUser(&snapshot.User{ID: 1, Username: "root", Active: true, Roles: []string{"admin"}})
	b.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 10, UserID: 1, Scopes: apikey.Inference})
	b.AddKey(apikey.Sum([]byte(mgmtKey)), &snapshot.Key{ID: 11, UserID: 1, Scopes: apikey.Management})
	b.AddKey(apikey.Sum([]byte(bothKey)), &snapshot.Key{ID: 12, UserID: 1, Scopes: apikey.AllScopes})
	snaps := &findingSnapshots{s: b.Build(), late: map[apikey.Hash]*snapshot.Key{}}
	u := snaps.s.User(1)
	snaps.late[apikey.Sum([]byte(lateKey))] = &snapshot.Key{ID: 13, UserID: 1, User: u, Scopes: apikey.Inference}
	pool, err := upstream.New(upstream.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Snapshots, o.Pool, o.AccessLog = snaps, pool, false
	o.ControlURL, o.InternalToken = controlURL, "internal-token-0123456789"
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return h, snaps
}

func errKind(err error) (apierr.Kind, bool) {
	var e *apierr.Error
	if !errors.As(err, &e) {
		return 0, false
	}
	return e.Kind, true
}

func TestAuthenticateChecksScopes(t *testing.T) {
	h, snaps := scopedHandler(t, "")
	now := time.Now()
	for _, tc := range []struct {
		key    string
		need   apikey.Scopes
		wantOK bool
		kind   apierr.Kind
	}{
		{testKey, apikey.Inference, true, 0},
		{testKey, apikey.Management, false, apierr.PermissionDenied},
		{mgmtKey, apikey.Inference, false, apierr.PermissionDenied},
		{mgmtKey, apikey.Management, true, 0},
		{bothKey, apikey.Inference, true, 0},
		{bothKey, apikey.Management, true, 0},
		{lateKey, apikey.Inference, true, 0},
		{otherKey, apikey.Inference, false, apierr.Unauthenticated},
	} {
		k, err := h.authenticateFor(snaps.s, []byte("Bearer "+tc.key), now, tc.need)
		if tc.wantOK {
			if err != nil || k == nil {
				t.Errorf("%s needing %v: %v", tc.key[:7], tc.need, err)
			}
			continue
		}
		if kind, ok := errKind(err); !ok || kind != tc.kind {
			t.Errorf("%s needing %v: err %v, want kind %v", tc.key[:7], tc.need, err, tc.kind)
		}
	}
	// authenticate (the OpenAI endpoints) needs the inference scope.
	if _, err := h.authenticate(snaps.s, []byte("Bearer "+mgmtKey), now); err == nil {
		t.Error("a management-only key passed authenticate")
	} else if e := err.(*apierr.Error); e.Code != "insufficient_scope" || e.Kind.Status() != 403 {
		t.Errorf("scope error %+v", e)
	}
}

func TestAuthenticateLooksUpOnlyUnknownWellFormedKeys(t *testing.T) {
	h, snaps := scopedHandler(t, "")
	now := time.Now()
	for _, k := range []string{testKey, mgmtKey, bothKey} {
		_, _ = h.authenticateFor(snaps.s, []byte("Bearer "+k), now, apikey.AllScopes)
	}
	if n := snaps.finds.Load(); n != 0 {
		t.Fatalf("%d look-ups for keys the snapshot knows", n)
	}
	for _, bad := range []string{"sk-short", "not-a-key", "sk-" + string(make([]byte, 43))} {
		if _, err := h.authenticate(snaps.s, []byte("Bearer "+bad), now); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if n := snaps.finds.Load(); n != 0 {
		t.Fatalf("%d look-ups for malformed keys", n)
	}
	if _, err := h.authenticate(snaps.s, []byte("Bearer "+lateKey), now); err != nil {
		t.Fatalf("late key: %v", err)
	}
	if snaps.finds.Load() != 1 || snaps.lastCx == nil {
		t.Fatalf("late key: %d look-ups", snaps.finds.Load())
	}
	// A failed look-up (PostgreSQL down) is an unknown key: 401.
	snaps.err = errors.New("database down")
	_, err := h.authenticate(snaps.s, []byte("Bearer "+otherKey), now)
	if kind, _ := errKind(err); kind != apierr.Unauthenticated {
		t.Errorf("failed look-up: %v, want 401", err)
	}
}

// Forward refuses a key without the scope of the path before control sees the request.
func TestForwardChecksScopes(t *testing.T) {
	var reached atomic.Int64
	ctl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.WriteHeader(200)
	}))
	t.Cleanup(ctl.Close)
	h, _ := scopedHandler(t, ctl.URL)
	srv := &fasthttp.Server{Handler: h.Forward}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	base := "http://" + ln.Addr().String()
	for _, tc := range []struct {
		path, key string
		want      int
	}{
		{"/api/v1/users", testKey, 403},
		{"/api/v1/users", mgmtKey, 200},
		{"/api/v1/users", bothKey, 200},
		{"/v1/files", mgmtKey, 403},
		{"/v1/files", testKey, 200},
	} {
		before := reached.Load()
		req, _ := http.NewRequest("GET", base+tc.path, nil)
		req.Header.Set("Authorization", "Bearer "+tc.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s with %s: status %d, want %d", tc.path, tc.key[:7], resp.StatusCode, tc.want)
		}
		if forwarded := reached.Load() > before; forwarded != (tc.want == 200) {
			t.Errorf("%s with %s: forwarded=%v", tc.path, tc.key[:7], forwarded)
		}
	}
}
