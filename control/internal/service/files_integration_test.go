package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/maas-platform/maas/control/internal/file"
)

// part is one multipart field; a file field has a filename.
type part struct{ name, filename, content string }

// multipartBody encodes parts in order and returns the body and its Content-Type.
func multipartBody(t *testing.T, parts ...part) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, p := range parts {
		var err error
		if p.filename != "" {
			var fw io.Writer
			if fw, err = w.CreateFormFile(p.name, p.filename); err == nil {
				_, err = fw.Write([]byte(p.content))
			}
		} else {
			err = w.WriteField(p.name, p.content)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), w.FormDataContentType()
}

// upload posts parts to /v1/files with the bearer tok.
func (tc *testControl) upload(tok string, parts ...part) response {
	tc.t.Helper()
	body, ct := multipartBody(tc.t, parts...)
	return tc.do("POST", "/v1/files", body, map[string]string{"Authorization": "Bearer " + tok, "Content-Type": ct})
}

// uploadFile uploads content as filename for purpose, failing the test unless it is stored.
func (tc *testControl) uploadFile(tok, filename, purpose, content string) file.File {
	tc.t.Helper()
	r := tc.upload(tok, part{"file", filename, content}, part{"purpose", "", purpose})
	if r.Status != 200 {
		tc.t.Fatalf("upload %s: status %d %s", filename, r.Status, r.Body)
	}
	var f file.File
	r.decode(tc.t, &f)
	return f
}

const chatLine = `{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello there"}]}`

// filesStores starts the two stores the Files API runs on: a local directory and an
// in-process S3 (gofakes3, over TLS).
func filesStores(t *testing.T) map[string]func(*FilesOptions) {
	return map[string]func(*FilesOptions){
		"dir": func(o *FilesOptions) { o.Dir = t.TempDir() },
		"s3": func(o *FilesOptions) {
			backend := s3mem.New()
			if err := backend.CreateBucket("maas-files"); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewTLSServer(gofakes3.New(backend).Server())
			t.Cleanup(srv.Close)
			o.S3 = file.S3Options{Endpoint: strings.TrimPrefix(srv.URL, "https://"), Bucket: "maas-files", Prefix: "files/",
				AccessKey: "k", SecretKey: "s", Region: "us-east-1", UseTLS: true, Transport: srv.Client().Transport}
		},
	}
}

func TestFilesAPI(t *testing.T) {
	for name, store := range filesStores(t) {
		t.Run(name, func(t *testing.T) {
			var dir string
			tc := startControl(t, func(o *Options) {
				o.Files = FilesOptions{MaxBytes: 64 << 10, MaxCount: 3, MaxTotalBytes: 150 << 10, Timeout: time.Minute}
				store(&o.Files)
				dir = o.Files.Dir
			})
			testFilesAPI(t, tc, dir)
		})
	}
}

