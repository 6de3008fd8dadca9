package deploytest

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the module root, found from this file's location.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func deployPath(t testing.TB, parts ...string) string {
	return filepath.Join(append([]string{repoRoot(t), "deploy"}, parts...)...)
}

var envLiteral = regexp.MustCompile(`"(MAAS_[A-Z0-9_]+)"`)

var (
	knownOnce sync.Once
	knownEnv  map[string]bool
	knownErr  error
)

// knownSettings is the set of MAAS_* variables the binaries read: every "MAAS_…" string
// literal in the non-test Go source of gateway/, control/, worker/ and pkg/ (test helpers
// such as pkg/testenv excluded).
func knownSettings(t testing.TB) map[string]bool {
	t.Helper()
	root := repoRoot(t)
	knownOnce.Do(func() {
		knownEnv = map[string]bool{}
		skip := map[string]bool{
			filepath.Join(root, "pkg", "testenv"):        true,
			filepath.Join(root, "pkg", "pgdb", "pgtest"): true,
		}
		for _, dir := range []string{"gateway", "control", "worker", "pkg"} {
			err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if d.IsDir() {
					if skip[path] || d.Name() == "testdata" {
						return filepath.SkipDir
					}
					return nil
				}
				if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
					return nil
				}
				src, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				for _, m := range envLiteral.FindAllSubmatch(src, -1) {
					knownEnv[string(m[1])] = true
				}
				return nil
			})
			if err != nil && !os.IsNotExist(err) {
				knownErr = err
				return
			}
		}
	})
	if knownErr != nil {
		t.Fatalf("scan the Go source for MAAS_ settings: %v", knownErr)
	}
	if len(knownEnv) < 10 {
		t.Fatalf("found only %d MAAS_ settings in the source; the scan is broken", len(knownEnv))
	}
	return knownEnv
}

// checkSettings reports every MAAS_ name in used that no binary reads.
func checkSettings(t *testing.T, where string, used []string) {
	t.Helper()
	known := knownSettings(t)
	var unknown []string
	for _, name := range used {
		if strings.HasPrefix(name, "MAAS_") && !known[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		t.Errorf("%s sets variables no binary reads: %s", where, strings.Join(unknown, ", "))
	}
}

func TestKnownSettingsScan(t *testing.T) {
	known := knownSettings(t)
	for _, name := range []string{"MAAS_DATABASE_URL", "MAAS_INTERNAL_TOKEN", "MAAS_CONTROL_URL"} {
		if !known[name] {
			t.Errorf("scan missed %s, which pkg/config reads", name)
		}
	}
	for _, name := range []string{"MAAS_TEST_DATABASE_URL", "MAAS_TEST_VERBOSE"} {
		if known[name] {
			t.Errorf("scan took the test helpers' %s for a setting", name)
		}
	}
}
