package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/maas-platform/maas/gateway/internal/reqbody"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// engineLike answers the way an engine reads a body: keys decoded by encoding/json, the
// last duplicate winning. It streams when the decoded body asks for it, with the usage
// chunk only when stream_options.include_usage is true, and says which model it served.
func engineLike(n int) func(w http.ResponseWriter, body []byte) {
	return func(w http.ResponseWriter, body []byte) {
		var req struct {
			Model         string `json:"model"`
			Stream        bool   `json:"stream"`
			StreamOptions *struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		var keys map[string]json.RawMessage // exact keys, as Python engines read them
		if json.Unmarshal(body, &keys) != nil || json.Unmarshal(body, &req) != nil {
			w.WriteHeader(400)
			return
		}
		_ = json.Unmarshal(keys["model"], &req.Model)
		_ = json.Unmarshal(keys["stream"], &req.Stream)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"id":"c1","object":"chat.completion","model":"`+req.Model+`","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":2}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range n {
			io.WriteString(w, "data: "+chunk("t"+itoa(i))+"\n\n")
		}
		if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
			io.WriteString(w, `data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":`+itoa(n)+`}}`+"\n\n")
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}
}

// An escaped key name is the key it decodes to: "str\u0065am" streams, and the stream is
// billed from the engine's usage (it was counted as a 0-token unary answer before).
func TestEscapedStreamKeyIsAStream(t *testing.T) {
	be := &fakeBackend{handle: engineLike(50)}
	r := newRig(t, be)
	st, body := r.post(t, `{"model":"m","str\u0065am":true,"messages":[{"role":"user","content":"hi"}]}`)
	if st != 200 {
		t.Fatalf("status %d: %s", st, body)
	}
	if strings.Contains(string(body), `"usage"`) || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Errorf("client stream (usage chunk must be stripped):\n%s", body)
	}
	rec := r.rec.wait(t, 1)[0]
	if !rec.Streamed || rec.CompletionTokens != 50 || rec.PromptTokens != 7 || rec.Estimated {
		t.Errorf("record %+v, want a streamed request billed 7+50 from the engine's usage", rec)
	}
	var sent map[string]json.RawMessage
	if err := json.Unmarshal(be.last(), &sent); err != nil || string(sent["stream_options"]) != `{"include_usage":true}` {
		t.Errorf("backend received %s", be.last())
	}
}

// Duplicate interpreted keys are refused: the gateway would authorise one model while the
// engine (last key wins) serves another.
func TestDuplicateKeysRefused(t *testing.T) {
	be := &fakeBackend{handle: engineLike(1)}
	r := newRig(t, be)
	for _, tc := range []struct{ body, param string }{
		{`{"model":"m","m\u006fdel":"restricted-lora","messages":[]}`, "model"},
		{`{"model":"m","stream":false,"stream":true,"messages":[]}`, "stream"},
		{`{"model":"m","max_tokens":1,"max_tok\u0065ns":100000,"messages":[]}`, "max_tokens"},
		{`{"model":"m","Model":"restricted-lora","messages":[]}`, "Model"},
		{"{\"model\":\"m\xff\",\"messages\":[]}", "model"},
		{`{"model":"m\u0000","messages":[]}`, "model"},
	} {
		st, b := r.post(t, tc.body)
		param, _ := errorOf(t, b)
		if st != 400 || param != tc.param {
			t.Errorf("%s: status %d, %s; want 400 with param %q", tc.body, st, b, tc.param)
		}
	}
	be.mu.Lock()
	if len(be.bodies) != 0 {
		t.Errorf("%d requests reached the engine", len(be.bodies))
	}
	be.mu.Unlock()
	// Refused before the model is resolved: nothing is recorded under an unchecked name.
	for _, rec := range r.rec.wait(t, 6) {
		if rec.Model != "" || rec.Status != 400 {
			t.Errorf("record %+v", rec)
		}
	}
}

