package gosdk

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/maas-platform/maas/pkg/testenv"
)

const (
	chatModel      = "sim-chat"
	embeddingModel = "sim-embedding"
	// limitedRPM is the requests-per-minute limit of the key that provokes a 429: small
	// enough to reach quickly, large enough that Retry-After stays a couple of seconds.
	limitedRPM = 30
)

type platform struct {
	gateway string
	key     string
	limited string
}

func start(t *testing.T) platform {
	t.Helper()
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl()
	p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+testenv.FreeAddr(t), "MAAS_HEARTBEAT_INTERVAL=500ms",
		"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s", "MAAS_SIM_OUTPUT_TOKENS=8")
	proc, gw := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(t, proc, gw+"/ready", 30*time.Second)
	admin := p.AdminToken()
	pl := platform{
		gateway: gw,
		key:     p.CreateKey(admin, map[string]any{"name": "go-sdk"}),
		limited: p.CreateKey(admin, map[string]any{"name": "go-sdk-limited", "rpm": limitedRPM}),
	}
	// Wait until the gateway knows both keys and the simulator's models.
	deadline := time.Now().Add(15 * time.Second)
	for _, key := range []string{pl.key, pl.limited} {
		for {
			var list struct {
				Data []struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			status, _ := testenv.DoJSON(t, "GET", gw+"/v1/models", key, nil, &list)
			n := 0
			for _, m := range list.Data {
				if m.ID == chatModel || m.ID == embeddingModel {
					n++
				}
			}
			if status == 200 && n == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway not ready for the SDK: /v1/models status %d, %d of 2 models", status, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return pl
}

func (pl platform) client(key string, retries int) openai.Client {
	return openai.NewClient(option.WithBaseURL(pl.gateway+"/v1/"), option.WithAPIKey(key),
		option.WithMaxRetries(retries), option.WithRequestTimeout(30*time.Second))
}

func apiError(t *testing.T, err error, wantStatus int) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *openai.Error", err, err)
	}
	if e.StatusCode != wantStatus {
		t.Fatalf("status %d, want %d: %s", e.StatusCode, wantStatus, e.RawJSON())
	}
	return e
}

