package knowledge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/maas-platform/maas/pkg/internalauth"
)

// ServiceHeader names the platform service that makes a request on a user's behalf; the
// gateway records it (the ledger's key is 0 for such requests).
const ServiceHeader = "X-Maas-Service"

// GatewayEmbedder embeds through the gateway's /v1/embeddings on behalf of a user: the
// request carries the internal token as its bearer and the user's identity in
// internalauth's signed headers (key id 0: no API key; X-Maas-Service: knowledge), so the
// gateway routes it, applies the user's quotas and writes the ledger as for the user's own
// request. Safe for concurrent use.
type GatewayEmbedder struct {
	// URL is the gateway's base URL (MAAS_GATEWAY_URL), without /v1.
	URL string
	// Token is MAAS_INTERNAL_TOKEN.
	Token string
	// Client is the HTTP client (one with a 2-minute timeout when nil).
	Client *http.Client
	// Now is the clock of the signatures (time.Now when nil).
	Now func() time.Time
}

type embeddingsRequest struct {
	Model          string   `json:"model"`
	Input          []string `json:"input"`
	EncodingFormat string   `json:"encoding_format"`
}

type embeddingsResponse struct {
	Data []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
}

var defaultClient = &http.Client{Timeout: 2 * time.Minute}

// Embed implements Embedder.
func (g *GatewayEmbedder) Embed(ctx context.Context, as Identity, model string, inputs []string) ([][]float32, error) {
	body, err := json.Marshal(embeddingsRequest{Model: model, Input: inputs, EncodingFormat: "float"})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(g.URL, "/")+"/v1/embeddings", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	now := time.Now
	if g.Now != nil {
		now = g.Now
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+g.Token)
	req.Header.Set(ServiceHeader, "knowledge")
	for k, v := range internalauth.Sign(g.Token, Identity{UserID: as.UserID, KeyID: 0, Roles: as.Roles}, now()) {
		req.Header.Set(k, v)
	}
	c := g.Client
	if c == nil {
		c = defaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, &EmbedError{Status: 0, Message: "the gateway did not answer: " + err.Error()}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, &EmbedError{Status: 0, Message: "reading the gateway's answer: " + err.Error()}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
				Code    any    `json:"code"`
			} `json:"error"`
		}
		_ = json.Unmarshal(raw, &e)
		msg := e.Error.Message
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		code, _ := e.Error.Code.(string)
		return nil, &EmbedError{Status: resp.StatusCode, Code: code, Message: msg}
	}
	var out embeddingsResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, &EmbedError{Status: resp.StatusCode, Message: "the gateway's answer is not an embeddings response"}
	}
	vecs := make([][]float32, len(inputs))
	for _, d := range out.Data {
		if d.Index < 0 || d.Index >= len(vecs) || len(d.Embedding) == 0 {
			return nil, &EmbedError{Status: resp.StatusCode, Message: fmt.Sprintf("the gateway's answer has a bad embedding at index %d", d.Index)}
		}
		vecs[d.Index] = d.Embedding
	}
	for i, v := range vecs {
		if v == nil {
			return nil, &EmbedError{Status: resp.StatusCode, Message: fmt.Sprintf("the gateway's answer lacks embedding %d", i)}
		}
	}
	return vecs, nil
}