func errorOf(t *testing.T, b []byte) (param, msg string) {
	t.Helper()
	var env struct {
		Error struct {
			Message string  `json:"message"`
			Param   *string `json:"param"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("not an error envelope: %s", b)
	}
	if env.Error.Param != nil {
		param = *env.Error.Param
	}
	return param, env.Error.Message
}

type reservations struct {
	mu  sync.Mutex
	got []int64
}

func (q *reservations) Admit(_ context.Context, _ *snapshot.Key, tokens int64) (Ticket, error) {
	q.mu.Lock()
	q.got = append(q.got, tokens)
	q.mu.Unlock()
	return settleNothing{}, nil
}

type settleNothing struct{}

func (settleNothing) Settle(int64) {}

// The reservation is n × the larger output limit (engines prefer max_completion_tokens)
// plus the prompt estimate; without a limit, n × the model's output cap, which is then set
// as max_tokens for the engine.
func TestReservationCountsNAndLargerLimit(t *testing.T) {
	q := &reservations{}
	be := &fakeBackend{handle: engineLike(1)}
	r := newRigWith(t, func(_ *upstream.Options, o *Options) { o.Quota = q }, be)
	messages := `[{"role":"user","content":"` + strings.Repeat("x", 77) + `"}]` // 108 bytes: 27 tokens
	for _, body := range []string{
		`{"model":"m","n":4,"max_completion_tokens":30000,"max_tokens":9,"messages":` + messages + `}`,
		`{"model":"m","n":2,"messages":` + messages + `}`,
	} {
		if st, b := r.post(t, body); st != 200 {
			t.Fatalf("%s: status %d %s", body, st, b)
		}
	}
	want := []int64{4*30000 + 27, 2*snapshot.DefaultMaxOutputTokens + 27}
	if q.got[0] != want[0] || q.got[1] != want[1] {
		t.Errorf("reservations %v, want %v", q.got, want)
	}
	// The output cap the reservation counted on is the engine's limit too.
	var sent map[string]json.RawMessage
	if err := json.Unmarshal(be.last(), &sent); err != nil || string(sent["max_tokens"]) != itoa(snapshot.DefaultMaxOutputTokens) {
		t.Errorf("backend received %s, want max_tokens %d", be.last(), snapshot.DefaultMaxOutputTokens)
	}
	be.mu.Lock()
	first := string(be.bodies[0])
	be.mu.Unlock()
	if strings.Contains(first, `"max_tokens":1024`) {
		t.Errorf("a body with limits was changed: %s", first)
	}
}

// n, messages and embeddings inputs are bounded (Options.Limits); each bound is a 400
// naming the field, and a request at the bound passes.
func TestRequestBounds(t *testing.T) {
	r := newRigWith(t, func(_ *upstream.Options, o *Options) {
		o.Limits = reqbody.Limits{MaxN: 3, MaxMessages: 2, MaxInputs: 2}
	}, &fakeBackend{handle: engineLike(1)})
	for _, tc := range []struct {
		path, body, param string
	}{
		{"/v1/chat/completions", `{"model":"m","n":4,"messages":[]}`, "n"},
		{"/v1/chat/completions", `{"model":"m","messages":[{},{},{}]}`, "messages"},
		{"/v1/embeddings", `{"model":"m","input":["a","b","c"]}`, "input"},
		{"/v1/chat/completions", `{"model":"m","n":3,"messages":[{},{}]}`, ""},
		{"/v1/embeddings", `{"model":"m","input":["a","b"]}`, ""},
	} {
		req, _ := http.NewRequest("POST", r.url+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tc.param == "" {
			if resp.StatusCode != 200 {
				t.Errorf("%s: status %d %s, want 200", tc.body, resp.StatusCode, b)
			}
			continue
		}
		if param, _ := errorOf(t, b); resp.StatusCode != 400 || param != tc.param {
			t.Errorf("%s: status %d %s, want 400 param %q", tc.body, resp.StatusCode, b, tc.param)
		}
	}
}
