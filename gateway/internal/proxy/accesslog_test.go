package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestAccessLogLines(t *testing.T) {
	f := &accessFields{requestID: `odd "id"=x`, endpoint: "/v1/chat/completions", model: "m", backend: "",
		status: 200, duration: 1500 * time.Microsecond, stream: true, prompt: 7, completion: 9, attempts: 1, userID: 3, keyID: 4}
	now := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)

	var js bytes.Buffer
	newAccessLog(&js, true).write(now, f)
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %s (%v)", js.String(), err)
	}
	if m["request_id"] != `odd "id"=x` || m["status"] != 200.0 || m["duration_ms"] != 1.5 || m["msg"] != "request" || m["stream"] != true {
		t.Errorf("json line %s", js.String())
	}

	var txt bytes.Buffer
	newAccessLog(&txt, false).write(now, f)
	line := txt.String()
	for _, want := range []string{"time=2026-01-02T03:04:05.006Z level=INFO msg=request", ` request_id="odd \"id\"=x"`,
		` backend="" `, " status=200 duration_ms=1.5 stream=true prompt_tokens=7 completion_tokens=9", "key_id=4\n"} {
		if !strings.Contains(line, want) {
			t.Errorf("text line %q lacks %q", line, want)
		}
	}
}
