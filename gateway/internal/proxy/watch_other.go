//go:build !linux

package proxy

import "net"

// watchable: the client watch peeks at sockets with Linux's recv flags only.
func watchable(net.Conn) bool { return false }

func waitClosed(net.Conn) bool { return false }
