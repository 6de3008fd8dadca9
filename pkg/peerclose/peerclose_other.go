//go:build !linux

package peerclose

import "net"

// Watchable is false where WaitClosed cannot peek at a connection.
func Watchable(net.Conn) bool { return false }

// WaitClosed returns false at once where it cannot peek at a connection.
func WaitClosed(net.Conn) bool { return false }
