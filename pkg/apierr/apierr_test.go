package apierr

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func TestEnvelope(t *testing.T) {
	e := Param("model", "you must provide a model parameter")
	var b map[string]map[string]any
	if err := json.Unmarshal(e.Envelope(), &b); err != nil {
		t.Fatal(err)
	}
	got := b["error"]
	if got["message"] != "you must provide a model parameter" || got["type"] != "invalid_request_error" || got["param"] != "model" {
		t.Errorf("unexpected envelope %v", got)
	}
	if _, ok := got["code"]; !ok {
		t.Error("code key must be present (null allowed)")
	}
	if e.Kind.Status() != 400 {
		t.Errorf("status %d", e.Kind.Status())
	}
}

func TestFromHidesCause(t *testing.T) {
	e := From(errors.New("pq: password authentication failed for secret"))
	if e.Kind != Internal || e.Message != "internal error" {
		t.Errorf("got %+v", e)
	}
	if string(e.Envelope()) == "" || json.Valid(e.Envelope()) == false {
		t.Error("invalid body")
	}
}

func TestRetryAfterRoundsUp(t *testing.T) {
	e := &Error{Kind: RateLimited, Message: "slow down", RetryAfter: 1500 * time.Millisecond}
	h := e.Headers()
	if len(h) != 1 || h[0][1] != "2" {
		t.Errorf("headers %v", h)
	}
	if e.Kind.Status() != 429 {
		t.Error("want 429")
	}
}

func TestKindsComplete(t *testing.T) {
	for k := Internal; k <= Unprocessable; k++ {
		if k.Status() == 0 || k.Type() == "" {
			t.Errorf("kind %d has no status or type", k)
		}
	}
}
