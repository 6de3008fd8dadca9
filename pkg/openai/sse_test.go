package openai

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWriteEvents(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := WriteEvent(&b, []byte(`{"b":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := WriteDone(&b); err != nil {
		t.Fatal(err)
	}
	want := "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n"
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("stream (-want +got):\n%s", diff)
	}
	if got := string(AppendDone(AppendEvent(nil, []byte("x")))); got != "data: x\n\ndata: [DONE]\n\n" {
		t.Errorf("append: %q", got)
	}
	if err := WriteEvent(&b, []byte("a\nb")); err == nil {
		t.Error("newline in data must be refused")
	}
}

func TestReader(t *testing.T) {
	type ev struct{ Name, ID, Data string }
	tests := []struct {
		name    string
		in      string
		want    []ev
		wantErr error
	}{
		{"openai stream", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []ev{{Data: `{"a":1}`}, {Data: "[DONE]"}}, io.EOF},
		{"crlf and no space", "data:{\"a\":1}\r\n\r\n", []ev{{Data: `{"a":1}`}}, io.EOF},
		{"multi-line data", "data: a\ndata: b\n\n", []ev{{Data: "a\nb"}}, io.EOF},
		{"comments and fields", ": keep-alive\n\nevent: error\nid: 7\ndata: x\n\n", []ev{{Name: "error", ID: "7", Data: "x"}}, io.EOF},
		{"leading blank lines", "\n\n\ndata: x\n\n", []ev{{Data: "x"}}, io.EOF},
		{"last event without blank line", "data: x\n\ndata: [DONE]\n", []ev{{Data: "x"}, {Data: "[DONE]"}}, io.EOF},
		{"cut inside a line", "data: x\n\ndata: {\"a\"", []ev{{Data: "x"}}, io.ErrUnexpectedEOF},
		{"empty data line", "data:\n\n", []ev{{Data: ""}}, io.EOF},
		{"empty input", "", nil, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in))
			var got []ev
			var err error
			for {
				var e Event
				e, err = r.Next()
				if err != nil {
					break
				}
				got = append(got, ev{e.Name, e.ID, string(e.Data)})
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReaderLongLine(t *testing.T) {
	long := strings.Repeat("x", 100<<10) // longer than the bufio buffer
	r := NewReader(strings.NewReader("data: " + long + "\n\n"))
	e, err := r.Next()
	if err != nil || string(e.Data) != long {
		t.Fatalf("long line: err %v, len %d", err, len(e.Data))
	}
	r = NewReader(strings.NewReader("data: " + long + "\n\n"))
	r.SetMaxLine(1000)
	if _, err := r.Next(); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("err = %v, want ErrLineTooLong", err)
	}
}

func TestIsDone(t *testing.T) {
	for in, want := range map[string]bool{"[DONE]": true, " [DONE] ": true, "{}": false, "": false} {
		if got := IsDone([]byte(in)); got != want {
			t.Errorf("IsDone(%q) = %v", in, got)
		}
	}
}

func BenchmarkAppendEvent(b *testing.B) {
	b.ReportAllocs()
	data := []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" x"},"finish_reason":null}]}`)
	buf := make([]byte, 0, 512)
	for b.Loop() {
		buf = AppendEvent(buf[:0], data)
	}
}
