package peerclose

import (
	"net"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestWaitClosed(t *testing.T) {
	t.Run("peer closes", func(t *testing.T) {
		client, server := pair(t)
		done := make(chan bool, 1)
		go func() { done <- WaitClosed(server) }()
		client.Close()
		if !<-done {
			t.Fatal("a closed peer was not noticed")
		}
	})
	t.Run("peer sends bytes", func(t *testing.T) {
		client, server := pair(t)
		if _, err := client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if WaitClosed(server) {
			t.Fatal("pending bytes taken for a close")
		}
		b := make([]byte, 1)
		if _, err := server.Read(b); err != nil || b[0] != 'x' {
			t.Fatalf("the peeked byte was consumed: %q, %v", b, err)
		}
	})
	t.Run("read deadline ends the wait", func(t *testing.T) {
		_, server := pair(t)
		done := make(chan bool, 1)
		go func() { done <- WaitClosed(server) }()
		if err := server.SetReadDeadline(time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		if <-done {
			t.Fatal("an interrupted wait reported a close")
		}
	})
	if !Watchable(&net.TCPConn{}) {
		t.Error("a TCP connection is not watchable")
	}
}
