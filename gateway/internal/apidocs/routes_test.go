package apidocs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/fasthttp/router"
	"github.com/google/go-cmp/cmp"
)

func TestCompare(t *testing.T) {
	documented := []Route{{"GET", "/v1/models"}, {"POST", "/v1/chat/completions"}, {"GET", "/api/v1/models/{name}"}, {"DELETE", "/api/v1/users/{id}"}}
	tests := []struct {
		name                          string
		registered                    map[string][]string
		skip                          func(Route) bool
		wantUndocumented, wantMissing []Route
	}{
		{
			name:       "same, parameter names and wildcards aside",
			registered: map[string][]string{"GET": {"/v1/models", "/api/v1/models/{model:*}"}, "POST": {"/v1/chat/completions"}, "DELETE": {"/api/v1/users/{uid}"}},
		},
		{
			name:             "one each way",
			registered:       map[string][]string{"GET": {"/v1/models", "/v1/extra", "/api/v1/models/{name:*}"}, "DELETE": {"/api/v1/users/{id}"}},
			wantUndocumented: []Route{{"GET", "/v1/extra"}},
			wantMissing:      []Route{{"POST", "/v1/chat/completions"}},
		},
		{
			name:             "method matters",
			registered:       map[string][]string{"POST": {"/v1/models", "/v1/chat/completions"}, "GET": {"/api/v1/models/{name}"}, "DELETE": {"/api/v1/users/{id}"}},
			wantUndocumented: []Route{{"POST", "/v1/models"}},
			wantMissing:      []Route{{"GET", "/v1/models"}},
		},
		{
			name:       "skipped routes",
			registered: map[string][]string{"GET": {"/v1/models"}, "POST": {"/v1/chat/completions"}, "ANY": {"/api/v1/{path:*}"}},
			skip:       func(r Route) bool { return strings.HasPrefix(r.Path, "/api/v1/") },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			und, miss, err := compare(documented, tt.registered, tt.skip)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantUndocumented, und); diff != "" {
				t.Errorf("undocumented (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantMissing, miss); diff != "" {
				t.Errorf("missing (-want +got):\n%s", diff)
			}
		})
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// scan returns, for the non-test Go files under dir, every match of re as method → paths
// (re's first group is the method, the second the path).
func scan(t *testing.T, dir string, re *regexp.Regexp) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			out[m[1]] = append(out[m[1]], m[2])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func count(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// TestRoutesMatchTheServers checks the document against the routes the gateway and control
// register, read from their source (the routers are internal to each binary): every
// registered public route is documented and every documented route is registered. The
// gateway's catch-all forwards to control are compared through control's own routes.
func TestRoutesMatchTheServers(t *testing.T) {
	root := repoRoot(t)
	// Control serves the platform API and OpenAI's Files, Fine-tuning and Vector stores
	// APIs; the gateway forwards them.
	isControl := func(r Route) bool {
		for _, p := range []string{"/api/v1/", "/v1/files", "/v1/fine_tuning/", "/v1/vector_stores"} {
			if strings.HasPrefix(r.Path, p) {
				return true
			}
		}
		return false
	}

	// The gateway: r.GET("/path", …) and friends in gateway/internal/server, plus the
	// routes Register adds once the server calls it.
	gwDir := filepath.Join(root, "gateway", "internal", "server")
	gateway := scan(t, gwDir, regexp.MustCompile(`\br\.(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\("([^"]+)"`))
	if count(gateway) < 5 {
		t.Fatalf("found %d gateway routes in %s; the scan is broken", count(gateway), gwDir)
	}
	wired := len(scan(t, gwDir, regexp.MustCompile(`()(apidocs\.Register\()`))) > 0
	docs := router.New()
	Register(docs)
	for m, ps := range docs.List() {
		gateway[m] = append(gateway[m], ps...)
	}
	und, miss, err := Compare(gateway, isControl)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range und {
		t.Errorf("gateway route %s is not in openapi.json", r)
	}
	for _, r := range miss {
		t.Errorf("openapi.json documents %s, which the gateway does not register", r)
	}
	if !wired {
		t.Log("gateway/internal/server does not call apidocs.Register yet: /openapi.json, /docs and /redoc are not served")
	}

	// Control's routes the gateway forwards: s.Handle("GET", "/api/v1/…", …), HandleWith too.
	ctlDir := filepath.Join(root, "control", "internal")
	control := scan(t, ctlDir, regexp.MustCompile(`\.Handle(?:With)?\("([A-Z]+)",\s*"((?:/api/v1/|/v1/files|/v1/fine_tuning/|/v1/vector_stores)[^"]*)"`))
	if count(control) < 10 {
		t.Fatalf("found %d control routes in %s; the scan is broken", count(control), ctlDir)
	}
	und, miss, err = Compare(control, func(r Route) bool { return !isControl(r) })
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range und {
		t.Errorf("control route %s (forwarded by the gateway) is not in openapi.json", r)
	}
	for _, r := range miss {
		t.Errorf("openapi.json documents %s, which control does not register", r)
	}
}
