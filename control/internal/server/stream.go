package server

import (
	"context"
	"io"
)

// StreamBody answers 200 with the body open returns, of n bytes, streamed. fasthttp writes
// the body after the handler returns, when Ctx is already cancelled, so open gets a context
// of its own: bounded by the route's timeout and ended when fasthttp closes the body. A
// reader opened with Ctx (an S3 object, say) would stop at once, cutting the body short of
// its Content-Length.
func (c *Call) StreamBody(contentType string, open func(ctx context.Context) (io.ReadCloser, int64, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	rc, n, err := open(ctx)
	if err != nil {
		cancel()
		return err
	}
	c.RC.Response.Header.SetContentType(contentType)
	c.RC.SetStatusCode(200)
	c.RC.SetBodyStream(&cancelOnClose{ReadCloser: rc, cancel: cancel}, int(n)) // fasthttp closes it
	return nil
}

// cancelOnClose ends a context when its reader is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
