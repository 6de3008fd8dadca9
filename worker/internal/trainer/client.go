package trainer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/maas-platform/maas/pkg/openai"
	"github.com/maas-platform/maas/pkg/training"
)

// Every call to control's internal training API is in this file; pkg/training holds the
// wire types and documents the protocol.

// errLeaseLost is control's 409 lease_lost: the job is no longer this worker's.
var errLeaseLost = errors.New("control: this worker no longer holds the job's lease")

// statusError is any other answer that is not 2xx. A 4xx will not get better by retrying.
type statusError struct {
	Path    string
	Status  int
	Message string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("control %s: status %d: %s", e.Path, e.Status, e.Message)
}

// errOffControl is a URL from control that is not a path on control: refused, so that
// the internal token goes to control and nowhere else.
var errOffControl = errors.New("is not a path on control: refused")

// permanent reports whether err is an answer that retrying will not change.
func permanent(err error) bool {
	var se *statusError
	return errors.Is(err, errLeaseLost) || errors.Is(err, errOffControl) || (errors.As(err, &se) && se.Status/100 == 4 && se.Status != http.StatusTooManyRequests && se.Status != http.StatusRequestTimeout)
}

// client calls control's /internal/v1/fine_tuning endpoints with the internal token.
type client struct {
	base, token string
	http        *http.Client
	// callTimeout bounds the small JSON calls; transfers are bounded by their context.
	callTimeout time.Duration
}

func newClient(base, token string) *client {
	return &client{base: strings.TrimRight(base, "/"), token: token, http: &http.Client{}, callTimeout: 10 * time.Second}
}

// url resolves a path control gave (a task's file or upload URL) against its base. Only
// a path is taken: an absolute URL, "//host…" or "@host…" (which, appended to the base,
// would become the host) is refused.
func (c *client) url(path string) (string, error) {
	if !strings.HasPrefix(path, "/") || strings.HasPrefix(path, "//") {
		return "", fmt.Errorf("URL %.200q %w", path, errOffControl)
	}
	return c.base + path, nil
}

func (c *client) request(ctx context.Context, method, path, lease string, body io.Reader, length int64, contentType string) (*http.Response, error) {
	u, err := c.url(path)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if length > 0 {
		req.ContentLength = length
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if lease != "" {
		req.Header.Set(training.LeaseHeader, lease)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("control %s: %w", path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e openai.ErrorResponse
	_ = json.Unmarshal(raw, &e)
	if resp.StatusCode == http.StatusConflict && string(e.Error.Code) == `"`+training.LeaseLostCode+`"` {
		return nil, errLeaseLost
	}
	msg := e.Error.Message
	if msg == "" {
		msg = CleanText(string(raw), 200)
	}
	return nil, &statusError{Path: path, Status: resp.StatusCode, Message: msg}
}

// call POSTs body as JSON and decodes a JSON answer into out (when not nil).
func (c *client) call(ctx context.Context, path, lease string, body, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout)
	defer cancel()
	b, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	resp, err := c.request(ctx, http.MethodPost, path, lease, bytes.NewReader(b), int64(len(b)), "application/json")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("control %s: %w", path, err)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("control %s: decode: %w", path, err)
		}
	}
	return resp.StatusCode, nil
}

func jobPath(t *training.Task, what string) string {
	return "/internal/v1/fine_tuning/jobs/" + t.JobID + "/" + what
}

// claim asks for a job; nil when none is queued (204).
func (c *client) claim(ctx context.Context, r training.ClaimRequest) (*training.Task, error) {
	var t training.Task
	status, err := c.call(ctx, "/internal/v1/fine_tuning/claim", "", r, &t)
	if err != nil {
		return nil, fmt.Errorf("claim a fine-tuning job: %w", err)
	}
	if status == http.StatusNoContent || t.JobID == "" {
		return nil, nil
	}
	if t.LeaseToken == "" {
		return nil, fmt.Errorf("claim a fine-tuning job: control gave job %s without a lease token", t.JobID)
	}
	return &t, nil
}

func (c *client) heartbeat(ctx context.Context, t *training.Task, workerID string) (training.HeartbeatResponse, error) {
	var r training.HeartbeatResponse
	_, err := c.call(ctx, jobPath(t, "heartbeat"), t.LeaseToken, training.HeartbeatRequest{WorkerID: workerID}, &r)
	return r, err
}

func (c *client) postEvents(ctx context.Context, t *training.Task, r training.EventsRequest) error {
	_, err := c.call(ctx, jobPath(t, "events"), t.LeaseToken, r, nil)
	return err
}

func (c *client) postCheckpoint(ctx context.Context, t *training.Task, r training.CheckpointRequest) error {
	_, err := c.call(ctx, jobPath(t, "checkpoints"), t.LeaseToken, r, nil)
	return err
}

func (c *client) complete(ctx context.Context, t *training.Task, r training.CompleteRequest) error {
	_, err := c.call(ctx, jobPath(t, "complete"), t.LeaseToken, r, nil)
	return err
}

func (c *client) fail(ctx context.Context, t *training.Task, r training.FailRequest) error {
	_, err := c.call(ctx, jobPath(t, "fail"), t.LeaseToken, r, nil)
	return err
}

// download writes a dataset of the task to path and returns its size.
func (c *client) download(ctx context.Context, t *training.Task, f training.TaskFile, path string) (int64, error) {
	resp, err := c.request(ctx, http.MethodGet, f.URL, t.LeaseToken, nil, 0, "")
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", f.ID, err)
	}
	defer resp.Body.Close()
	out, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	var r io.Reader = resp.Body
	if f.Bytes > 0 {
		r = io.LimitReader(r, f.Bytes+1) // more than announced is an error below
	}
	n, err := io.Copy(out, r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("download %s: %w", f.ID, err)
	}
	if f.Bytes > 0 && n != f.Bytes {
		return n, fmt.Errorf("download %s: got %d bytes, control announced %d", f.ID, n, f.Bytes)
	}
	return n, nil
}

// putAdapter uploads the adapter archive (application/x-tar) from the file at archive,
// with its length: no chunked body.
func (c *client) putAdapter(ctx context.Context, t *training.Task, archive string) error {
	f, err := os.Open(archive)
	if err != nil {
		return fmt.Errorf("upload adapter: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("upload adapter: %w", err)
	}
	path := t.AdapterUploadURL
	if path == "" {
		path = jobPath(t, "adapter")
	}
	resp, err := c.request(ctx, http.MethodPut, path, t.LeaseToken, f, st.Size(), "application/x-tar")
	if err != nil {
		return fmt.Errorf("upload adapter: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return nil
}
