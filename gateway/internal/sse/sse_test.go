package sse

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReader(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string // data of each event; "#raw" marks an event without data
		wantErr error
	}{
		{"openai", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []string{`{"a":1}`, "[DONE]"}, io.EOF},
		{"crlf", "data: x\r\n\r\ndata: y\r\n\r\n", []string{"x", "y"}, io.EOF},
		{"no space", "data:x\n\n", []string{"x"}, io.EOF},
		{"multi-line data", "data: a\ndata: b\n\n", []string{"a\nb"}, io.EOF},
		{"comment and event", ": keep-alive\n\nevent: message\ndata: z\n\n", []string{"#raw", "z"}, io.EOF},
		{"leading blank lines", "\n\ndata: q\n\n", []string{"q"}, io.EOF},
		{"cut off", "data: {\"a\":1}\n\ndata: {\"b\"", []string{`{"a":1}`}, io.ErrUnexpectedEOF},
		{"empty", "", nil, io.EOF},
		{"long line", "data: " + strings.Repeat("x", 40000) + "\n\n", []string{strings.Repeat("x", 40000)}, io.EOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tc.in), 1<<20)
			var got []string
			var err error
			for {
				var raw, data []byte
				raw, data, err = r.Next()
				if err != nil {
					break
				}
				if data == nil {
					if len(raw) == 0 {
						t.Fatal("event without raw bytes")
					}
					got = append(got, "#raw")
					continue
				}
				got = append(got, string(data))
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReaderLimit(t *testing.T) {
	r := NewReader(strings.NewReader("data: "+strings.Repeat("x", 100)+"\n\n"), 50)
	if _, _, err := r.Next(); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("err = %v, want ErrEventTooLarge", err)
	}
}

func TestAppendData(t *testing.T) {
	if got := string(AppendData(nil, []byte(`{"a":1}`))); got != "data: {\"a\":1}\n\n" {
		t.Errorf("got %q", got)
	}
	if got := string(AppendData([]byte("x"), []byte("a\nb"))); got != "xdata: a\ndata: b\n\n" {
		t.Errorf("got %q", got)
	}
}

func TestReady(t *testing.T) {
	tests := []struct {
		name string
		in   string // all of it is buffered after the first event was read
		want bool
	}{
		{"nothing buffered", "", false},
		{"whole event", "data: b\n\n", true},
		{"whole event, CRLF", "data: b\r\n\r\n", true},
		{"partial event", "data: b\n", false},
		{"partial line", "data: {\"x\"", false},
		{"blank lines only", "\n\n\n", false},
		{"blank lines, then a partial event", "\n\ndata: b\n", false},
		{"blank lines, then a whole event", "\r\n\ndata: b\n\n", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// One read fills the buffer with the first event and everything after it.
			r := NewReader(strings.NewReader("data: a\n\n"+tc.in), 1<<20)
			if _, data, err := r.Next(); err != nil || string(data) != "a" {
				t.Fatalf("first event %q, %v", data, err)
			}
			if got := r.Ready(); got != tc.want {
				t.Errorf("Ready() = %v, want %v", got, tc.want)
			}
		})
	}
}
