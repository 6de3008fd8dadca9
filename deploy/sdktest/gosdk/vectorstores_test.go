package gosdk

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/maas-platform/maas/pkg/testenv"
)

// TestVectorStoresWithOpenAIGo runs the vector stores lifecycle with the official Go client
// through the real gateway, control and a simulator worker: files uploaded, a store made of
// them, ingestion embedding through the gateway as the store's owner (the usage ledger shows
// it), search, a pdf, a corrupt file failed with its reason, batches, another user's 404s,
// a detached file gone from search, the store deleted.
func TestVectorStoresWithOpenAIGo(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	files := t.TempDir()
	p.StartControl("MAAS_FILES_DIR=" + files)
	p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+testenv.FreeAddr(t), "MAAS_HEARTBEAT_INTERVAL=500ms")
	proc, gw := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(t, proc, gw+"/ready", 30*time.Second)
	// Control embeds through the gateway, whose address is known only now: restart it
	// (same address) with MAAS_GATEWAY_URL and a quick job poll.
	p.Control.Stop(10 * time.Second)
	p.StartControl("MAAS_FILES_DIR="+files, "MAAS_GATEWAY_URL="+gw)

	admin := p.AdminToken()
	p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "vs_owner", "password": "Password-123"}, 201, nil)
	p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "vs_other", "password": "Password-123"}, 201, nil)
	newClient := func(user string) openai.Client {
		key := p.CreateKey(p.Login(user, "Password-123"), map[string]any{"name": user})
		return openai.NewClient(option.WithBaseURL(gw+"/v1/"), option.WithAPIKey(key),
			option.WithMaxRetries(0), option.WithRequestTimeout(30*time.Second))
	}
	c, other := newClient("vs_owner"), newClient("vs_other")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	upload := func(name, content string) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second) // the gateway learns new keys within a second
		for {
			f, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(content), name, "application/octet-stream"),
				Purpose: openai.FilePurposeAssistants})
			if err == nil {
				return f.ID
			}
			if time.Now().After(deadline) {
				t.Fatalf("upload %s: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	pdf, err := os.ReadFile("../../../control/internal/knowledge/testdata/sample.pdf")
	if err != nil {
		t.Fatal(err)
	}
	txt := upload("lighthouse.txt", "The lighthouse keeper trims the lamp wick every evening and winds the clockwork that turns the lens.")
	pdfID := upload("azores.pdf", string(pdf))
	corrupt := upload("broken.pdf", "%PDF-1.7\n"+strings.Repeat("\x00\x01 not a pdf ", 40))

	vs, err := c.VectorStores.New(ctx, openai.VectorStoreNewParams{Name: openai.String("sdk"), FileIDs: []string{txt, pdfID, corrupt}})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(fileID string) *openai.VectorStoreFile {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			f, err := c.VectorStores.Files.Get(ctx, vs.ID, fileID)
			if err != nil {
				t.Fatal(err)
			}
			if f.Status != openai.VectorStoreFileStatusInProgress {
				return f
			}
			if time.Now().After(deadline) {
				t.Fatalf("file %s still in progress", fileID)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, id := range []string{txt, pdfID} {
		if f := wait(id); f.Status != openai.VectorStoreFileStatusCompleted || f.UsageBytes == 0 {
			t.Fatalf("file %s: %s", id, f.RawJSON())
		}
	}
	if f := wait(corrupt); f.Status != openai.VectorStoreFileStatusFailed || f.LastError.Code != "invalid_file" || f.LastError.Message == "" {
		t.Fatalf("corrupt file: %s", f.RawJSON())
	}
	got, err := c.VectorStores.Get(ctx, vs.ID)
	if err != nil || got.FileCounts.Completed != 2 || got.FileCounts.Failed != 1 || got.FileCounts.Total != 3 {
		t.Fatalf("store: %v %s", err, got.RawJSON())
	}

	search := func(cl openai.Client, q string) ([]string, error) {
		page, err := cl.VectorStores.Search(ctx, vs.ID, openai.VectorStoreSearchParams{
			Query: openai.VectorStoreSearchParamsQueryUnion{OfString: openai.String(q)}, MaxNumResults: openai.Int(5)})
		if err != nil {
			return nil, err
		}
		var ids []string
		for _, r := range page.Data {
			if r.Filename == "" || len(r.Content) == 0 || r.Content[0].Text == "" {
				t.Fatalf("result without filename or content: %s", r.RawJSON())
			}
			ids = append(ids, r.FileID)
		}
		return ids, nil
	}
	for q, want := range map[string]string{"lighthouse lamp wick": txt, "pineapples in volcanic soil": pdfID} {
		ids, err := search(c, q)
		if err != nil || len(ids) == 0 || ids[0] != want {
			t.Fatalf("search %q: %v %v, want %s first", q, ids, err, want)
		}
	}

	// A batch, listed and retrieved.
	extra := upload("fog.md", "# Fog signals\n\nIn fog the keeper sounds the horn twice a minute.")
	batch, err := c.VectorStores.FileBatches.New(ctx, vs.ID, openai.VectorStoreFileBatchNewParams{FileIDs: []string{extra}})
	if err != nil {
		t.Fatal(err)
	}
	wait(extra)
	if b, err := c.VectorStores.FileBatches.Get(ctx, vs.ID, batch.ID); err != nil || b.Status != openai.VectorStoreFileBatchStatusCompleted || b.FileCounts.Completed != 1 {
		t.Fatalf("batch: %v %s", err, b.RawJSON())
	}
	if l, err := c.VectorStores.FileBatches.ListFiles(ctx, vs.ID, batch.ID, openai.VectorStoreFileBatchListFilesParams{}); err != nil || len(l.Data) != 1 || l.Data[0].ID != extra {
		t.Fatalf("batch files: %v %+v", err, l)
	}

	// Another user sees nothing of the store.
	var apiErr *openai.Error
	if _, err := other.VectorStores.Get(ctx, vs.ID); !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("other user's get: %v", err)
	}
	if _, err := search(other, "lighthouse"); !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("other user's search: %v", err)
	}

	// Ingestion and search embedded through the gateway, as the owner, with no key.
	conn, err := pgx.Connect(ctx, p.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	deadline := time.Now().Add(15 * time.Second) // the ledger writes in batches
	for {
		err := conn.QueryRow(ctx, `SELECT count(*) FROM usage_records r JOIN users u ON u.id = r.user_id
			WHERE u.username = 'vs_owner' AND coalesce(r.api_key_id, 0) = 0 AND r.endpoint = 'knowledge:/v1/embeddings' AND r.status = 200`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n < 3 {
		t.Fatalf("%d embeddings requests of the owner in the ledger, want at least 3 (ingestion of three files, searches)", n)
	}

	// A detached file leaves search; the deleted store is gone.
	if _, err := c.VectorStores.Files.Delete(ctx, vs.ID, txt); err != nil {
		t.Fatal(err)
	}
	if ids, err := search(c, "lighthouse lamp wick"); err != nil || slices.Contains(ids, txt) {
		t.Fatalf("after detaching: %v %v", ids, err)
	}
	if d, err := c.VectorStores.Delete(ctx, vs.ID); err != nil || !d.Deleted {
		t.Fatalf("delete: %v", err)
	}
	if _, err := c.VectorStores.Get(ctx, vs.ID); !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("get after delete: %v", err)
	}
}
