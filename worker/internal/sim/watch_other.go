//go:build !linux

package sim

import "net"

func watchable(net.Conn) bool { return false }

func waitClosed(net.Conn) bool { return false }