func testFilesAPI(t *testing.T, tc *testControl, dir string) {
	admin := tc.adminToken()
	alice := tc.createUser(admin, "user")
	bob := tc.createUser(admin, "developer")
	start := time.Now().Add(-time.Second).Unix()

	dataset := chatLine + "\n" + chatLine + "\n"
	ft := tc.uploadFile(alice.Token, "dir/train.jsonl", "fine-tune", dataset) // file first, as the SDKs send it
	if !strings.HasPrefix(ft.ID, "file-") || ft.Object != "file" || ft.Bytes != int64(len(dataset)) ||
		ft.Filename != "train.jsonl" || ft.Purpose != "fine-tune" || ft.Status != "processed" || ft.CreatedAt < start {
		t.Errorf("uploaded file %+v", ft)
	}
	if ft.Examples == nil || *ft.Examples != 2 || ft.Tokens == nil || *ft.Tokens != 2*(1+3) {
		t.Errorf("dataset examples %v tokens %v, want 2 and 8", ft.Examples, ft.Tokens)
	}
	// Purpose first, a binary file with an awkward name.
	r := tc.upload(alice.Token, part{"purpose", "", "batch"}, part{"expires_after[anchor]", "", "created_at"},
		part{"file", "c:\\dir\\ré\xffsumé.bin", "\x00\x01\x02binary"})
	if r.Status != 200 {
		t.Fatalf("batch upload: %d %s", r.Status, r.Body)
	}
	var batch file.File
	r.decode(t, &batch)
	if batch.Filename != "ré\uFFFDsumé.bin" || batch.Bytes != 9 || batch.Examples != nil {
		t.Errorf("batch file %+v", batch)
	}

	t.Run("retrieve", func(t *testing.T) {
		var got file.File
		tc.call("GET", "/v1/files/"+ft.ID, alice.Token, nil, 200).decode(t, &got)
		if got.ID != ft.ID || got.Bytes != ft.Bytes || got.Filename != ft.Filename || got.CreatedAt != ft.CreatedAt {
			t.Errorf("retrieved %+v, uploaded %+v", got, ft)
		}
		tc.call("GET", "/v1/files/"+ft.ID, admin, nil, 200)
		e := tc.call("GET", "/v1/files/"+ft.ID, bob.Token, nil, 404).apiErr(t)
		if e.Error.Type != "not_found_error" {
			t.Errorf("another user's file: %+v", e)
		}
		tc.call("GET", "/v1/files/file-doesnotexist", alice.Token, nil, 404)
		// Ids that cannot exist are a 404 without a query (raw invalid UTF-8 or NUL would be a
		// database error).
		for _, id := range []string{"file-%FF%FE", "file-a%00b", "%C3%28", "x"} {
			tc.call("GET", "/v1/files/"+id, alice.Token, nil, 404)
			tc.call("GET", "/v1/files/"+id+"/content", alice.Token, nil, 404)
			tc.call("DELETE", "/v1/files/"+id, alice.Token, nil, 404)
		}
	})
	t.Run("content", func(t *testing.T) {
		r := tc.call("GET", "/v1/files/"+batch.ID+"/content", alice.Token, nil, 200)
		if string(r.Body) != "\x00\x01\x02binary" || r.Header.Get("Content-Type") != "application/octet-stream" ||
			!strings.Contains(r.Header.Get("Content-Disposition"), "attachment") {
			t.Errorf("content %q, headers %v", r.Body, r.Header)
		}
		if r := tc.call("GET", "/v1/files/"+ft.ID+"/content", admin, nil, 200); string(r.Body) != dataset {
			t.Errorf("admin download: %q", r.Body)
		}
		tc.call("GET", "/v1/files/"+ft.ID+"/content", bob.Token, nil, 404)
	})
	t.Run("list", func(t *testing.T) {
		type page struct {
			Object  string      `json:"object"`
			Data    []file.File `json:"data"`
			FirstID *string     `json:"first_id"`
			LastID  *string     `json:"last_id"`
			HasMore bool        `json:"has_more"`
		}
		ids := func(p page) string {
			var out []string
			for _, f := range p.Data {
				out = append(out, f.ID)
			}
			return strings.Join(out, ",")
		}
		var p page
		tc.call("GET", "/v1/files", alice.Token, nil, 200).decode(t, &p)
		if p.Object != "list" || ids(p) != batch.ID+","+ft.ID || p.HasMore || *p.FirstID != batch.ID || *p.LastID != ft.ID {
			t.Errorf("list (newest first) %+v", p)
		}
		tc.call("GET", "/v1/files?order=asc", alice.Token, nil, 200).decode(t, &p)
		if ids(p) != ft.ID+","+batch.ID {
			t.Errorf("asc: %s", ids(p))
		}
		tc.call("GET", "/v1/files?limit=1", alice.Token, nil, 200).decode(t, &p)
		if ids(p) != batch.ID || !p.HasMore {
			t.Errorf("limit=1: %s has_more=%v", ids(p), p.HasMore)
		}
		tc.call("GET", "/v1/files?limit=1&after="+*p.LastID, alice.Token, nil, 200).decode(t, &p)
		if ids(p) != ft.ID || p.HasMore {
			t.Errorf("second page: %s has_more=%v", ids(p), p.HasMore)
		}
		tc.call("GET", "/v1/files?purpose=fine-tune", alice.Token, nil, 200).decode(t, &p)
		if ids(p) != ft.ID {
			t.Errorf("purpose=fine-tune: %s", ids(p))
		}
		tc.call("GET", "/v1/files", bob.Token, nil, 200).decode(t, &p)
		if len(p.Data) != 0 || p.FirstID != nil || p.HasMore {
			t.Errorf("bob sees %+v", p)
		}
		for q, param := range map[string]string{"limit=0": "limit", "limit=x": "limit", "order=up": "order",
			"purpose=fun": "purpose", "after=" + ft.ID + "x": "after", "after=%FF": "after", "after=file-%00": "after"} {
			e := tc.call("GET", "/v1/files?"+q, alice.Token, nil, 400).apiErr(t)
			if e.Error.Param == nil || *e.Error.Param != param {
				t.Errorf("%s: param %v, want %s", q, e.Error.Param, param)
			}
		}
		// Another user's file is no cursor.
		tc.call("GET", "/v1/files?after="+ft.ID, bob.Token, nil, 400)
		// An admin lists anyone's files; others only their own.
		tc.call("GET", "/v1/files?user_id="+itoa(alice.ID), admin, nil, 200).decode(t, &p)
		if ids(p) != batch.ID+","+ft.ID {
			t.Errorf("admin lists alice's files: %s", ids(p))
		}
		tc.call("GET", "/v1/files?user_id="+itoa(alice.ID), alice.Token, nil, 200)
		tc.call("GET", "/v1/files?user_id="+itoa(alice.ID), bob.Token, nil, 403)
		tc.call("GET", "/v1/files?user_id=0", alice.Token, nil, 400)
	})

	t.Run("refused uploads", func(t *testing.T) {
		u := tc.createUser(admin, "user")
		tests := []struct {
			name   string
			parts  []part
			status int
			param  string
			msg    string
		}{
			{"wrong purpose", []part{{"file", "a.txt", "x"}, {"purpose", "", "fine_tune"}}, 400, "purpose", "purpose must be one of"},
			{"missing purpose", []part{{"file", "a.txt", "x"}}, 400, "purpose", "missing the purpose"},
			{"missing file", []part{{"purpose", "", "batch"}}, 400, "file", "missing the file"},
			{"file without filename", []part{{"file", "", "x"}, {"purpose", "", "batch"}}, 400, "file", "filename"},
			{"two files", []part{{"file", "a", "x"}, {"file", "b", "y"}, {"purpose", "", "batch"}}, 400, "file", "more than one"},
			{"invalid dataset", []part{{"file", "bad.jsonl", chatLine + "\n" + chatLine + "\n" + `{"messages":[{"role":"user","content":"no answer"}]}` + "\n"}, {"purpose", "", "fine-tune"}},
				400, "file", "line 3: no assistant message"},
			{"not json lines", []part{{"file", "bad.jsonl", "hello"}, {"purpose", "", "fine-tune"}}, 400, "file", "line 1: invalid JSON"},
			{"too large", []part{{"file", "big.bin", strings.Repeat("x", 64<<10+1)}, {"purpose", "", "batch"}}, 413, "file", "larger than 65536 bytes"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r := tc.upload(u.Token, tt.parts...)
				if r.Status != tt.status {
					t.Fatalf("status %d %s, want %d", r.Status, r.Body, tt.status)
				}
				e := r.apiErr(t)
				if e.Error.Param == nil || *e.Error.Param != tt.param || !strings.Contains(e.Error.Message, tt.msg) {
					t.Errorf("error %+v (param %v), want param %s and %q", e.Error, e.Error.Param, tt.param, tt.msg)
				}
			})
		}
		// A file at the limit is accepted.
		tc.uploadFile(u.Token, "edge.bin", "batch", strings.Repeat("x", 64<<10))
		// Not multipart at all; a body past the route's limit (refused before it is read).
		tc.call("POST", "/v1/files", u.Token, map[string]string{"purpose": "batch"}, 400)
		body := bytes.Repeat([]byte("x"), 2<<20)
		r := tc.do("POST", "/v1/files", body, map[string]string{"Authorization": "Bearer " + u.Token, "Content-Type": "multipart/form-data; boundary=x"})
		if r.Status != 413 || !strings.Contains(string(r.Body), "MAAS_FILES_MAX_BYTES") {
			t.Errorf("2 MiB body: %d %s", r.Status, r.Body)
		}
		// None of the refused uploads left a file or any stored content behind.
		var p struct {
			Data []file.File `json:"data"`
		}
		tc.call("GET", "/v1/files", u.Token, nil, 200).decode(t, &p)
		if len(p.Data) != 1 {
			t.Errorf("after refused uploads the user has %d files, want 1", len(p.Data))
		}
		if dir != "" {
			if n := countStored(t, dir); n != 3 { // alice's two and the edge file
				t.Errorf("store directory holds %d entries, want 3", n)
			}
		}
	})
	t.Run("per-user limits", func(t *testing.T) {
		u := tc.createUser(admin, "user")
		for i := range 3 {
			tc.uploadFile(u.Token, fmt.Sprintf("f%d.txt", i), "user_data", "x")
		}
		e := tc.upload(u.Token, part{"file", "f4.txt", "x"}, part{"purpose", "", "user_data"})
		if e.Status != 400 || !strings.Contains(string(e.Body), "files_limit_reached") {
			t.Errorf("4th file (MAAS_FILES_MAX_COUNT=3): %d %s", e.Status, e.Body)
		}
		v := tc.createUser(admin, "user")
		tc.uploadFile(v.Token, "a.bin", "batch", strings.Repeat("a", 60<<10))
		tc.uploadFile(v.Token, "b.bin", "batch", strings.Repeat("b", 60<<10))
		e = tc.upload(v.Token, part{"file", "c.bin", strings.Repeat("c", 60<<10)}, part{"purpose", "", "batch"})
		if e.Status != 413 || !strings.Contains(string(e.Body), "files_storage_limit_reached") {
			t.Errorf("past MAAS_FILES_MAX_TOTAL_BYTES: %d %s", e.Status, e.Body)
		}
	})
	t.Run("keys", func(t *testing.T) {
		_, key := tc.createKey(alice.Token, nil)
		f := tc.uploadFile(key, "k.txt", "assistants", "via key")
		tc.call("GET", "/v1/files/"+f.ID, alice.Token, nil, 200)
		_, mgmt := tc.createKey(admin, map[string]any{"name": "m", "user_id": alice.ID, "scopes": []string{"management"}})
		e := tc.call("GET", "/v1/files", mgmt, nil, 403).apiErr(t)
		if e.Error.Code == nil || *e.Error.Code != "insufficient_scope" {
			t.Errorf("management-only key: %+v", e.Error)
		}
		tc.call("DELETE", "/v1/files/"+f.ID, key, nil, 200)
	})
	t.Run("delete", func(t *testing.T) {
		tc.call("DELETE", "/v1/files/"+ft.ID, bob.Token, nil, 404)
		var del struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Deleted bool   `json:"deleted"`
		}
		tc.call("DELETE", "/v1/files/"+ft.ID, alice.Token, nil, 200).decode(t, &del)
		if del.ID != ft.ID || del.Object != "file" || !del.Deleted {
			t.Errorf("delete answered %+v", del)
		}
		tc.call("GET", "/v1/files/"+ft.ID, alice.Token, nil, 404)
		tc.call("GET", "/v1/files/"+ft.ID+"/content", alice.Token, nil, 404)
		tc.call("DELETE", "/v1/files/"+ft.ID, alice.Token, nil, 404)
		tc.call("DELETE", "/v1/files/"+batch.ID, admin, nil, 200)
		if dir != "" {
			if _, err := os.Stat(dir + "/" + ft.ID); !os.IsNotExist(err) {
				t.Errorf("deleted file's content is still stored: %v", err)
			}
		}
	})
}

