package sim

import (
	"bytes"
	"net"
	"sync"
	"testing"
)

// writeLog records every Write made on the connections a listener accepts.
type writeLog struct {
	net.Listener
	mu     sync.Mutex
	writes [][]byte
}

func (l *writeLog) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &loggedConn{Conn: c, log: l}, nil
}

func (l *writeLog) take() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.writes
	l.writes = nil
	return w
}

type loggedConn struct {
	net.Conn
	log *writeLog
}

func (c *loggedConn) Write(p []byte) (int, error) {
	c.log.mu.Lock()
	c.log.writes = append(c.log.writes, append([]byte(nil), p...))
	c.log.mu.Unlock()
	return c.Conn.Write(p)
}

// At zero latency a stream is one write unless MAAS_SIM_FLUSH_EVERY_TOKEN is on; with it,
// every event is a write of its own.
func TestFlushEveryToken(t *testing.T) {
	const body = `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}`
	for _, flush := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[flush], func(t *testing.T) {
			var log *writeLog
			s := startWith(t, func(o *Options) { o.FlushEveryToken = flush }, func(ln net.Listener) net.Listener {
				log = &writeLog{Listener: ln}
				return log
			})
			resp, b := post(t, s, "/v1/chat/completions", body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			events := len(readStream(t, b)) + 1 // with [DONE]
			writes := log.take()
			withEvent := 0
			for i, w := range writes {
				switch n := bytes.Count(w, []byte("data: ")); {
				case n == 1:
					withEvent++
				case n > 1 && flush:
					t.Errorf("write %d carries %d events:\n%s", i, n, w)
				}
			}
			if flush && withEvent != events {
				t.Errorf("%d events in %d writes (%d carrying an event), want one write per event", events, len(writes), withEvent)
			}
			if !flush && len(writes) != 1 {
				t.Errorf("%d writes, want the whole stream in one", len(writes))
			}
		})
	}
}
