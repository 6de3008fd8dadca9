package apidocs

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// TestDocumentIsValid checks the document's structure: OpenAPI 3.1, every $ref resolves,
// operation ids are unique, every path parameter is declared, every operation answers.
func TestDocumentIsValid(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(Document(), &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if doc["openapi"] != "3.1.0" {
		t.Errorf("openapi = %v, want 3.1.0", doc["openapi"])
	}
	var refs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["$ref"].(string); ok {
				refs = append(refs, r)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	if len(refs) < 10 {
		t.Fatalf("found %d $refs; the walk is broken", len(refs))
	}
	for _, r := range refs {
		if !strings.HasPrefix(r, "#/") || resolve(doc, strings.Split(r[2:], "/")) == nil {
			t.Errorf("$ref %s does not resolve", r)
		}
	}
	ids := map[string]string{}
	paths := doc["paths"].(map[string]any)
	pathParam := regexp.MustCompile(`\{([^}]+)\}`)
	for p, item := range paths {
		for m, raw := range item.(map[string]any) {
			op := raw.(map[string]any)
			where := strings.ToUpper(m) + " " + p
			id, _ := op["operationId"].(string)
			if id == "" {
				t.Errorf("%s: no operationId", where)
			} else if prev, dup := ids[id]; dup {
				t.Errorf("%s: operationId %s already used by %s", where, id, prev)
			}
			ids[id] = where
			if resp, _ := op["responses"].(map[string]any); len(resp) == 0 {
				t.Errorf("%s: no responses", where)
			}
			declared := map[string]bool{}
			params, _ := op["parameters"].([]any)
			for _, prm := range params {
				prm := prm.(map[string]any)
				if prm["in"] == "path" {
					declared[prm["name"].(string)] = true
				}
			}
			for _, m := range pathParam.FindAllStringSubmatch(p, -1) {
				if !declared[m[1]] {
					t.Errorf("%s: path parameter %s is not declared", where, m[1])
				}
			}
		}
	}
}

func resolve(v any, parts []string) any {
	for _, p := range parts {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		if v, ok = m[p]; !ok {
			return nil
		}
	}
	return v
}

// serve starts a fasthttp server with Register's routes on an in-memory listener.
func serve(t *testing.T) *fasthttp.Client {
	t.Helper()
	r := router.New()
	Register(r)
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: r.Handler}
	go srv.Serve(ln) //nolint:errcheck // ends when the listener closes
	t.Cleanup(func() { _ = srv.Shutdown(); _ = ln.Close() })
	return &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
}

func get(t *testing.T, c *fasthttp.Client, uri string, headers ...string) (int, string, []byte, *fasthttp.ResponseHeader) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://docs.test" + uri)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	if err := c.DoTimeout(req, resp, 10*time.Second); err != nil {
		t.Fatalf("GET %s: %v", uri, err)
	}
	var h fasthttp.ResponseHeader
	resp.Header.CopyTo(&h)
	return resp.StatusCode(), string(resp.Header.ContentType()), append([]byte(nil), resp.Body()...), &h
}

func TestRegisterServesDocumentAndPages(t *testing.T) {
	c := serve(t)
	status, ct, body, _ := get(t, c, "/openapi.json")
	if status != 200 || ct != "application/json" || !bytes.Equal(body, Document()) {
		t.Errorf("/openapi.json: status %d, type %q, %d bytes (want the document, %d bytes)", status, ct, len(body), len(Document()))
	}
	assetRef := regexp.MustCompile(`(?:src|href)="(docs/assets/[^"]+)"`)
	for _, tc := range []struct {
		page, needs string
		assets      int
	}{
		{"/docs", "SwaggerUIBundle", 3},
		{"/redoc", `<redoc spec-url="openapi.json">`, 2},
	} {
		status, ct, body, _ := get(t, c, tc.page)
		if status != 200 || !strings.HasPrefix(ct, "text/html") || !bytes.Contains(body, []byte(tc.needs)) {
			t.Errorf("%s: status %d, type %q, missing %q", tc.page, status, ct, tc.needs)
		}
		refs := assetRef.FindAllStringSubmatch(string(body), -1)
		if len(refs) != tc.assets {
			t.Errorf("%s: %d asset references, want %d", tc.page, len(refs), tc.assets)
		}
		// Every asset the page references is served (relative to the site root).
		for _, ref := range refs {
			status, _, b, _ := get(t, c, "/"+ref[1])
			if status != 200 || len(b) == 0 {
				t.Errorf("%s references %s: status %d, %d bytes", tc.page, ref[1], status, len(b))
			}
		}
	}
}

func TestAssets(t *testing.T) {
	c := serve(t)
	tests := []struct {
		name, path, acceptEncoding string
		wantStatus                 int
		wantType                   string
		wantGzip                   bool
	}{
		{"script", "/docs/assets/swagger-ui-bundle.js", "", 200, "text/javascript; charset=utf-8", false},
		{"script gzip", "/docs/assets/redoc.standalone.js", "gzip, deflate", 200, "text/javascript; charset=utf-8", true},
		{"style", "/docs/assets/swagger-ui.css", "gzip", 200, "text/css; charset=utf-8", true},
		{"image not compressed", "/docs/assets/favicon-32x32.png", "gzip", 200, "image/png", false},
		{"unknown", "/docs/assets/nope.js", "", 404, "text/plain; charset=utf-8", false},
		{"license not served", "/docs/assets/LICENSE.redoc", "", 404, "text/plain; charset=utf-8", false},
		{"traversal", "/docs/assets/..%2fapidocs.go", "", 404, "text/plain; charset=utf-8", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, ct, body, h := get(t, c, tt.path, "Accept-Encoding", tt.acceptEncoding)
			if status != tt.wantStatus || ct != tt.wantType {
				t.Fatalf("status %d type %q, want %d %q", status, ct, tt.wantStatus, tt.wantType)
			}
			gz := string(h.Peek("Content-Encoding")) == "gzip"
			if gz != tt.wantGzip {
				t.Fatalf("gzip = %v, want %v", gz, tt.wantGzip)
			}
			if gz {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				plain, err := io.ReadAll(zr)
				if err != nil {
					t.Fatal(err)
				}
				want, _ := assets.ReadFile("assets/" + tt.path[len("/docs/assets/"):])
				if !bytes.Equal(plain, want) {
					t.Errorf("gunzipped body differs from the asset (%d vs %d bytes)", len(plain), len(want))
				}
			}
		})
	}
}