// countStored counts the entries of the local store's directory.
func countStored(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestFilesStreamed: a large upload goes from the request to the store and back without
// being held in memory (control runs in this process, so its allocations are counted).
func TestFilesStreamed(t *testing.T) {
	tc := startControl(t, func(o *Options) {
		o.Files = FilesOptions{Dir: t.TempDir(), MaxBytes: 64 << 20, Timeout: time.Minute}
	})
	tok := tc.adminToken()
	const size = 40 << 20
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := mw.WriteField("purpose", "batch")
		var fw io.Writer
		if err == nil {
			fw, err = mw.CreateFormFile("file", "big.bin")
		}
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB, reused
		for n := 0; err == nil && n < size; n += len(chunk) {
			_, err = fw.Write(chunk)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, _ := http.NewRequest("POST", tc.URL+"/v1/files", pr)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", mw.FormDataContentType())

	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var f file.File
	up := allocated(func() {
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || json.Unmarshal(b, &f) != nil || f.Bytes != size {
			t.Fatalf("upload: %d %s", resp.StatusCode, b)
		}
	})
	down := allocated(func() {
		req, _ := http.NewRequest("GET", tc.URL+"/v1/files/"+f.ID+"/content", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil || n != size || resp.StatusCode != 200 {
			t.Fatalf("download: status %d, %d bytes, %v", resp.StatusCode, n, err)
		}
	})
	t.Logf("allocated during a %d MiB upload: %.1f MiB; download: %.1f MiB", size>>20, float64(up)/(1<<20), float64(down)/(1<<20))
	if up > size/4 || down > size/4 {
		t.Errorf("allocated %d bytes for the upload and %d for the download of a %d-byte file: the body is buffered", up, down, size)
	}
}

// TestFilesCountLimitConcurrent: uploads racing past the count limit store exactly the limit.
func TestFilesCountLimitConcurrent(t *testing.T) {
	tc := startControl(t, func(o *Options) {
		o.Files = FilesOptions{Dir: t.TempDir(), MaxBytes: 1 << 20, MaxCount: 3, Timeout: time.Minute}
	})
	u := tc.createUser(tc.adminToken(), "user")
	body, ct := multipartBody(t, part{"file", "f.txt", "x"}, part{"purpose", "", "user_data"})
	statuses := make(chan int, 8)
	for range cap(statuses) {
		go func() {
			req, _ := http.NewRequest("POST", tc.URL+"/v1/files", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+u.Token)
			req.Header.Set("Content-Type", ct)
			resp, err := client.Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	count := map[int]int{}
	for range cap(statuses) {
		count[<-statuses]++
	}
	if count[200] != 3 || count[200]+count[400] != cap(statuses) {
		t.Errorf("statuses %v, want 3×200 and the rest 400", count)
	}
	if n := countStored(t, tc.Opts.Files.Dir); n != 3 {
		t.Errorf("store holds %d files, want 3", n)
	}
}

// TestFilesSweep: content no file names (its owner deleted, an upload cut by a crash) is
// removed once it is older than the cutoff; a file's content is kept.
func TestFilesSweep(t *testing.T) {
	dir := t.TempDir()
	tc := startControl(t, func(o *Options) {
		o.Files = FilesOptions{Dir: dir, MaxBytes: 1 << 20, Timeout: time.Minute}
	})
	admin := tc.adminToken()
	keep, gone := tc.createUser(admin, "user"), tc.createUser(admin, "user")
	kept := tc.uploadFile(keep.Token, "keep.txt", "user_data", "keep")
	lost := tc.uploadFile(gone.Token, "gone.txt", "user_data", "gone")
	tc.call("DELETE", "/api/v1/users/"+itoa(gone.ID), admin, nil, 204) // its files' rows go with it
	orphan := file.NewID()                                             // stored, never recorded
	if _, err := (file.Dir{Path: dir}).Put(context.Background(), orphan, strings.NewReader("crash")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/.upload-123", []byte("cut"), 0o600); err != nil { // a crash mid-upload
		t.Fatal(err)
	}
	files, err := newFiles(tc.Pool, tc.Opts.Files, tc.Opts.logger())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := files.Sweep(context.Background(), time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("sweep of content written after the cutoff removed %d (%v), want 0", n, err)
	}
	if n, err := files.Sweep(context.Background(), time.Now().Add(time.Minute)); err != nil || n != 3 {
		t.Errorf("sweep removed %d (%v), want 3 (the deleted user's file, the orphan, the temporary file)", n, err)
	}
	for key, want := range map[string]bool{kept.ID: true, lost.ID: false, orphan: false, ".upload-123": false} {
		if _, err := os.Stat(dir + "/" + key); (err == nil) != want {
			t.Errorf("%s stored: %v, want %v", key, err == nil, want)
		}
	}
	if r := tc.call("GET", "/v1/files/"+kept.ID+"/content", keep.Token, nil, 200); string(r.Body) != "keep" {
		t.Errorf("kept file's content: %q", r.Body)
	}
}
