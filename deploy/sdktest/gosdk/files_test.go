package gosdk

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/maas-platform/maas/pkg/testenv"
)

// TestFilesWithOpenAIGo uploads, lists, retrieves, downloads and deletes files with the
// official Go client through a real gateway (which forwards /v1/files to control).
func TestFilesWithOpenAIGo(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl("MAAS_FILES_DIR=" + t.TempDir())
	proc, gw := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(t, proc, gw+"/ready", 30*time.Second)
	admin := p.AdminToken()
	p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "files_other", "password": "Password-123"}, 201, nil)
	keys := map[string]string{
		"owner": p.CreateKey(admin, map[string]any{"name": "files-owner"}),
		"other": p.CreateKey(p.Login("files_other", "Password-123"), map[string]any{"name": "files-other"}),
	}
	clients := map[string]openai.Client{}
	for who, key := range keys {
		clients[who] = openai.NewClient(option.WithBaseURL(gw+"/v1/"), option.WithAPIKey(key),
			option.WithMaxRetries(0), option.WithRequestTimeout(30*time.Second))
	}
	c, other := clients["owner"], clients["other"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The gateway learns new keys within a second: retry the first call until it does.
	dataset := `{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}` + "\n"
	var ft *openai.FileObject
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		ft, err = c.Files.New(ctx, openai.FileNewParams{
			File:    openai.File(strings.NewReader(dataset), "train.jsonl", "application/jsonl"),
			Purpose: openai.FilePurposeFineTune,
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.HasPrefix(ft.ID, "file-") || ft.Bytes != int64(len(dataset)) || ft.Filename != "train.jsonl" ||
		ft.Purpose != openai.FileObjectPurposeFineTune || ft.Status != openai.FileObjectStatusProcessed {
		t.Fatalf("uploaded %s", ft.RawJSON())
	}
	// Wait for the other key too (an unknown key is a 401, a hidden file a 404).
	for {
		_, err := other.Files.Get(ctx, ft.ID)
		if apiStatus(err) == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("other user's retrieve: %v, want 404", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	batch, err := c.Files.New(ctx, openai.FileNewParams{
		File: openai.File(strings.NewReader("{}\n"), "requests.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("retrieve and list", func(t *testing.T) {
		got, err := c.Files.Get(ctx, ft.ID)
		if err != nil || got.ID != ft.ID || got.CreatedAt != ft.CreatedAt {
			t.Fatalf("retrieve: %v %v", got, err)
		}
		var ids []string
		iter := c.Files.ListAutoPaging(ctx, openai.FileListParams{Limit: openai.Int(1)}) // one per page
		for iter.Next() {
			ids = append(ids, iter.Current().ID)
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if strings.Join(ids, ",") != batch.ID+","+ft.ID {
			t.Errorf("listed %v, want newest first %s,%s", ids, batch.ID, ft.ID)
		}
		page, err := c.Files.List(ctx, openai.FileListParams{Purpose: openai.String("fine-tune")})
		if err != nil || len(page.Data) != 1 || page.Data[0].ID != ft.ID {
			t.Errorf("purpose filter: %v %v", page, err)
		}
		page, err = other.Files.List(ctx, openai.FileListParams{})
		if err != nil || len(page.Data) != 0 {
			t.Errorf("another user lists %v %v", page, err)
		}
	})
	t.Run("content", func(t *testing.T) {
		resp, err := c.Files.Content(ctx, ft.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != dataset {
			t.Errorf("content %q", b)
		}
		if _, err := other.Files.Content(ctx, ft.ID); apiStatus(err) != 404 {
			t.Errorf("another user's download: %v, want 404", err)
		}
	})
	t.Run("invalid dataset", func(t *testing.T) {
		bad := dataset + dataset + `{"messages":[{"role":"user","content":"no answer"}]}` + "\n"
		_, err := c.Files.New(ctx, openai.FileNewParams{
			File: openai.File(strings.NewReader(bad), "bad.jsonl", "application/jsonl"), Purpose: openai.FilePurposeFineTune})
		e := apiError(t, err, 400)
		if !strings.Contains(e.Message, "line 3") || e.Param != "file" || e.Code != "invalid_file_format" {
			t.Errorf("invalid dataset answered %s", e.RawJSON())
		}
		_, err = c.Files.New(ctx, openai.FileNewParams{
			File: openai.File(strings.NewReader("x"), "x.png", "image/png"), Purpose: openai.FilePurposeVision})
		if e := apiError(t, err, 400); e.Param != "purpose" {
			t.Errorf("unsupported purpose answered %s", e.RawJSON())
		}
	})
	t.Run("delete", func(t *testing.T) {
		if _, err := other.Files.Delete(ctx, ft.ID); apiStatus(err) != 404 {
			t.Errorf("another user's delete: %v, want 404", err)
		}
		del, err := c.Files.Delete(ctx, ft.ID)
		if err != nil || !del.Deleted || del.ID != ft.ID {
			t.Fatalf("delete: %v %v", del, err)
		}
		if _, err := c.Files.Content(ctx, ft.ID); apiStatus(err) != 404 {
			t.Errorf("download after delete: %v, want 404", err)
		}
		if _, err := c.Files.Get(ctx, ft.ID); apiStatus(err) != 404 {
			t.Errorf("retrieve after delete: %v, want 404", err)
		}
	})
}

func apiStatus(err error) int {
	if e, ok := err.(*openai.Error); ok {
		return e.StatusCode
	}
	return 0
}
