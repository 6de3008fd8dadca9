package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/openai"
)

func TestParseFailure(t *testing.T) {
	tests := []struct {
		in   string
		want Failure
		err  bool
	}{
		{"", Failure{}, false},
		{"status=503", Failure{Status: 503}, false},
		{"hang", Failure{Hang: true}, false},
		{"stall", Failure{Stall: true}, false},
		{"drop-after=0", Failure{Drop: true}, false},
		{"drop-after=3", Failure{Drop: true, DropAfter: 3}, false},
		{"malformed", Failure{Malformed: true}, false},
		{"slow-first-byte=500ms", Failure{SlowFirstByte: 500 * time.Millisecond}, false},
		{"slow-first-byte=200ms, drop-after=2", Failure{SlowFirstByte: 200 * time.Millisecond, Drop: true, DropAfter: 2}, false},
		{"status=200", Failure{}, true},
		{"drop-after=x", Failure{}, true},
		{"explode", Failure{}, true},
		{"slow-first-byte", Failure{}, true},
	}
	for _, tt := range tests {
		got, err := ParseFailure(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseFailure(%q) = %+v, %v", tt.in, got, err)
		}
		if err == nil {
			back, err := ParseFailure(got.String())
			if err != nil || back != got {
				t.Errorf("round trip of %q: %+v, %v", tt.in, back, err)
			}
		}
	}
}

const chatBody = `{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"max_tokens":5}`
const streamBody = `{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"max_tokens":5,"stream":true}`

func TestFailureStatus(t *testing.T) {
	s := start(t, withFailHeader)
	for _, path := range []string{"/v1/chat/completions", "/v1/embeddings"} {
		body := chatBody
		if path == "/v1/embeddings" {
			body = `{"model":"sim-embedding","input":"x"}`
		}
		for _, status := range []int{429, 500, 503} {
			resp, b := post(t, s, path, body, FailHeader, "status="+itoa(status))
			if resp.StatusCode != status {
				t.Fatalf("%s: status %d, want %d", path, resp.StatusCode, status)
			}
			var e openai.ErrorResponse
			strict(t, b, &e)
			if string(e.Error.Code) != `"simulated_failure"` || e.Error.Type == "" {
				t.Errorf("envelope %s", b)
			}
			if (status != 500) != (resp.Header.Get("Retry-After") == "1") {
				t.Errorf("status %d: Retry-After %q", status, resp.Header.Get("Retry-After"))
			}
		}
	}
	if resp, b := post(t, s, "/v1/chat/completions", chatBody, FailHeader, "explode"); resp.StatusCode != 400 {
		t.Errorf("bad header: %d %s", resp.StatusCode, b)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestFailureHang(t *testing.T) {
	s := start(t, withFailHeader)
	c := &http.Client{Timeout: 300 * time.Millisecond}
	req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(chatBody))
	req.Header.Set(FailHeader, "hang")
	began := time.Now()
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a hung request answered %d", resp.StatusCode)
	}
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(began) < 300*time.Millisecond {
		t.Errorf("want a client timeout, got %v after %v", err, time.Since(began))
	}
	// Hung requests do not count as load, and Stop does not wait for them.
	if l := s.Load(); l.Running != 0 {
		t.Errorf("load %+v", l)
	}
}

func TestFailureHangReleasedByStop(t *testing.T) {
	s := start(t, withFailHeader)
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(chatBody))
		req.Header.Set(FailHeader, "hang")
		resp, err := (&http.Client{}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.hijackMu.Lock()
		n := len(s.hijacked)
		s.hijackMu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("request never hung")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the hung request got an answer")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not release the hung request")
	}
}

func TestFailureDropStream(t *testing.T) {
	s := start(t, withFailHeader)
	for _, n := range []int{0, 1, 3} {
		req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(streamBody))
		req.Header.Set(FailHeader, "drop-after="+string(rune('0'+n)))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("status %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		r := openai.NewReader(resp.Body)
		got := 0
		var last error
		for {
			ev, err := r.Next()
			if err != nil {
				last = err
				break
			}
			if openai.IsDone(ev.Data) {
				t.Fatal("a dropped stream reached [DONE]")
			}
			var c openai.ChatCompletionChunk
			strict(t, ev.Data, &c)
			got++
		}
		resp.Body.Close()
		if got != n || !errors.Is(last, io.ErrUnexpectedEOF) {
			t.Errorf("drop-after=%d: %d events, end %v (want unexpected EOF)", n, got, last)
		}
	}
}

func TestFailureDropBody(t *testing.T) {
	s := start(t, withFailHeader)
	req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(chatBody))
	req.Header.Set(FailHeader, "drop-after=10")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(b) != 10 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("status %d, %d bytes, err %v", resp.StatusCode, len(b), err)
	}
}

func TestFailureMalformed(t *testing.T) {
	s := start(t, withFailHeader)
	resp, b := post(t, s, "/v1/chat/completions", chatBody, FailHeader, "malformed")
	if resp.StatusCode != 200 || json.Valid(b) || len(b) == 0 {
		t.Errorf("non-streamed: status %d valid %v: %s", resp.StatusCode, json.Valid(b), b)
	}
	resp, b = post(t, s, "/v1/chat/completions", streamBody, FailHeader, "malformed")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	events := readStream(t, b)
	bad := 0
	for i, data := range events {
		if !json.Valid(data) {
			bad++
			if i != 1 {
				t.Errorf("malformed event at %d, want 1", i)
			}
		}
	}
	if bad != 1 || len(events) != 1+1+5 { // role, the bad one, 5 tokens (the last carries finish_reason)
		t.Errorf("%d malformed of %d events", bad, len(events))
	}
}