func TestOpenAIGoClient(t *testing.T) {
	pl := start(t)
	c := pl.client(pl.key, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	messages := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello to the MaaS gateway.")}

	t.Run("list models", func(t *testing.T) {
		iter := c.Models.ListAutoPaging(ctx)
		have := map[string]bool{}
		for iter.Next() {
			have[iter.Current().ID] = true
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if !have[chatModel] || !have[embeddingModel] {
			t.Errorf("models %v lack %s or %s", have, chatModel, embeddingModel)
		}
	})

	t.Run("chat not streamed", func(t *testing.T) {
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: chatModel, Messages: messages, MaxTokens: openai.Int(8)})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Choices) != 1 || r.Choices[0].Message.Content == "" || r.Choices[0].FinishReason == "" {
			t.Fatalf("unexpected answer: %s", r.RawJSON())
		}
		if r.Usage.CompletionTokens <= 0 || r.Usage.TotalTokens != r.Usage.PromptTokens+r.Usage.CompletionTokens {
			t.Errorf("usage %+v", r.Usage)
		}
	})

	for _, includeUsage := range []bool{true, false} {
		t.Run("chat streamed include_usage="+strconv.FormatBool(includeUsage), func(t *testing.T) {
			params := openai.ChatCompletionNewParams{Model: chatModel, Messages: messages, MaxTokens: openai.Int(8)}
			if includeUsage {
				params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			stream := c.Chat.Completions.NewStreaming(ctx, params)
			var acc openai.ChatCompletionAccumulator
			var chunks, usageChunks int
			var text strings.Builder
			for stream.Next() {
				ch := stream.Current()
				acc.AddChunk(ch)
				chunks++
				for _, choice := range ch.Choices {
					text.WriteString(choice.Delta.Content)
				}
				if ch.JSON.Usage.Valid() && ch.Usage.CompletionTokens > 0 {
					usageChunks++
					if len(ch.Choices) != 0 {
						t.Errorf("the usage chunk has choices: %s", ch.RawJSON())
					}
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if chunks < 2 || text.Len() == 0 {
				t.Fatalf("%d chunks, text %q", chunks, text.String())
			}
			want := 0
			if includeUsage {
				want = 1
			}
			if usageChunks != want {
				t.Errorf("%d usage chunks, want %d", usageChunks, want)
			}
			if includeUsage && acc.Usage.CompletionTokens <= 0 {
				t.Errorf("accumulated usage %+v", acc.Usage)
			}
		})
	}

	t.Run("completion", func(t *testing.T) {
		r, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(chatModel),
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")}, MaxTokens: openai.Int(8)})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Choices) != 1 || r.Choices[0].Text == "" || r.Usage.TotalTokens <= 0 {
			t.Fatalf("unexpected answer: %s", r.RawJSON())
		}
	})

	t.Run("embeddings float and base64", func(t *testing.T) {
		input := openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"the quick brown fox", "jumps over the lazy dog"}}
		// The Go client sends no encoding_format by default: floats.
		asDefault, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: embeddingModel, Input: input})
		if err != nil {
			t.Fatal(err)
		}
		asFloat, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: embeddingModel, Input: input, EncodingFormat: openai.EmbeddingNewParamsEncodingFormatFloat})
		if err != nil {
			t.Fatal(err)
		}
		asB64, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: embeddingModel, Input: input, EncodingFormat: openai.EmbeddingNewParamsEncodingFormatBase64})
		if err != nil {
			t.Fatal(err)
		}
		if len(asFloat.Data) != 2 || len(asDefault.Data) != 2 || len(asB64.Data) != 2 {
			t.Fatalf("data lengths %d %d %d", len(asFloat.Data), len(asDefault.Data), len(asB64.Data))
		}
		for i := range 2 {
			f := asFloat.Data[i].Embedding
			if len(f) == 0 {
				t.Fatalf("empty embedding %d", i)
			}
			// base64 arrives as a string the client keeps raw: little-endian float32.
			var s string
			if err := json.Unmarshal([]byte(asB64.Data[i].JSON.Embedding.Raw()), &s); err != nil {
				t.Fatalf("base64 embedding %d is not a JSON string: %v", i, err)
			}
			raw, err := base64.StdEncoding.DecodeString(s)
			if err != nil || len(raw) != 4*len(f) {
				t.Fatalf("base64 embedding %d: %d bytes for %d dimensions (%v)", i, len(raw), len(f), err)
			}
			for j := range f {
				b := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
				if math.Abs(float64(b)-f[j]) > 1e-6 || math.Abs(asDefault.Data[i].Embedding[j]-f[j]) > 1e-12 {
					t.Fatalf("embedding %d dimension %d: float %g, base64 %g, default %g", i, j, f[j], b, asDefault.Data[i].Embedding[j])
				}
			}
		}
	})

	t.Run("invalid key is 401", func(t *testing.T) {
		bad := pl.client("sk-not-a-real-key-000000000000000000000000000", 0)
		_, err := bad.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: chatModel, Messages: messages})
		e := apiError(t, err, http.StatusUnauthorized)
		if e.Type != "authentication_error" && e.Code != "invalid_api_key" {
			t.Errorf("error type %q code %q", e.Type, e.Code)
		}
	})

	t.Run("unknown model is 404", func(t *testing.T) {
		_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "no-such-model", Messages: messages})
		apiError(t, err, http.StatusNotFound)
	})

	t.Run("rate limit is 429 and the retry is honoured", func(t *testing.T) {
		limited := pl.client(pl.limited, 0)
		params := openai.EmbeddingNewParams{Model: embeddingModel, Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}}
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = limited.Embeddings.New(ctx, params)
		}
		e := apiError(t, err, http.StatusTooManyRequests)
		retryAfter, perr := strconv.Atoi(e.Response.Header.Get("Retry-After"))
		if perr != nil || retryAfter < 1 || retryAfter > 60 {
			t.Fatalf("Retry-After %q", e.Response.Header.Get("Retry-After"))
		}
		began := time.Now()
		retrying := pl.client(pl.limited, 3)
		r, err := retrying.Embeddings.New(ctx, params)
		if err != nil {
			t.Fatalf("with retries: %v", err)
		}
		waited := time.Since(began)
		if len(r.Data) != 1 || waited < time.Duration(retryAfter-1)*time.Second {
			t.Errorf("succeeded after %v with Retry-After %d s", waited, retryAfter)
		}
	})
}
