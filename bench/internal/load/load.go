// Package load is the benchmark's load generator: keep-alive HTTP/1.1 clients (fasthttp)
// driving closed-loop and open-loop runs, streamed or not, and a holder of many idle streams.
package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Target is what every request of a run sends.
type Target struct {
	Addr   string // host:port
	Path   string // e.g. /v1/chat/completions
	Body   []byte
	Stream bool     // read the response as SSE, measure time to first token, expect [DONE]
	Tokens []string // bearer tokens, used round-robin; empty sends none
	Header [][2]string
}

// Result is what a run measured.
type Result struct {
	Requests   int64
	Errors     int64
	Elapsed    time.Duration
	Latencies  []time.Duration // sorted
	TTFTs      []time.Duration // sorted; streamed runs only
	FirstError string
}

// RPS is completed requests (errors included) per second.
func (r *Result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Percentile returns the p-th percentile (0..100) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

type recorder struct {
	lat, ttft []time.Duration
	reqs      int64
	errs      int64
	firstErr  string
}

func (r *recorder) record(lat, ttft time.Duration, err error) {
	r.reqs++
	if err != nil {
		r.errs++
		if r.firstErr == "" {
			r.firstErr = err.Error()
		}
		return
	}
	r.lat = append(r.lat, lat)
	if ttft > 0 {
		r.ttft = append(r.ttft, ttft)
	}
}

func merge(recs []*recorder, elapsed time.Duration) Result {
	res := Result{Elapsed: elapsed}
	for _, r := range recs {
		res.Requests += r.reqs
		res.Errors += r.errs
		res.Latencies = append(res.Latencies, r.lat...)
		res.TTFTs = append(res.TTFTs, r.ttft...)
		if res.FirstError == "" {
			res.FirstError = r.firstErr
		}
	}
	slices.Sort(res.Latencies)
	slices.Sort(res.TTFTs)
	return res
}

// client sends one Target's requests.
type client struct {
	t    Target
	hc   *fasthttp.HostClient
	next atomic.Uint64
	auth [][]byte
}

func newClient(t Target, conns int) *client {
	c := &client{t: t, hc: &fasthttp.HostClient{
		Addr:                t.Addr,
		MaxConns:            conns,
		MaxConnWaitTimeout:  time.Minute,
		ReadTimeout:         2 * time.Minute,
		WriteTimeout:        time.Minute,
		StreamResponseBody:  t.Stream,
		MaxIdleConnDuration: time.Minute,
	}}
	for _, tok := range t.Tokens {
		c.auth = append(c.auth, []byte("Bearer "+tok))
	}
	return c
}

var doneMarker = []byte("data: [DONE]")

// do sends one request and returns its latency and time to first byte of the body.
func (c *client) do(buf []byte) (lat, ttft time.Duration, err error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(c.t.Path)
	req.Header.SetHost(c.t.Addr)
	req.Header.SetContentType("application/json")
	if len(c.auth) > 0 {
		req.Header.SetBytesV("Authorization", c.auth[c.next.Add(1)%uint64(len(c.auth))])
	}
	for _, h := range c.t.Header {
		req.Header.Set(h[0], h[1])
	}
	req.SetBodyRaw(c.t.Body)
	start := time.Now()
	if err := c.hc.Do(req, resp); err != nil {
		return 0, 0, err
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		body := resp.Body()
		if bs := resp.BodyStream(); c.t.Stream && bs != nil { // nil: a short body read whole
			body, _ = io.ReadAll(io.LimitReader(bs, 512))
		}
		return 0, 0, fmt.Errorf("status %d: %.200s", resp.StatusCode(), body)
	}
	if !c.t.Stream {
		if len(resp.Body()) == 0 {
			return 0, 0, fmt.Errorf("empty body")
		}
		return time.Since(start), 0, nil
	}
	stream := resp.BodyStream()
	var tail []byte
	for {
		n, rerr := stream.Read(buf)
		if n > 0 {
			if ttft == 0 {
				ttft = time.Since(start)
			}
			tail = append(tail, buf[:n]...)
			if len(tail) > 64 {
				tail = tail[len(tail)-64:]
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, 0, fmt.Errorf("read stream: %w", rerr)
		}
	}
	_ = resp.CloseBodyStream()
	if !bytes.Contains(tail, doneMarker) {
		return 0, 0, fmt.Errorf("stream ended without [DONE]")
	}
	return time.Since(start), ttft, nil
}

// ClosedLoop runs conc clients, each sending its next request when the previous one ends,
// for d.
func ClosedLoop(ctx context.Context, t Target, conc int, d time.Duration) Result {
	c := newClient(t, conc)
	recs := make([]*recorder, conc)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conc {
		recs[i] = &recorder{}
		wg.Go(func() {
			buf := make([]byte, 16<<10)
			r := recs[i]
			for ctx.Err() == nil {
				lat, ttft, err := c.do(buf)
				r.record(lat, ttft, err)
			}
		})
	}
	wg.Wait()
	c.hc.CloseIdleConnections() // a run's connections must not hold file descriptors into the next
	return merge(recs, time.Since(start))
}

// OpenLoop sends requests at a fixed rate for d, whatever the responses do. Latency is
// measured from each request's scheduled send time, so a stall shows up in every request it
// delays (no coordinated omission). At most maxInFlight requests run at once; beyond that,
// requests wait (and their wait counts).
func OpenLoop(ctx context.Context, t Target, rate float64, d time.Duration, maxInFlight int) Result {
	c := newClient(t, maxInFlight)
	interval := time.Duration(float64(time.Second) / rate)
	total := int(d / interval)
	sched := make(chan time.Time, total)
	recs := make([]*recorder, maxInFlight)
	var wg sync.WaitGroup
	for i := range maxInFlight {
		recs[i] = &recorder{}
		wg.Go(func() {
			buf := make([]byte, 16<<10)
			r := recs[i]
			for at := range sched {
				began := time.Now()
				_, ttft, err := c.do(buf)
				if ttft > 0 {
					ttft += began.Sub(at) // from the scheduled send time, like the latency
				}
				r.record(time.Since(at), ttft, err)
			}
		})
	}
	start := time.Now()
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			select {
			case <-time.After(w):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		sched <- at
	}
	close(sched)
	wg.Wait()
	c.hc.CloseIdleConnections()
	return merge(recs, time.Since(start))
}

// Streams holds n concurrent streams open on raw connections. Open connects them all and
// waits until each has received its first body bytes; Close drops them.
type Streams struct {
	conns   []net.Conn
	Opened  int
	Failed  int
	FirstEr string
}

// OpenStreams starts n streaming requests, at most 64 connection attempts at a time: a
// faster burst overflows the kernel's SYN backlog of the process accepting (the simulator
// behind a proxy), and a dropped SYN is retried only after a second.
func OpenStreams(ctx context.Context, t Target, n int) *Streams {
	s := &Streams{conns: make([]net.Conn, n)}
	var mu sync.Mutex
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conn, err := openStream(ctx, t, i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.Failed++
				if s.FirstEr == "" {
					s.FirstEr = err.Error()
				}
				return
			}
			s.conns[i] = conn
			s.Opened++
		})
	}
	wg.Wait()
	return s
}

