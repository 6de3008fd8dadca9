package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// The gateway and the engine read the same body the same way (issue 9, items 1 and 2),
// against the real simulator: an escaped "stream" key streams and is billed from the
// engine's usage; a duplicate escaped "model" key, a model that is not UTF-8 and a case
// variant of a key are refused before they reach the engine or the ledger's model column.
func TestOneReadingOfABody(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a", "MAAS_SIM_OUTPUT_TOKENS=50")
	_, url := e.gateway()
	key := e.key(url, nil)

	st, hdr, raw := post(t, url+"/v1/chat/completions", key,
		`{"model":"sim-chat","str\u0065am":true,"messages":[{"role":"user","content":"Hello there"}]}`)
	if st != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d %s: %s", st, hdr.Get("Content-Type"), raw)
	}
	evs := events(t, raw)
	if len(evs) < 3 || evs[len(evs)-1] != "[DONE]" || strings.Contains(string(raw), `"usage":{`) {
		t.Fatalf("events %q", evs)
	}
	r := e.waitRecord(hdr.Get("X-Request-Id"))
	if !r.Streamed || r.Completion != 50 || r.Estimated || r.Status != 200 {
		t.Errorf("record %+v, want a stream billed 50 completion tokens from the engine's usage", r)
	}

	for _, tc := range []struct{ body, param string }{
		{`{"model":"sim-chat","m\u006fdel":"sim-other","messages":[{"role":"user","content":"hi"}]}`, "model"},
		{"{\"model\":\"sim-chat\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "model"},
		{`{"model":"sim-chat","STREAM":true,"messages":[{"role":"user","content":"hi"}]}`, "STREAM"},
	} {
		st, hdr, raw := post(t, url+"/v1/chat/completions", key, tc.body)
		var env struct {
			Error struct {
				Param *string `json:"param"`
			} `json:"error"`
		}
		if err := json.Unmarshal(raw, &env); err != nil || st != 400 || env.Error.Param == nil || *env.Error.Param != tc.param {
			t.Errorf("%s: status %d %s, want 400 param %q", tc.body, st, raw, tc.param)
			continue
		}
		if r := e.waitRecord(hdr.Get("X-Request-Id")); r.Status != 400 || r.Model != "" || r.Backend != "" {
			t.Errorf("%s: record %+v", tc.body, r)
		}
	}
}
