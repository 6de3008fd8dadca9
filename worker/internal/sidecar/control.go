package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/maas-platform/maas/pkg/openai"
	"github.com/maas-platform/maas/pkg/registry"
)

var errBackendNotFound = errors.New("control does not know this backend")

// controlClient calls control's /internal/v1/backends endpoints.
type controlClient struct {
	base, token string
	http        *http.Client
}

func newControlClient(base, token string) *controlClient {
	return &controlClient{base: base, token: token, http: &http.Client{Timeout: 5 * time.Second}}
}

func (c *controlClient) do(ctx context.Context, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e openai.ErrorResponse
		_ = json.Unmarshal(raw, &e)
		if resp.StatusCode == http.StatusNotFound && string(e.Error.Code) == `"`+registry.NotFoundCode+`"` {
			return resp.StatusCode, errBackendNotFound
		}
		return resp.StatusCode, fmt.Errorf("control %s: status %d: %s", path, resp.StatusCode, e.Error.Message)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("control %s: decode: %w", path, err)
		}
	}
	return resp.StatusCode, nil
}

func (c *controlClient) register(ctx context.Context, r registry.RegisterRequest) (registry.Backend, error) {
	var b registry.Backend
	_, err := c.do(ctx, "/internal/v1/backends/register", r, &b)
	if err != nil {
		return b, fmt.Errorf("register backend %s: %w", r.ID, err)
	}
	return b, nil
}

func (c *controlClient) heartbeat(ctx context.Context, id string, hb registry.HeartbeatRequest) (registry.Backend, error) {
	var b registry.Backend
	_, err := c.do(ctx, "/internal/v1/backends/"+url.PathEscape(id)+"/heartbeat", hb, &b)
	if err != nil && !errors.Is(err, errBackendNotFound) {
		return b, fmt.Errorf("heartbeat backend %s: %w", id, err)
	}
	return b, err
}

func (c *controlClient) deregister(ctx context.Context, id string) error {
	if _, err := c.do(ctx, "/internal/v1/backends/"+url.PathEscape(id)+"/deregister", nil, nil); err != nil {
		return fmt.Errorf("deregister backend %s: %w", id, err)
	}
	return nil
}
