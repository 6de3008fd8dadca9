package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Limit is an engine's concurrency limit as the engine itself states it: how many requests
// it runs at once before the rest wait in its queue (vLLM's max_num_seqs, SGLang's
// max_running_requests, TGI's max_concurrent_requests, llama.cpp's slots).
type Limit struct {
	N      int    // 0 when the engine does not state one
	Source string // where N was read, for the log: "GET /props total_slots", "--max-num-seqs"
}

// LimitProbe is one HTTP endpoint that may state the limit.
type LimitProbe struct {
	Path string // GET, relative to the engine's base URL
	// Parse reads the limit from the endpoint's body; 0 (and no error) when the body does
	// not state one. What it reads is named in Field, for the log.
	Parse func(body []byte) (int, error)
	Field string
}

// ErrNoLimit is wrapped by Client.Limit when no probe of the adapter answered with a limit.
var ErrNoLimit = errors.New("engine states no concurrency limit")

// Limit asks the engine for its concurrency limit, trying the adapter's probes in order. A
// probe the engine does not serve (404, 405, or 401/403 behind an API key) is skipped; the
// result is Limit{} when none states one. An error means the engine could not be asked
// (connection failure, 5xx, a body that does not parse): the caller may ask again later.
func (c *Client) Limit(ctx context.Context) (Limit, error) {
	for _, p := range c.Adapter.LimitProbes {
		resp, err := c.get(ctx, p.Path)
		if err != nil {
			return Limit{}, fmt.Errorf("read %s limit from %s: %w", c.Adapter.Kind, p.Path, err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		switch {
		case err != nil:
			return Limit{}, fmt.Errorf("read %s limit from %s: %w", c.Adapter.Kind, p.Path, err)
		case resp.StatusCode >= 500:
			return Limit{}, fmt.Errorf("read %s limit from %s: status %d", c.Adapter.Kind, p.Path, resp.StatusCode)
		case resp.StatusCode != http.StatusOK:
			continue // not served by this version or configuration
		}
		n, err := p.Parse(body)
		if err != nil {
			return Limit{}, fmt.Errorf("read %s limit from %s: %w", c.Adapter.Kind, p.Path, err)
		}
		if n > 0 {
			return Limit{N: n, Source: "GET " + p.Path + " " + p.Field}, nil
		}
	}
	return Limit{}, nil
}

// LimitFromCommand reads the limit from the command line that starts the engine (supervise
// mode), through the adapter's LimitArgs. It understands "--flag N", "--flag=N" and
// "NAME=N" environment assignments, split on white space, with quotes around the value
// removed; the last occurrence wins, as with the engines' own argument parsers.
func (a Adapter) LimitFromCommand(cmd string) Limit {
	if a.LimitArgs == nil || cmd == "" {
		return Limit{}
	}
	n, src := a.LimitArgs(strings.Fields(cmd))
	if n <= 0 {
		return Limit{}
	}
	return Limit{N: n, Source: src + " in MAAS_ENGINE_CMD"}
}

// IntArg returns the value of the last of names found in args ("--name N", "--name=N",
// "NAME=N"), the name that matched, and whether one was found with a positive integer.
func IntArg(args []string, names ...string) (int, string, bool) {
	var (
		val   int
		which string
		found bool
	)
	for i, tok := range args {
		for _, name := range names {
			var raw string
			switch {
			case tok == name && i+1 < len(args):
				raw = args[i+1]
			case strings.HasPrefix(tok, name+"="):
				raw = tok[len(name)+1:]
			default:
				continue
			}
			n, err := strconv.Atoi(strings.Trim(raw, `"'`))
			if err != nil || n <= 0 {
				continue
			}
			val, which, found = n, name, true
		}
	}
	return val, which, found
}

// HasArg reports whether one of names appears in args, as "--name", "--name=…" or "NAME=…".
func HasArg(args []string, names ...string) bool {
	for _, tok := range args {
		for _, name := range names {
			if tok == name || strings.HasPrefix(tok, name+"=") {
				return true
			}
		}
	}
	return false
}
