package server

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/apidocs"
	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/pkg/config"
)

func TestRecovererKeepsServing(t *testing.T) {
	rec, err := panics.New(nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := recoverer(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/boom" {
			panic("secret internal detail")
		}
		ctx.SetBodyString("ok")
	}, rec, func(ctx *fasthttp.RequestCtx) string {
		ctx.Response.Header.Set("X-Request-Id", "r1")
		return "r1"
	})
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/boom")
	h(&ctx)
	body := string(ctx.Response.Body())
	if ctx.Response.StatusCode() != 500 || strings.Contains(body, "secret") || strings.Contains(body, "goroutine") ||
		!strings.Contains(body, `"type":"api_error"`) || string(ctx.Response.Header.Peek("X-Request-Id")) != "r1" {
		t.Errorf("status %d body %s", ctx.Response.StatusCode(), body)
	}
	if rec.Count(panics.Handler) != 1 {
		t.Error("panic not counted")
	}
	var ok fasthttp.RequestCtx
	ok.Request.SetRequestURI("/fine")
	h(&ok)
	if string(ok.Response.Body()) != "ok" {
		t.Error("next request not served")
	}
}

func TestOptionsValidate(t *testing.T) {
	// The common settings need Bind's defaults; go through a Loader as main does.
	load := func(t *testing.T, env map[string]string) (Options, error) {
		for k, v := range env {
			t.Setenv(k, v)
		}
		l, err := config.NewLoader("gateway", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		o := DefaultOptions()
		o.Bind(l)
		if err := l.Parse(nil); err != nil {
			return o, err
		}
		return o, o.Validate()
	}
	good := map[string]string{"MAAS_DATABASE_URL": "postgresql://u@127.0.0.1:5432/db", "MAAS_INTERNAL_TOKEN": "0123456789abcdef"}
	tests := []struct {
		name    string
		set     map[string]string
		wantVar string
	}{
		{"valid", nil, ""},
		{"no internal token", map[string]string{"MAAS_INTERNAL_TOKEN": ""}, "MAAS_INTERNAL_TOKEN"},
		{"no database", map[string]string{"MAAS_DATABASE_URL": ""}, "MAAS_DATABASE_URL"},
		{"bad duration", map[string]string{"MAAS_SHUTDOWN_GRACE": "soon"}, "MAAS_SHUTDOWN_GRACE"},
		{"zero attempts", map[string]string{"MAAS_MAX_ATTEMPTS": "0"}, "MAAS_MAX_ATTEMPTS"},
		{"tiny headers", map[string]string{"MAAS_MAX_HEADER_BYTES": "100"}, "MAAS_MAX_HEADER_BYTES"},
		{"body not a number", map[string]string{"MAAS_MAX_BODY_BYTES": "lots"}, "MAAS_MAX_BODY_BYTES"},
		{"negative n limit", map[string]string{"MAAS_MAX_N": "-1"}, "MAAS_MAX_N"},
		{"messages limit not a number", map[string]string{"MAAS_MAX_MESSAGES": "many"}, "MAAS_MAX_MESSAGES"},
		{"negative inputs limit", map[string]string{"MAAS_MAX_INPUTS": "-5"}, "MAAS_MAX_INPUTS"},
		{"no file size", map[string]string{"MAAS_FILES_MAX_BYTES": "0"}, "MAAS_FILES_MAX_BYTES"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range good {
				env[k] = v
			}
			for k, v := range tc.set {
				env[k] = v
			}
			_, err := load(t, env)
			if tc.wantVar == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Name != tc.wantVar {
				t.Fatalf("err = %v, want a config.Error naming %s", err, tc.wantVar)
			}
		})
	}
}

func TestRoutesMatchAPIDocument(t *testing.T) {
	r := routes(Deps{Registry: prometheus.NewRegistry()})
	forwarded := func(rt apidocs.Route) bool {
		for _, p := range []string{"/api/v1/", "/v1/files", "/v1/fine_tuning/", "/v1/vector_stores", "/v1/apps"} {
			if strings.HasPrefix(rt.Path, p) {
				return true
			}
		}
		return strings.HasPrefix(rt.Path, "/docs") || rt.Path == "/redoc" || rt.Path == "/openapi.json"
	}
	undocumented, missing, err := apidocs.Compare(r.List(), forwarded)
	if err != nil {
		t.Fatal(err)
	}
	if len(undocumented) > 0 || len(missing) > 0 {
		t.Errorf("routes not in the OpenAPI document: %v; documented but not served: %v", undocumented, missing)
	}
}

// The server streams request bodies: a request refused before its body is read (no such
// route, no key, a body past the limit) still gets its answer to a client that is sending
// megabytes, not a reset.
func TestRefusedBeforeBodyIsReadAnswers(t *testing.T) {
	_, addr := serveGateway(t)
	big := bytes.Repeat([]byte("x"), 24<<20)
	for _, tc := range []struct {
		path, key string
		want      int
	}{
		{"/v1/no-such-route", "", 404},
		{"/v1/chat/completions", "", 401},
		{"/v1/chat/completions", benchKey, 413},
	} {
		for _, chunked := range []bool{false, true} {
			var body io.Reader = bytes.NewReader(big)
			if chunked {
				body = io.MultiReader(body)
			}
			req, _ := http.NewRequest("POST", "http://"+addr+tc.path, body)
			if tc.key != "" {
				req.Header.Set("Authorization", "Bearer "+tc.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("%s chunked=%v: %v, want %d", tc.path, chunked, err, tc.want)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || !strings.Contains(string(b), `"error"`) {
				t.Errorf("%s chunked=%v: %d %s, want %d", tc.path, chunked, resp.StatusCode, b, tc.want)
			}
		}
	}
}
