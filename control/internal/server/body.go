package server

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
)

// The server streams every request body (fasthttp's StreamRequestBody): nothing beyond a
// small prefetch is read before the handler runs. Each route then reads its body itself,
// bounded by its own limit: an ordinary route reads it whole into memory before the caller
// is authenticated (up to MaxBodySize, 413 beyond), a streaming route hands it to its
// handler through BodyStream (RouteOptions.Stream).

func tooLarge(limit int64, msg string) *apierr.Error {
	if msg != "" {
		return apierr.New(apierr.TooLarge, "%s", msg)
	}
	return apierr.New(apierr.TooLarge, "request body is larger than %d bytes", limit)
}

// readBody reads an ordinary route's body into memory, or prepares a streaming route's.
func (c *Call) readBody(stream bool) error {
	req := &c.RC.Request
	if cl := req.Header.ContentLength(); cl > 0 && int64(cl) > c.maxBody {
		c.stream = &limitedBody{limit: c.maxBody, msg: c.tooLarge} // unread: the connection closes
		return tooLarge(c.maxBody, c.tooLarge)
	}
	body := c.RC.RequestBodyStream()
	if body == nil {
		return nil
	}
	c.stream = &limitedBody{r: body, limit: c.maxBody, msg: c.tooLarge}
	if stream {
		return nil
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(c.stream); err != nil {
		return bodyError(err)
	}
	req.SetBody(buf.Bytes())
	return nil
}

// bodyError maps a failure to read the request body to its answer.
func bodyError(err error) error {
	var e *apierr.Error
	if errors.As(err, &e) {
		return e
	}
	return &apierr.Error{Kind: apierr.InvalidRequest, Message: "could not read the request body", Err: err}
}

// BodyStream is a streaming route's request body (RouteOptions.Stream). Reading past the
// route's MaxBody fails with a 413 *apierr.Error. It is nil when the request has no body.
func (c *Call) BodyStream() io.Reader {
	if c.stream == nil || c.stream.r == nil {
		return nil
	}
	return c.stream
}

// unreadBody reports whether part of the request body may still be on the wire.
func (c *Call) unreadBody() bool { return c.stream != nil && !c.stream.eof }

// limitedBody reads a request body up to limit bytes; one byte more is a 413.
type limitedBody struct {
	r     io.Reader
	n     int64
	limit int64
	msg   string // of the 413
	eof   bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.eof {
		return 0, io.EOF
	}
	if l.r == nil {
		return 0, tooLarge(l.limit, l.msg)
	}
	if rest := l.limit + 1 - l.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.limit {
		return n - int(l.n-l.limit), tooLarge(l.limit, l.msg)
	}
	if err == io.EOF {
		l.eof = true
	}
	return n, err
}

// wideRoute is a route with its own read and write timeouts.
type wideRoute struct {
	method  string
	segs    []string
	timeout time.Duration
}

// match reports whether the request path's segments fit the route's pattern, where a
// {name} segment stands for any one non-empty segment.
func (w wideRoute) match(method, path []byte) bool {
	if string(method) != w.method {
		return false
	}
	p, _, _ := strings.Cut(string(path), "?")
	for i, seg := range w.segs {
		next, rest, found := strings.Cut(p, "/")
		if found != (i < len(w.segs)-1) {
			return false
		}
		isParam := strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}")
		if isParam && next == "" || !isParam && next != seg {
			return false
		}
		p = rest
	}
	return true
}

// headerReceived gives a wide route its own read and write timeouts before its body is read.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	for _, w := range s.wide {
		if w.match(h.Method(), h.RequestURI()) {
			return fasthttp.RequestConfig{ReadTimeout: w.timeout, WriteTimeout: w.timeout}
		}
	}
	return fasthttp.RequestConfig{}
}