func TestFailureSlowFirstByte(t *testing.T) {
	s := start(t, withFailHeader)
	for _, body := range []string{chatBody, streamBody} {
		req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set(FailHeader, "slow-first-byte=200ms")
		began := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		headers := time.Since(began)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || headers < 200*time.Millisecond {
			t.Errorf("status %d, headers after %v (want >= 200ms)", resp.StatusCode, headers)
		}
	}
}

func TestFailureFromConfig(t *testing.T) {
	s := start(t, func(o *Options) { o.Fail = Failure{Status: 502}; o.FailRate = 1; o.FailHeaderEnabled = true })
	if resp, _ := post(t, s, "/v1/chat/completions", chatBody); resp.StatusCode != 502 {
		t.Errorf("configured failure: %d", resp.StatusCode)
	}
	// The header wins over the configuration.
	if resp, _ := post(t, s, "/v1/chat/completions", chatBody, FailHeader, "status=418"); resp.StatusCode != 418 {
		t.Errorf("header failure: %d", resp.StatusCode)
	}
	s0 := start(t, func(o *Options) { o.Fail = Failure{Status: 502}; o.FailRate = 0 })
	if resp, _ := post(t, s0, "/v1/chat/completions", chatBody); resp.StatusCode != 200 {
		t.Errorf("rate 0: %d", resp.StatusCode)
	}
}

func TestStreamTiming(t *testing.T) {
	s := start(t, func(o *Options) { o.TTFT = 100 * time.Millisecond; o.ITL = 20 * time.Millisecond })
	req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(streamBody))
	began := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	headers := time.Since(began)
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	first := time.Since(began)
	_, _ = io.Copy(io.Discard, br)
	total := time.Since(began)
	if headers >= 100*time.Millisecond || first < 100*time.Millisecond || total < 100*time.Millisecond+4*20*time.Millisecond {
		t.Errorf("headers %v, first event %v, total %v", headers, first, total)
	}
}

// withFailHeader turns on the X-Sim-Fail header, which is off by default.
func withFailHeader(o *Options) { o.FailHeaderEnabled = true }

func TestFailHeaderIgnoredUnlessEnabled(t *testing.T) {
	off := start(t, nil)
	for _, h := range []string{"status=503", "drop-after=0", "malformed", "explode"} {
		resp, b := post(t, off, "/v1/chat/completions", chatBody, FailHeader, h)
		var r openai.ChatCompletion
		if resp.StatusCode != 200 || json.Unmarshal(b, &r) != nil || len(r.Choices) != 1 {
			t.Errorf("header %q with injection off: %d %s", h, resp.StatusCode, b)
		}
	}
	on := start(t, withFailHeader)
	if resp, _ := post(t, on, "/v1/chat/completions", chatBody, FailHeader, "status=503"); resp.StatusCode != 503 {
		t.Errorf("header with injection on: %d, want 503", resp.StatusCode)
	}
	// The operator's MAAS_SIM_FAIL applies whether or not the header is honoured.
	cfg := start(t, func(o *Options) { o.Fail = Failure{Status: 502} })
	if resp, _ := post(t, cfg, "/v1/chat/completions", chatBody, FailHeader, "status=418"); resp.StatusCode != 502 {
		t.Errorf("configured failure with the header off: %d, want 502", resp.StatusCode)
	}
}

func TestFailHeaderSetting(t *testing.T) {
	for _, tt := range []struct {
		env  string
		want bool
	}{{"", false}, {"true", true}, {"false", false}} {
		if tt.env != "" {
			t.Setenv("MAAS_SIM_FAIL_HEADER", tt.env)
		}
		l, err := config.NewLoader("sim", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		var f Flags
		f.Bind(l)
		if err := l.Parse(nil); err != nil {
			t.Fatal(err)
		}
		o, err := f.Options()
		if err != nil || o.FailHeaderEnabled != tt.want {
			t.Errorf("MAAS_SIM_FAIL_HEADER=%q: enabled %v (%v), want %v", tt.env, o.FailHeaderEnabled, err, tt.want)
		}
	}
	if DefaultOptions().FailHeaderEnabled {
		t.Error("the header is honoured by default")
	}
}

// rawPost sends a POST with Expect: 100-continue over its own connection, without the
// body (a client waits for "100 Continue" first), and returns the connection.
func rawPost(t *testing.T, s *Sim, failHeader string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(chatBody)) + "\r\nExpect: 100-continue\r\n"
	if failHeader != "" {
		req += FailHeader + ": " + failHeader + "\r\n"
	}
	if _, err := c.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFailureStall(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mod    func(*Options)
		header string
	}{
		{"header", withFailHeader, "stall"},
		{"config", func(o *Options) { o.Fail = Failure{Stall: true} }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, tt.mod)
			c := rawPost(t, s, tt.header)
			// Nothing comes back, not even "100 Continue": the read times out.
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			buf := make([]byte, 64)
			if n, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("stalled request got %q, %v; want nothing", buf[:n], err)
			}
			// Stopping the simulator releases it at once (the stop would wait otherwise).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			began := time.Now()
			if err := s.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(began); d > 2*time.Second {
				t.Errorf("stop took %v with a stalled request", d)
			}
		})
	}
	// Without injection the same request gets its "100 Continue" and, with its body, an answer.
	s := start(t, nil)
	c := rawPost(t, s, "stall")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("without injection: %q, %v; want 100 Continue", line, err)
	}
}
