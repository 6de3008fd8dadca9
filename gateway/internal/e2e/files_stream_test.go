package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// pattern is a reader of n deterministic bytes, hashed as they are read; with pace set,
// it waits pace after each MiB.
type pattern struct {
	left int64
	i    byte
	sum  io.Writer
	// mu guards sum: when the server answers before reading the whole body (a 413), the
	// HTTP client returns while its writer may still be reading the body.
	mu   *sync.Mutex
	pace time.Duration
	mib  int64
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	for k := range b {
		b[k] = 'a' + (p.i+byte(k))%26
	}
	p.i += byte(len(b) % 26)
	p.left -= int64(len(b))
	if p.mib += int64(len(b)); p.pace > 0 && p.mib >= 1<<20 {
		p.mib = 0
		time.Sleep(p.pace)
	}
	if p.sum != nil {
		p.mu.Lock()
		p.sum.Write(b)
		p.mu.Unlock()
	}
	return len(b), nil
}

// rssSampler polls a process's resident set size until stopped and keeps the largest.
type rssSampler struct {
	pid  int
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	max  int64
}

func rssOf(t testing.TB, pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatalf("read the gateway's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func sampleRSS(t testing.TB, pid int) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if strings.HasPrefix(line, "VmRSS:") {
						kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
						s.mu.Lock()
						s.max = max(s.max, kb<<10)
						s.mu.Unlock()
					}
				}
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

// upload sends a multipart upload of n pattern bytes to gw/v1/files, streamed (chunked
// when chunked is set, else with its Content-Length), and returns status, body and the
// content's SHA-256.
func upload(t *testing.T, gw, key string, n int64, chunked bool) (int, []byte, [32]byte) {
	return uploadPaced(t, gw, key, n, chunked, 0)
}

