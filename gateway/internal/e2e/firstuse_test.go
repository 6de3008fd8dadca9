package e2e

import (
	"fmt"
	"testing"
	"time"
)

// A key works on its first request: keys created through control and used through the
// gateway at once, 200 times, are never refused. The same loop against a gateway with the
// look-up turned off (MAAS_KEY_LOOKUP_RATE=0, the behaviour before it existed) is refused:
// the race with the snapshot's reload is real, and the look-up is what closes it.
func TestNewKeyWorksOnItsFirstRequest(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a")
	_, gw := e.gateway()
	_, off := e.gateway("MAAS_KEY_LOOKUP_RATE=0")
	const chat = `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	for _, url := range []string{gw, off} {
		// Both gateways know the backend before the loops start.
		k := e.key(url, nil)
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, _, body := post(t, url+"/v1/chat/completions", k, chat)
			if st == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("warm-up chat on %s: %d %s", url, st, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	use := func(url string, n int) (refused int, other []string, took time.Duration) {
		start := time.Now()
		for i := range n {
			k := e.p.CreateKey(e.admin, map[string]any{"name": fmt.Sprintf("first-use-%d", i)})
			st, _, body := post(t, url+"/v1/chat/completions", k, chat)
			switch st {
			case 200:
			case 401:
				refused++
			default:
				other = append(other, fmt.Sprintf("%d %s", st, body))
			}
		}
		return refused, other, time.Since(start)
	}

	refused, other, took := use(gw, 200)
	t.Logf("look-ups on: 200 new keys used at once in %v: %d refused", took, refused)
	if refused != 0 || len(other) != 0 {
		t.Errorf("%d of 200 new keys refused with 401 on their first request; other failures: %q", refused, other)
	}

	refused, other, took = use(off, 20)
	t.Logf("look-ups off: 20 new keys used at once in %v: %d refused", took, refused)
	if refused == 0 {
		t.Errorf("with look-ups off no new key was refused: the test no longer reproduces the race it guards")
	}
	if len(other) != 0 {
		t.Errorf("look-ups off: unexpected failures %q", other)
	}
}
