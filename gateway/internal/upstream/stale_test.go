package upstream

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// scripted accepts connections and runs the next script on each: a script gets the
// connection and a reader of it.
func scripted(t *testing.T, scripts ...func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for _, s := range scripts {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go s(c, bufio.NewReader(c))
		}
	}()
	return ln.Addr().String()
}

func readRequest(br *bufio.Reader) bool {
	r, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	buf := make([]byte, r.ContentLength)
	_, err = br.Read(buf)
	return err == nil || r.ContentLength == 0
}

const okAnswer = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 14\r\n\r\ndata: [DONE]\n\n"

// TestStaleStream: a streamed request is stale (sent again on a new connection) only when
// it failed on a connection that carried an earlier exchange, before one byte of its
// answer, and not by a timeout.
func TestStaleStream(t *testing.T) {
	answerThen := func(then func(c net.Conn, br *bufio.Reader)) func(c net.Conn, br *bufio.Reader) {
		return func(c net.Conn, br *bufio.Reader) {
			if readRequest(br) {
				c.Write([]byte(okAnswer))
				then(c, br)
			}
		}
	}
	closeAfterRequest := func(c net.Conn, br *bufio.Reader) {
		if readRequest(br) {
			c.Close()
		}
	}
	for _, tc := range []struct {
		name      string
		script    func(c net.Conn, br *bufio.Reader)
		exchanges int // requests sent; the last one fails
		want      bool
	}{
		{"reused, closed before the answer", answerThen(closeAfterRequest), 2, true},
		{"reused, closed while idle", answerThen(func(c net.Conn, _ *bufio.Reader) { c.Close() }), 2, true},
		{"new connection closed", closeAfterRequest, 1, false},
		{"reused, closed after a byte", answerThen(func(c net.Conn, br *bufio.Reader) {
			if readRequest(br) {
				c.Write([]byte("HTTP/1.1 2"))
				c.Close()
			}
		}), 2, false},
		{"reused, timed out", answerThen(func(c net.Conn, br *bufio.Reader) { readRequest(br) }), 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := scripted(t, tc.script)
			o := DefaultOptions()
			o.StreamReadTimeout = 300 * time.Millisecond
			b := backend("a", 4, 100)
			b.URL = "http://" + addr
			u, err := newUpstream(b, &o, nil)
			if err != nil {
				t.Fatal(err)
			}
			var err2 error
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseResponse(resp)
			for i := range tc.exchanges {
				req := fasthttp.AcquireRequest()
				req.Header.SetMethod("POST")
				req.SetRequestURI(u.URL("/v1/chat/completions"))
				req.SetBodyString(`{"stream":true}`)
				err2 = u.Stream.Do(req, resp)
				fasthttp.ReleaseRequest(req)
				if i < tc.exchanges-1 {
					if err2 != nil {
						t.Fatalf("exchange %d: %v", i, err2)
					}
					if b := resp.Body(); string(b) != "data: [DONE]\n\n" { // read whole: the connection goes back to the pool
						t.Fatalf("exchange %d: body %q", i, b)
					}
					resp.CloseBodyStream()
				}
			}
			if err2 == nil {
				t.Fatal("the last exchange did not fail")
			}
			t.Logf("the last exchange failed: %v", err2)
			if got := StaleStream(resp, err2); got != tc.want {
				t.Errorf("StaleStream after %v = %v, want %v", err2, got, tc.want)
			}
		})
	}
}
