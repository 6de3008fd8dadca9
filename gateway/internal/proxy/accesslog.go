package proxy

import (
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessLog writes one line per request in the same shape as the process's slog handler
// (logfmt text, or JSON), formatted by hand: slog's generic handler costs several times
// more per line, and this line is written for every request. Safe for concurrent use when
// w is (each line is a single Write).
type accessLog struct {
	w    io.Writer
	json bool
	bufs sync.Pool
}

func newAccessLog(w io.Writer, json bool) *accessLog {
	a := &accessLog{w: w, json: json}
	a.bufs.New = func() any { b := make([]byte, 0, 512); return &b }
	return a
}

type accessFields struct {
	requestID, endpoint, model, backend string
	clientRequestID                     string // the client's X-Request-Id; logged only when set
	status                              int
	duration                            time.Duration
	stream                              bool
	prompt, completion                  int64
	attempts                            int
	userID, keyID                       int64
}

func (a *accessLog) write(now time.Time, f *accessFields) {
	bp := a.bufs.Get().(*[]byte)
	b := (*bp)[:0]
	if a.json {
		b = append(b, `{"time":"`...)
		b = now.AppendFormat(b, "2006-01-02T15:04:05.000000000Z07:00")
		b = append(b, `","level":"INFO","msg":"request","component":"gateway"`...)
		b = jsonStr(b, "request_id", f.requestID)
		if f.clientRequestID != "" {
			b = jsonStr(b, "client_request_id", f.clientRequestID)
		}
		b = jsonStr(b, "endpoint", f.endpoint)
		b = jsonStr(b, "model", f.model)
		b = jsonStr(b, "backend", f.backend)
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(f.status), 10)
		b = append(b, `,"duration_ms":`...)
		b = strconv.AppendFloat(b, float64(f.duration.Microseconds())/1000, 'f', -1, 64)
		b = append(b, `,"stream":`...)
		b = strconv.AppendBool(b, f.stream)
		b = append(b, `,"prompt_tokens":`...)
		b = strconv.AppendInt(b, f.prompt, 10)
		b = append(b, `,"completion_tokens":`...)
		b = strconv.AppendInt(b, f.completion, 10)
		b = append(b, `,"attempts":`...)
		b = strconv.AppendInt(b, int64(f.attempts), 10)
		b = append(b, `,"user_id":`...)
		b = strconv.AppendInt(b, f.userID, 10)
		b = append(b, `,"key_id":`...)
		b = strconv.AppendInt(b, f.keyID, 10)
		b = append(b, "}\n"...)
	} else {
		b = append(b, "time="...)
		b = now.AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
		b = append(b, " level=INFO msg=request component=gateway"...)
		b = textStr(b, "request_id", f.requestID)
		if f.clientRequestID != "" {
			b = textStr(b, "client_request_id", f.clientRequestID)
		}
		b = textStr(b, "endpoint", f.endpoint)
		b = textStr(b, "model", f.model)
		b = textStr(b, "backend", f.backend)
		b = append(b, " status="...)
		b = strconv.AppendInt(b, int64(f.status), 10)
		b = append(b, " duration_ms="...)
		b = strconv.AppendFloat(b, float64(f.duration.Microseconds())/1000, 'f', -1, 64)
		b = append(b, " stream="...)
		b = strconv.AppendBool(b, f.stream)
		b = append(b, " prompt_tokens="...)
		b = strconv.AppendInt(b, f.prompt, 10)
		b = append(b, " completion_tokens="...)
		b = strconv.AppendInt(b, f.completion, 10)
		b = append(b, " attempts="...)
		b = strconv.AppendInt(b, int64(f.attempts), 10)
		b = append(b, " user_id="...)
		b = strconv.AppendInt(b, f.userID, 10)
		b = append(b, " key_id="...)
		b = strconv.AppendInt(b, f.keyID, 10)
		b = append(b, '\n')
	}
	_, _ = a.w.Write(b)
	*bp = b
	a.bufs.Put(bp)
}

// textStr appends ` key=value`, quoting the value as slog's text handler does when needed.
func textStr(b []byte, key, v string) []byte {
	b = append(b, ' ')
	b = append(b, key...)
	b = append(b, '=')
	if !needsQuote(v) {
		return append(b, v...)
	}
	return strconv.AppendQuote(b, v)
}

func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == '=' || c == '"' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// jsonStr appends `,"key":"value"` with JSON escaping.
func jsonStr(b []byte, key, v string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':', '"')
	const hex = "0123456789abcdef"
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
