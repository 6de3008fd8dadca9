package sim

import (
	"net"
	"syscall"
)

// watchable reports whether waitClosed can watch conn.
func watchable(conn net.Conn) bool {
	_, ok := conn.(syscall.Conn)
	return ok
}

// waitClosed blocks until conn is readable, then peeks at it without consuming: true when
// the peer closed or reset the connection, false for pending bytes or when the wait was
// interrupted (read deadline).
func waitClosed(conn net.Conn) bool {
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
