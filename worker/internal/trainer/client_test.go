package trainer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/maas-platform/maas/pkg/training"
)

// Control's file and upload URLs are paths on control: an absolute URL, or "@host…" that
// would become the host once appended to the base, is refused before the token is sent.
func TestClientRefusesURLsOffControl(t *testing.T) {
	var mu sync.Mutex
	var hits []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits = append(hits, r.Host+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = w.Write([]byte("data"))
	}))
	t.Cleanup(srv.Close)
	c := newClient("http://127.0.0.1:1", testToken)
	task := &training.Task{JobID: "ftjob-1", LeaseToken: "lease-1"}
	archive := filepath.Join(t.TempDir(), "adapter.tar")
	if err := os.WriteFile(archive, []byte("tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, u := range []string{srv.URL + "/files/f", "@" + host + "/files/f", "files/f", "//" + host + "/files/f"} {
		_, err := c.download(context.Background(), task, training.TaskFile{ID: "file-1", URL: u}, filepath.Join(t.TempDir(), "f"))
		if err == nil || !strings.Contains(err.Error(), "not a path on control") {
			t.Errorf("download %q: err %v", u, err)
		}
		task.AdapterUploadURL = u
		if err := c.putAdapter(context.Background(), task, archive); err == nil || !strings.Contains(err.Error(), "not a path on control") {
			t.Errorf("upload %q: err %v", u, err)
		}
		if err := c.putAdapter(context.Background(), task, archive); !permanent(err) {
			t.Errorf("upload %q: %v is retried", u, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hits) > 0 {
		t.Errorf("requests sent elsewhere than control: %q", hits)
	}
}

// A dataset longer than control announced is cut at one byte more, not written whole.
func TestDownloadStopsPastAnnouncedSize(t *testing.T) {
	body := strings.Repeat("x", 1<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	c := newClient(srv.URL, testToken)
	path := filepath.Join(t.TempDir(), "training.jsonl")
	_, err := c.download(context.Background(), &training.Task{LeaseToken: "l"}, training.TaskFile{ID: "file-1", Bytes: 10, URL: "/f"}, path)
	if err == nil || !strings.Contains(err.Error(), "announced 10") {
		t.Errorf("err %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() > 11 {
		t.Errorf("wrote %v bytes (%v), want at most 11", st.Size(), err)
	}
}