func openStream(ctx context.Context, t Target, i int) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", t.Path, t.Addr, len(t.Body))
	if len(t.Tokens) > 0 {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", t.Tokens[i%len(t.Tokens)])
	}
	b.WriteString("\r\n")
	b.Write(t.Body)
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := conn.Write(b.Bytes()); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	status, err := br.ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, err
	}
	if !bytes.Contains([]byte(status), []byte(" 200 ")) {
		conn.Close()
		return nil, fmt.Errorf("stream status %q", bytes.TrimSpace([]byte(status)))
	}
	// Headers, then the first chunk of the body.
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, err
		}
		if line == "\r\n" {
			break
		}
	}
	if _, err := br.ReadByte(); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// Close drops every held stream.
func (s *Streams) Close() {
	for _, c := range s.conns {
		if c != nil {
			c.Close()
		}
	}
}

// Chunks sends one streamed request and returns how many HTTP chunks its body came in: a
// backend that flushes every event sends one chunk per event, one that writes the stream
// at once sends a single chunk, or a body with a Content-Length (reported as 1).
func Chunks(ctx context.Context, t Target) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n", t.Path, t.Addr, len(t.Body))
	if len(t.Tokens) > 0 {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", t.Tokens[0])
	}
	b.WriteString("\r\n")
	b.Write(t.Body)
	if _, err := conn.Write(b.Bytes()); err != nil {
		return 0, err
	}
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if !strings.Contains(status, " 200 ") {
		return 0, fmt.Errorf("stream status %q", strings.TrimSpace(status))
	}
	chunked := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if line == "\r\n" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		if strings.EqualFold(k, "Transfer-Encoding") && strings.Contains(strings.ToLower(v), "chunked") {
			chunked = true
		}
	}
	if !chunked {
		return 1, nil
	}
	for n := 0; ; n++ {
		line, err := br.ReadString('\n')
		if err != nil {
			return n, err
		}
		size, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(line, ";", 2)[0]), 16, 64)
		if err != nil {
			return n, fmt.Errorf("chunk size %q: %w", line, err)
		}
		if size == 0 {
			return n, nil
		}
		if _, err := br.Discard(int(size) + 2); err != nil {
			return n, err
		}
	}
}