func uploadPaced(t *testing.T, gw, key string, n int64, chunked bool, pace time.Duration) (int, []byte, [32]byte) {
	t.Helper()
	h := sha256.New()
	var head, tail bytes.Buffer
	mw := multipart.NewWriter(&head)
	_ = mw.WriteField("purpose", "user_data")
	if _, err := mw.CreateFormFile("file", "big.txt"); err != nil {
		t.Fatal(err)
	}
	boundary := mw.Boundary()
	fmt.Fprintf(&tail, "\r\n--%s--\r\n", boundary)
	var mu sync.Mutex
	body := io.MultiReader(&head, &pattern{left: n, sum: h, mu: &mu, pace: pace}, &tail)
	req, _ := http.NewRequest("POST", gw+"/v1/files", body)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
	if !chunked {
		req.ContentLength = int64(head.Len()) + n + int64(tail.Len())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum [32]byte
	mu.Lock()
	copy(sum[:], h.Sum(nil))
	mu.Unlock()
	return resp.StatusCode, b, sum
}

// A 100 MiB file goes through the gateway to control and back with the gateway's memory
// flat: the forward path streams both bodies (it buffered them, capped at 10 MiB). Both
// take longer than the read and write timeouts meant for inference requests (1 s here):
// a transfer is bounded by the request timeout instead.
func TestForwardStreamsFiles(t *testing.T) {
	e := newEnv(t, false)
	proc, gw := e.gateway("MAAS_MAX_BODY_BYTES=1048576", "MAAS_READ_TIMEOUT=1s", "MAAS_WRITE_TIMEOUT=1s")
	key := e.key(gw, nil)
	pid := proc.Cmd.Process.Pid

	// Idle figure after a small upload and download have warmed the paths up.
	if st, b, _ := upload(t, gw, key, 64<<10, false); st != 200 {
		t.Fatalf("small upload: %d %s", st, b)
	}
	idle := rssOf(t, pid)

	const size = 100 << 20
	s := sampleRSS(t, pid)
	start := time.Now()
	st, b, want := uploadPaced(t, gw, key, size, false, 15*time.Millisecond) // ≥ 1.5 s
	upTime := time.Since(start)
	peakUp := s.Stop()
	if st != 200 {
		t.Fatalf("100 MiB upload: %d %s", st, b)
	}
	var f struct {
		ID    string `json:"id"`
		Bytes int64  `json:"bytes"`
	}
	if err := json.Unmarshal(b, &f); err != nil || f.Bytes != size {
		t.Fatalf("upload answer %s (%v)", b, err)
	}

	s = sampleRSS(t, pid)
	req, _ := http.NewRequest("GET", gw+"/v1/files/"+f.ID+"/content", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, rerr := http.DefaultClient.Do(req)
	if rerr != nil {
		t.Fatal(rerr)
	}
	h := sha256.New()
	start = time.Now()
	var n int64
	var err error
	buf := make([]byte, 1<<20)
	for err == nil {
		var k int
		k, err = io.ReadFull(resp.Body, buf)
		h.Write(buf[:k])
		n += int64(k)
		time.Sleep(15 * time.Millisecond) // a client reading at most ~60 MiB/s: ≥ 1.5 s
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	resp.Body.Close()
	downTime := time.Since(start)
	peakDown := s.Stop()
	if err != nil || resp.StatusCode != 200 || n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("download: status %d, %d bytes, err %v, same content %v", resp.StatusCode, n, err, bytes.Equal(h.Sum(nil), want[:]))
	}
	t.Logf("gateway RSS: idle %.1f MiB, peak during the 100 MiB upload (%v) %.1f MiB (+%.1f), during the download (%v) %.1f MiB (+%.1f)",
		mib(idle), upTime.Round(time.Millisecond), mib(peakUp), mib(peakUp-idle), downTime.Round(time.Millisecond), mib(peakDown), mib(peakDown-idle))
	// Buffering the file once would add 100 MiB; streaming adds buffers and GC slack.
	for name, peak := range map[string]int64{"upload": peakUp, "download": peakDown} {
		if peak-idle > 48<<20 {
			t.Errorf("%s: gateway RSS grew by %.1f MiB (idle %.1f MiB): the body is not streamed", name, mib(peak-idle), mib(idle))
		}
	}

	// The forwarded requests have their metrics.
	if v, ok := metric(t, gw, `maas_gateway_forwarded_bytes_total{direction="in"}`); !ok || v < size {
		t.Errorf("forwarded bytes in = %v (%v), want ≥ %d", v, ok, size)
	}
	if v, ok := metric(t, gw, `maas_gateway_forwarded_requests_total{route="/v1/files",status="200"}`); !ok || v < 3 {
		t.Errorf("forwarded /v1/files 200 = %v (%v), want ≥ 3", v, ok)
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// Forwarded bodies have their limits: MAAS_FILES_MAX_BYTES for an upload (Content-Length
// or chunked), MAAS_MAX_BODY_BYTES for the rest; 413 in OpenAI's shape, read by the client.
func TestForwardBodyLimits(t *testing.T) {
	e := newEnv(t, false)
	_, gw := e.gateway("MAAS_MAX_BODY_BYTES=1048576", "MAAS_FILES_MAX_BYTES=2097152")
	key := e.key(gw, nil)

	for _, chunked := range []bool{false, true} {
		st, b, _ := upload(t, gw, key, 4<<20, chunked)
		if st != 413 || !strings.Contains(string(b), "MAAS_FILES_MAX_BYTES") || !strings.Contains(string(b), `"type":"invalid_request_error"`) {
			t.Errorf("chunked=%v: 4 MiB upload over a 2 MiB limit: %d %s", chunked, st, b)
		}
	}
	// A file within the limit passes (the body is over MAAS_MAX_BODY_BYTES).
	if st, b, _ := upload(t, gw, key, 1536<<10, false); st != 200 {
		t.Errorf("1.5 MiB upload: %d %s", st, b)
	}
	// Any other forwarded body: MAAS_MAX_BODY_BYTES.
	big := `{"model":"m","training_file":"` + strings.Repeat("x", 2<<20) + `"}`
	st, _, b := post(t, gw+"/v1/fine_tuning/jobs", key, big)
	if st != 413 || !strings.Contains(string(b), "1048576") {
		t.Errorf("2 MiB fine-tuning request: %d %s", st, b)
	}
	// Chunked, past the limit while it is sent.
	req, _ := http.NewRequest("POST", gw+"/v1/fine_tuning/jobs", io.MultiReader(strings.NewReader(big)))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked 2 MiB fine-tuning request: %d %s", resp.StatusCode, rb)
	}
	// An inference body past MAAS_MAX_BODY_BYTES, chunked: 413 as with a Content-Length.
	chat := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 2<<20) + `"}]}`
	req, _ = http.NewRequest("POST", gw+"/v1/chat/completions", io.MultiReader(strings.NewReader(chat)))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked 2 MiB chat request: %d %s", resp.StatusCode, rb)
	}
	if st, _, b := post(t, gw+"/v1/chat/completions", key, chat); st != 413 {
		t.Errorf("2 MiB chat request: %d %s", st, b)
	}
}
