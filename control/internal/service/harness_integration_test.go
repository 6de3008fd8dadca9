package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/control/internal/user"
	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

const (
	testInternalToken = "test-internal-token-0123456789"
	testSecret        = "test-secret-key-0123456789abcdef0123456789"
	testAdminPassword = "Admin-Pass-12345"
)

// testControl is an in-process control plane on a fresh database.
type testControl struct {
	t     *testing.T
	URL   string
	Pool  *pgxpool.Pool
	DBURL string
	Opts  Options
	out   *bytes.Buffer
}

func testOptions(dbURL string) Options {
	return Options{
		Common: config.Common{
			Environment:       config.Development,
			DatabaseURL:       dbURL,
			SecretKey:         testSecret,
			InternalToken:     testInternalToken,
			AccessTokenExpire: 30 * time.Minute,
		},
		Addr:                   "127.0.0.1:0",
		BootstrapAdminPassword: testAdminPassword,
		AutoMigrate:            true,
		BackendRemoveAfter:     5 * time.Minute,
		ShutdownGrace:          5 * time.Second,
		ReapInterval:           50 * time.Millisecond,
		HashParams:             user.HashParams{MemoryKiB: 1024, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
	}
}

// startControl runs control in-process (service.Run) and stops it when the test ends.
func startControl(t *testing.T, mutate func(*Options)) *testControl {
	t.Helper()
	pool, dbURL := pgtest.NewPool(t)
	o := testOptions(dbURL)
	o.LogOut = t.Output()
	o.Files.Dir = t.TempDir()
	if mutate != nil {
		mutate(&o)
	}
	tc := &testControl{t: t, Pool: pool, DBURL: dbURL, Opts: o, out: &bytes.Buffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o, tc.out, func(addr string) { addrc <- addr }) }()
	select {
	case addr := <-addrc:
		tc.URL = "http://" + addr
	case err := <-done:
		cancel()
		t.Fatalf("control exited before listening: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("control did not start within 30s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("control Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("control did not stop within 15s")
		}
	})
	return tc
}

type response struct {
	Status int
	Body   []byte
	Header http.Header
}

func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

// apiError is the OpenAI error envelope.
type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func (r response) apiErr(t *testing.T) apiError {
	t.Helper()
	var e apiError
	r.decode(t, &e)
	if e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error envelope: %s", r.Body)
	}
	return e
}

var client = &http.Client{Timeout: 30 * time.Second}

// do sends body (raw []byte, string, or JSON-encoded value) with headers.
func (tc *testControl) do(method, path string, body any, headers map[string]string) response {
	tc.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			tc.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, tc.URL+path, rd)
	if err != nil {
		tc.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		tc.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Body: raw, Header: resp.Header}
}

func bearer(tok string) map[string]string {
	if tok == "" {
		return nil
	}
	return map[string]string{"Authorization": "Bearer " + tok}
}

// call is do with a bearer token, failing the test unless the status is want.
func (tc *testControl) call(method, path, tok string, body any, want int) response {
	tc.t.Helper()
	r := tc.do(method, path, body, bearer(tok))
	if r.Status != want {
		tc.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	return r
}

func (tc *testControl) login(username, password string) string {
	tc.t.Helper()
	var out struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	tc.call("POST", "/api/v1/auth/login", "", map[string]string{"username": username, "password": password}, 200).decode(tc.t, &out)
	if out.AccessToken == "" || out.TokenType != "bearer" || out.ExpiresIn != 1800 {
		tc.t.Fatalf("login answer %+v", out)
	}
	return out.AccessToken
}

func (tc *testControl) adminToken() string { return tc.login("admin", testAdminPassword) }

var userSeq atomic.Int64

// testUser is a created account.
type testUser struct {
	ID       int64
	Username string
	Password string
	Token    string
}

// createUser creates a user with roles through the API and logs in.
func (tc *testControl) createUser(adminTok string, roles ...string) testUser {
	tc.t.Helper()
	u := testUser{Username: fmt.Sprintf("u%d_%d", time.Now().UnixNano()%1e6, userSeq.Add(1)), Password: "Password-123"}
	var out struct {
		ID int64 `json:"id"`
	}
	tc.call("POST", "/api/v1/users", adminTok, map[string]any{"username": u.Username, "password": u.Password, "roles": roles}, 201).decode(tc.t, &out)
	u.ID = out.ID
	u.Token = tc.login(u.Username, u.Password)
	return u
}

// createKey creates an API key with the caller's token and returns id and secret.
func (tc *testControl) createKey(tok string, fields map[string]any) (int64, string) {
	tc.t.Helper()
	if fields == nil {
		fields = map[string]any{"name": "test key"}
	}
	var out struct {
		ID  int64  `json:"id"`
		Key string `json:"key"`
	}
	tc.call("POST", "/api/v1/api-keys", tok, fields, 201).decode(tc.t, &out)
	return out.ID, out.Key
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// migrator opens a Migrator on dbURL for the test.
func migrator(t *testing.T, dbURL string) (*pgdb.Migrator, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgdb.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	m, err := pgdb.NewMigrator(pool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, pool
}

func itoa(n int64) string { return fmt.Sprint(n) }
