package server

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// bufferedOut batches access-log lines into few write system calls: one line per request
// otherwise costs a syscall each. Lines reach the output within flushEvery, and at Close.
// Safe for concurrent use.
type bufferedOut struct {
	mu   sync.Mutex
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

func newBufferedOut(out io.Writer, flushEvery time.Duration) *bufferedOut {
	b := &bufferedOut{w: bufio.NewWriterSize(out, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				b.flush()
			}
		}
	}()
	return b
}

func (b *bufferedOut) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

func (b *bufferedOut) flush() {
	b.mu.Lock()
	_ = b.w.Flush()
	b.mu.Unlock()
}

// Close stops the flusher and writes what is buffered.
func (b *bufferedOut) Close() {
	close(b.stop)
	<-b.done
	b.flush()
}
