// Package linger lets a server answer a request it refuses before reading its body
// (413, 431, 408) without the answer being lost.
//
// A server that closes a connection while the client is still sending makes the kernel
// reset it: the reset can reach the client before it has read the answer, and the client
// then reports "connection reset by peer" instead of the 413 the server wrote. A connection
// marked with Mark does what HTTP/1.1 servers call a lingering close instead: on Close it
// shuts down its sending side (the client sees the answer, then end of file), reads and
// discards what the client still sends for a bounded time and number of bytes, and only
// then closes. Unmarked connections close at once, as before, so the hot path pays nothing.
package linger

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// Bounds of one lingering close: the client has this long, and may send this many more
// bytes, before the connection is closed regardless.
const (
	drainFor   = 2 * time.Second
	drainBytes = 64 << 20
)

// Listen wraps ln so that the TCP connections it accepts can be marked with Mark.
func Listen(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return &Conn{TCPConn: tc}, nil
	}
	return c, nil
}

// Conn is an accepted TCP connection that lingers on Close once marked. It embeds the
// *net.TCPConn, so syscall.Conn and the TCP methods stay available.
type Conn struct {
	*net.TCPConn
	marked atomic.Bool
}

// Mark asks c to linger when it is closed; it does nothing for a connection Listen did not
// wrap. Call it when answering a request whose body will not be read.
func Mark(c net.Conn) {
	if lc, ok := c.(*Conn); ok {
		lc.marked.Store(true)
	}
}

// Close closes at once when c is unmarked; otherwise it shuts down the sending side and
// returns, leaving a goroutine to drain and close the connection within drainFor.
func (c *Conn) Close() error {
	if !c.marked.Load() {
		return c.TCPConn.Close()
	}
	if err := c.TCPConn.CloseWrite(); err != nil {
		return c.TCPConn.Close()
	}
	go func() {
		_ = c.TCPConn.SetReadDeadline(time.Now().Add(drainFor))
		_, _ = io.CopyN(io.Discard, c.TCPConn, drainBytes)
		_ = c.TCPConn.Close()
	}()
	return nil
}
