package openai

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Server-sent events as OpenAI streams them: each event is "data: <json>\n\n", and the
// stream ends with "data: [DONE]\n\n".

// DoneData is the payload of the last event of a stream.
const DoneData = "[DONE]"

var (
	dataPrefix = []byte("data: ")
	eventEnd   = []byte("\n\n")
	doneEvent  = []byte("data: [DONE]\n\n")
)

// AppendEvent appends the event "data: <data>\n\n" to dst. data must not contain a newline
// (compact JSON never does).
func AppendEvent(dst, data []byte) []byte {
	dst = append(dst, dataPrefix...)
	dst = append(dst, data...)
	return append(dst, eventEnd...)
}

// AppendDone appends the final "data: [DONE]\n\n" event to dst.
func AppendDone(dst []byte) []byte { return append(dst, doneEvent...) }

// WriteEvent writes one data event.
func WriteEvent(w io.Writer, data []byte) error {
	if bytes.IndexByte(data, '\n') >= 0 {
		return errors.New("sse: event data contains a newline")
	}
	if _, err := w.Write(dataPrefix); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	_, err := w.Write(eventEnd)
	return err
}

// WriteJSON marshals v and writes it as one data event.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("sse: marshal event: %w", err)
	}
	return WriteEvent(w, b)
}

// WriteDone writes the final "data: [DONE]" event.
func WriteDone(w io.Writer) error {
	_, err := w.Write(doneEvent)
	return err
}

// IsDone reports whether an event's data is the end-of-stream marker.
func IsDone(data []byte) bool { return bytes.Equal(bytes.TrimSpace(data), []byte(DoneData)) }

// Event is one server-sent event.
type Event struct {
	Name string // the "event:" field; empty for OpenAI's plain data events
	ID   string
	Data []byte // the "data:" lines joined with "\n"
}

// Reader reads server-sent events (the text/event-stream format): "data:" lines (several
// are joined with "\n"), "event:" and "id:" fields, ":" comment lines ignored, an empty
// line ending an event; CRLF and LF line ends. It is not safe for concurrent use.
type Reader struct {
	br      *bufio.Reader
	maxLine int
	data    []byte
	line    []byte
}

// DefaultMaxLine is the longest line a Reader accepts by default.
const DefaultMaxLine = 4 << 20

// ErrLineTooLong is returned when a line exceeds the Reader's limit.
var ErrLineTooLong = errors.New("sse: line too long")

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 16<<10), maxLine: DefaultMaxLine}
}

// SetMaxLine sets the longest accepted line.
func (r *Reader) SetMaxLine(n int) { r.maxLine = n }

// Next returns the next event. Event.Data stays valid until the next call. At the end of
// the input it returns io.EOF; an event whose last line is complete but which lacks the
// closing blank line is still returned, and a line cut by the end of the input gives
// io.ErrUnexpectedEOF. Next does not stop at [DONE]: callers check IsDone, and treat a
// stream that ends (io.EOF) without it as cut.
func (r *Reader) Next() (Event, error) {
	var ev Event
	r.data = r.data[:0]
	seen, nData := false, 0
	for {
		line, err := r.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) && seen {
				ev.Data = r.data
				return ev, nil
			}
			return Event{}, err
		}
		if len(line) == 0 {
			if !seen {
				continue // blank lines between events
			}
			ev.Data = r.data
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			if nData > 0 {
				r.data = append(r.data, '\n')
			}
			r.data = append(r.data, value...)
			nData++
		case "event":
			ev.Name = string(value)
		case "id":
			ev.ID = string(value)
		default:
			// retry and unknown fields are ignored
		}
		seen = true
	}
}

// readLine returns one line without its line end; the slice is valid until the next call.
func (r *Reader) readLine() ([]byte, error) {
	r.line = r.line[:0]
	for {
		frag, err := r.br.ReadSlice('\n')
		r.line = append(r.line, frag...)
		if len(r.line) > r.maxLine {
			return nil, ErrLineTooLong
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(r.line) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line := r.line[:len(r.line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}
