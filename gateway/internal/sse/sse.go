// Package sse reads Server-Sent Events from an upstream body and frames them for the
// client. It works on bytes: an event's data is handed out without copying and is valid
// until the next call.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// ErrEventTooLarge reports an event larger than the reader's limit.
var ErrEventTooLarge = errors.New("sse: event too large")

// Done is the data of OpenAI's final event.
var Done = []byte("[DONE]")

// Reader splits a stream into events. Not safe for concurrent use.
type Reader struct {
	br    *bufio.Reader
	raw   []byte
	data  []byte
	limit int
}

// NewReader returns a Reader over r whose events may be up to limit bytes.
func NewReader(r io.Reader, limit int) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 4<<10), limit: limit}
}

// Reset makes the reader read from r, keeping its buffers.
func (r *Reader) Reset(src io.Reader) {
	r.br.Reset(src)
	r.raw, r.data = r.raw[:0], r.data[:0]
}

// Next returns the next event: raw is the event as received (all its lines) and data the
// value of its data fields joined by "\n" (nil when it has none, e.g. a comment). Both are
// valid until the next call. At the end of the stream it returns io.EOF; an event cut off
// by the end of the stream returns io.ErrUnexpectedEOF.
func (r *Reader) Next() (raw, data []byte, err error) {
	r.raw, r.data = r.raw[:0], r.data[:0]
	hasData := false
	for {
		line, err := r.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long line: gather it whole.
			buf := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				if len(buf) > r.limit {
					return nil, nil, ErrEventTooLarge
				}
				line, err = r.br.ReadSlice('\n')
				buf = append(buf, line...)
			}
			line = buf
		}
		if err != nil {
			if err == io.EOF {
				if len(r.raw) == 0 && len(bytes.TrimSpace(line)) == 0 {
					return nil, nil, io.EOF
				}
				return nil, nil, io.ErrUnexpectedEOF
			}
			return nil, nil, err
		}
		r.raw = append(r.raw, line...)
		if len(r.raw) > r.limit {
			return nil, nil, ErrEventTooLarge
		}
		body := trimEOL(line)
		if len(body) == 0 {
			if len(r.raw) == len(line) { // blank line before any field: skip
				r.raw = r.raw[:0]
				continue
			}
			if !hasData {
				return r.raw, nil, nil
			}
			return r.raw, r.data, nil
		}
		if v, ok := field(body, "data"); ok {
			if hasData {
				r.data = append(r.data, '\n')
			}
			r.data = append(r.data, v...)
			hasData = true
		}
	}
}

// Ready reports whether a whole event is already buffered, so that Next returns it
// without waiting for the source.
func (r *Reader) Ready() bool {
	n := r.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := r.br.Peek(n)
	i := 0
	for i < len(b) && (b[i] == '\n' || b[i] == '\r') { // blank lines before an event are skipped
		i++
	}
	b = b[i:]
	return bytes.Contains(b, lfLF) || bytes.Contains(b, lfCRLF)
}

var lfLF, lfCRLF = []byte("\n\n"), []byte("\n\r\n")

func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

// field returns the value of line if it is the named field ("data: x" or "data:x").
func field(line []byte, name string) ([]byte, bool) {
	if len(line) < len(name)+1 || string(line[:len(name)]) != name || line[len(name)] != ':' {
		if string(line) == name {
			return nil, true
		}
		return nil, false
	}
	v := line[len(name)+1:]
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return v, true
}

// AppendData appends data framed as one SSE event ("data: …\n\n") to dst.
func AppendData(dst, data []byte) []byte {
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		dst = append(dst, "data: "...)
		dst = append(dst, data[:i]...)
		dst = append(dst, '\n')
		data = data[i+1:]
	}
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	return append(dst, '\n', '\n')
}
