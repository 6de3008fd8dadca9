package peerclose

import (
	"net"
	"syscall"
)

// Watchable reports whether WaitClosed can watch conn (a connection with a file
// descriptor, such as a *net.TCPConn or a wrapper that keeps syscall.Conn).
func Watchable(conn net.Conn) bool {
	_, ok := conn.(syscall.Conn)
	return ok
}

// WaitClosed blocks until conn is readable, then peeks at it without consuming (Linux
// MSG_PEEK): true when the peer closed or reset the connection, false for pending bytes
// (left for the connection's reader) or when the wait was interrupted by a read deadline.
func WaitClosed(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var buf [1]byte
	gone := false
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EINTR:
			return false // nothing yet: wait for readability in the runtime poller
		case err != nil || n == 0:
			gone = true // reset, or end of file
		}
		return true
	})
	return err == nil && gone
}
