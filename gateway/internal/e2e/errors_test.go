package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestErrorStatuses(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a")
	_, url := e.gateway("MAAS_MAX_BODY_BYTES=4096")
	key := e.key(url, nil)
	limited := e.key(url, map[string]any{"name": "limited", "models": []string{"sim-embedding"}})
	chat := url + "/v1/chat/completions"

	tests := []struct {
		name, url, key, body string
		status               int
		errType, code, param string
	}{
		{"no key", chat, "", `{"model":"sim-chat","messages":[]}`, 401, "authentication_error", "invalid_api_key", ""},
		{"bad key", chat, "sk-" + strings.Repeat("x", 43), `{"model":"sim-chat","messages":[]}`, 401, "authentication_error", "invalid_api_key", ""},
		{"invalid json", chat, key, `{"model":"sim-chat",`, 400, "invalid_request_error", "", ""},
		{"not an object", chat, key, `[1,2]`, 400, "invalid_request_error", "", ""},
		{"missing model", chat, key, `{"messages":[]}`, 400, "invalid_request_error", "", "model"},
		{"bad max_tokens", chat, key, `{"model":"sim-chat","max_tokens":"x"}`, 400, "invalid_request_error", "", "max_tokens"},
		{"unknown model", chat, key, `{"model":"no-such-model","messages":[]}`, 404, "not_found_error", "model_not_found", "model"},
		{"model not allowed", chat, limited, `{"model":"sim-chat","messages":[]}`, 403, "permission_error", "model_not_allowed", "model"},
		{"too large", chat, key, `{"model":"sim-chat","messages":[{"role":"user","content":"` + strings.Repeat("a", 5000) + `"}]}`, 413, "invalid_request_error", "request_too_large", ""},
		{"unknown path", url + "/v1/nothing", key, `{}`, 404, "not_found_error", "not_found", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, hdr, body := post(t, tc.url, tc.key, tc.body)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if hdr.Get("X-Request-Id") == "" && tc.status != 413 {
				t.Error("no X-Request-Id")
			}
			var env struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &env); err != nil || env.Error.Message == "" {
				t.Fatalf("not an OpenAI error body: %s", body)
			}
			if env.Error.Type != tc.errType {
				t.Errorf("type %q, want %q", env.Error.Type, tc.errType)
			}
			if tc.code != "" && (env.Error.Code == nil || *env.Error.Code != tc.code) {
				t.Errorf("code %v, want %q", env.Error.Code, tc.code)
			}
			if tc.param != "" && (env.Error.Param == nil || *env.Error.Param != tc.param) {
				t.Errorf("param %v, want %q", env.Error.Param, tc.param)
			}
			if strings.Contains(string(body), "goroutine") {
				t.Error("stack trace in the response")
			}
		})
	}
}

func TestRevocationWithinOneSecond(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a")
	_, url1 := e.gateway()
	_, url2 := e.gateway()
	var created struct {
		ID  int64  `json:"id"`
		Key string `json:"key"`
	}
	e.p.Do("POST", e.p.ControlURL+"/api/v1/api-keys", e.admin, map[string]any{"name": "revoke-me"}, 201, &created)
	waitStatus(t, url1, created.Key, 200, time.Second)
	waitStatus(t, url2, created.Key, 200, time.Second)

	e.p.Do("DELETE", fmt.Sprintf("%s/api/v1/api-keys/%d", e.p.ControlURL, created.ID), e.admin, nil, http.StatusNoContent, nil)
	d1 := waitStatus(t, url1, created.Key, 401, time.Second)
	d2 := waitStatus(t, url2, created.Key, 401, time.Second)
	t.Logf("revocation took effect after %v and %v", d1, d2)
}
