package upstream

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

func TestStreamConnBoundsSilenceBetweenReads(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	const slide = 300 * time.Millisecond
	c := &streamConn{Conn: a, slide: slide}
	go func() {
		// Each gap is under the slide, the total is over it: only a sliding deadline passes.
		for range 3 {
			time.Sleep(slide / 2)
			if _, err := b.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1)
	for i := range 3 {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("read %d after a gap of slide/2: %v", i, err)
		}
	}
	start := time.Now()
	_, err := c.Read(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent read: %v, want a deadline error", err)
	}
	if d := time.Since(start); d < slide*15/16-10*time.Millisecond || d > slide+200*time.Millisecond {
		t.Errorf("silent read failed after %v, want about %v", d, slide)
	}
	if err := c.SetReadDeadline(time.Now()); err != nil { // replaced by the sliding one
		t.Fatal(err)
	}
}
