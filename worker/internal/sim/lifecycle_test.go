package sim

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/openai"
)

// A keep-alive connection that sends nothing is closed after the idle timeout (vLLM's
// uvicorn closes it after 5 s by default).
func TestIdleTimeout(t *testing.T) {
	if d := DefaultOptions().IdleTimeout; d != 5*time.Second {
		t.Errorf("default idle timeout %v, want vLLM's 5s", d)
	}
	s := start(t, func(o *Options) { o.IdleTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 2; i++ { // the connection serves requests while they come
		if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: sim\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("request %d: %v %+v", i, err, resp)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	idle := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := br.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read %d bytes, %v (want the server to close it)", n, err)
	}
	if d := time.Since(idle); d < 150*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", d)
	}
}

// metric reads one of the model's counters from /metrics.
func metric(t *testing.T, s *Sim, name string) float64 {
	t.Helper()
	resp, err := client.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum, found := 0.0, false
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") || !strings.Contains(line, `model_name="sim-chat"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q", line)
		}
		sum, found = sum+v, true
	}
	if !found && name != "vllm:request_success_total" {
		t.Fatalf("no %s in /metrics", name)
	}
	return sum
}

// waitIdle waits until no request runs.
func waitIdle(t *testing.T, s *Sim, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for s.Load().Running != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a request still runs after %v", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The token counters count what a stream the client dropped consumed, as vLLM's do: its
// prompt once its first token is out, its tokens as produced; it is not a success.
func TestAbandonedStreamCounted(t *testing.T) {
	s := start(t, func(o *Options) { o.ITL = 10 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", s.URL()+"/v1/chat/completions",
		strings.NewReader(`{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":300,"ignore_eos":true,"stream":true}`))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r := openai.NewReader(resp.Body)
	for i := 0; i < 4; i++ { // the role chunk and 3 tokens
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	cancel() // closes the connection
	resp.Body.Close()
	waitIdle(t, s, 2*time.Second)
	if p := metric(t, s, "vllm:prompt_tokens_total"); p != 7 {
		t.Errorf("prompt tokens %v, want 7", p)
	}
	if g := metric(t, s, "vllm:generation_tokens_total"); g < 3 || g >= 300 {
		t.Errorf("generation tokens %v, want those produced before the drop (3 or more, not 300)", g)
	}
	if n := metric(t, s, "vllm:request_success_total"); n != 0 {
		t.Errorf("%v successes", n)
	}
}

// A non-streamed request whose client closes the connection stops generating (vLLM aborts
// it): its slot is free at once and the tokens produced until then are counted. A request
// whose client stays keeps its keep-alive connection.
func TestAbandonedRequestAborted(t *testing.T) {
	s := start(t, func(o *Options) { o.ITL = 10 * time.Millisecond })
	const body = `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":%d,"ignore_eos":true}`
	reused := 0
	for i := 0; i < 2; i++ {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				reused++
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "POST",
			s.URL()+"/v1/chat/completions", strings.NewReader(strings.Replace(body, "%d", "3", 1)))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if reused != 1 {
		t.Errorf("the second request reused %d connections, want 1 (the watch must leave the connection usable)", reused)
	}
	promptBefore, genBefore := metric(t, s, "vllm:prompt_tokens_total"), metric(t, s, "vllm:generation_tokens_total")

	abandon(t, s, strings.Replace(body, "%d", "300", 1)) // 3 s of generation
	if p := metric(t, s, "vllm:prompt_tokens_total") - promptBefore; p != 7 {
		t.Errorf("prompt tokens %v, want 7", p)
	}
	if g := metric(t, s, "vllm:generation_tokens_total") - genBefore; g < 1 || g >= 300 {
		t.Errorf("generation tokens %v, want those produced before the client left", g)
	}

	// Abandoned before its first token: vLLM counts a prompt when its prefill ends.
	s = start(t, func(o *Options) { o.TTFT = time.Minute })
	abandon(t, s, strings.Replace(body, "%d", "3", 1))
	if p, g := metric(t, s, "vllm:prompt_tokens_total"), metric(t, s, "vllm:generation_tokens_total"); p != 0 || g != 0 {
		t.Errorf("before the first token: prompt tokens %v, generation tokens %v, want none", p, g)
	}
}

// abandon sends a non-streamed chat request on a connection of its own, closes the
// connection once the request runs, and waits until the simulator has let it go.
func abandon(t *testing.T, s *Sim, body string) {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.Load().Running != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the request never ran")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Close()
	waitIdle(t, s, time.Second)
}
