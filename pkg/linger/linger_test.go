package linger_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/linger"
)

// serve starts a fasthttp server that refuses bodies over 1 KiB, as the gateway and
// control do, marking the connection when mark is set.
func serve(t *testing.T, mark bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{
		Handler:            func(rc *fasthttp.RequestCtx) { rc.SetStatusCode(200) },
		MaxRequestBodySize: 1 << 10,
		Logger:             quiet{},
		ErrorHandler: func(rc *fasthttp.RequestCtx, err error) {
			if mark {
				linger.Mark(rc.Conn())
			}
			rc.SetStatusCode(fasthttp.StatusRequestEntityTooLarge)
			rc.SetBodyString("too large")
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(linger.Listen(ln)) }()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return "http://" + ln.Addr().String()
}

type quiet struct{}

func (quiet) Printf(string, ...any) {}

// post sends a body far larger than the socket buffers, so that the client is still
// writing when the server answers.
func post(url string) (int, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Post(url, "application/json", bytes.NewReader(make([]byte, 8<<20)))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func TestMarkedConnectionDeliversTheAnswer(t *testing.T) {
	url := serve(t, true)
	for i := range 30 {
		status, err := post(url)
		if err != nil {
			t.Fatalf("request %d: %v (the refusal was lost)", i, err)
		}
		if status != 413 {
			t.Fatalf("request %d: status %d, want 413", i, status)
		}
	}
}

// TestUnmarkedConnectionResets shows what Mark prevents: without it, closing on unread
// bytes resets the connection and the client loses the answer (at least sometimes).
func TestUnmarkedConnectionResets(t *testing.T) {
	url := serve(t, false)
	for range 30 {
		if _, err := post(url); errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
			return
		}
	}
	t.Fatal("30 oversized requests all got their answer without lingering: the test no longer shows the reset it guards against")
}

func TestAcceptedConnectionKeepsSyscallConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := linger.Listen(ln)
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(syscall.Conn); !ok {
		t.Fatal("accepted connection lost syscall.Conn (the gateway's client watch peeks through it)")
	}
}
