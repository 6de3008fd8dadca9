package file

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// MaxLineBytes is the longest line a fine-tune dataset may have.
const MaxLineBytes = 8 << 20

// Dataset is what checking a fine-tune dataset found.
type Dataset struct {
	Examples int   // non-blank lines, one training example each
	Tokens   int64 // estimated tokens of every message's content (EstimateTokens)
}

// LineError is a dataset problem at one line (1-based).
type LineError struct {
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// EstimateTokens is the platform's token estimate (the gateway's, before an engine counts):
// one token per 4 bytes of text, rounded up.
func EstimateTokens(n int) int64 { return (int64(n) + 3) / 4 }

// roles a chat-format message may have.
var roles = map[string]bool{"system": true, "user": true, "assistant": true, "tool": true}

// message is one chat message of a training example. Content is kept raw: a string, an
// array of content parts, or null (an assistant turn that only calls tools).
type message struct {
	Role         *string         `json:"role"`
	Content      json.RawMessage `json:"content"`
	Weight       json.RawMessage `json:"weight"`
	ToolCalls    json.RawMessage `json:"tool_calls"`
	FunctionCall json.RawMessage `json:"function_call"`
}

// example is one line: the messages, plus optional tools the messages may call.
type example struct {
	Messages *[]json.RawMessage `json:"messages"`
}

// CheckDataset reads a fine-tune dataset in OpenAI's chat format: JSON Lines, each line an
// object with "messages", a non-empty array of {role, content} objects whose roles are
// system, user, assistant or tool, with at least one assistant message, and an optional
// per-message "weight" of 0 or 1 (assistant messages only). Blank lines are skipped. The
// first problem is returned as a *LineError; a read error as it came.
func CheckDataset(r io.Reader) (Dataset, error) {
	var d Dataset
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte
	for line := 1; ; line++ {
		raw, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], raw...)
			for errors.Is(err, bufio.ErrBufferFull) {
				raw, err = br.ReadSlice('\n')
				long = append(long, raw...)
				if len(long) > MaxLineBytes {
					return d, &LineError{line, fmt.Sprintf("line is longer than %d bytes", MaxLineBytes)}
				}
			}
			raw = long
		}
		if err != nil && err != io.EOF {
			return d, err
		}
		if len(bytes.TrimSpace(raw)) > 0 {
			tokens, msg := checkExample(raw)
			if msg != "" {
				return d, &LineError{line, msg}
			}
			d.Examples++
			d.Tokens += tokens
		}
		if err == io.EOF {
			break
		}
	}
	if d.Examples == 0 {
		return d, &LineError{1, "the file has no training examples (expected JSON Lines, one {\"messages\": [...]} object per line)"}
	}
	return d, nil
}

// checkExample checks one line and returns its token estimate, or what is wrong with it.
func checkExample(raw []byte) (int64, string) {
	if !utf8.Valid(raw) {
		return 0, "not valid UTF-8"
	}
	var ex example
	if err := json.Unmarshal(raw, &ex); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			return 0, "expected a JSON object"
		}
		if errors.As(err, &typeErr) {
			return 0, fmt.Sprintf("%s must be an array of messages", typeErr.Field)
		}
		return 0, "invalid JSON: " + err.Error()
	}
	if ex.Messages == nil {
		return 0, `missing "messages"`
	}
	if len(*ex.Messages) == 0 {
		return 0, `"messages" is empty`
	}
	var tokens int64
	assistant := false
	for i, rawMsg := range *ex.Messages {
		var m message
		if err := json.Unmarshal(rawMsg, &m); err != nil {
			return 0, fmt.Sprintf("messages[%d] must be an object with a string role", i)
		}
		if m.Role == nil {
			return 0, fmt.Sprintf("messages[%d] has no role", i)
		}
		if !roles[*m.Role] {
			return 0, fmt.Sprintf("messages[%d] has role %q; expected system, user, assistant or tool", i, *m.Role)
		}
		if *m.Role == "assistant" {
			assistant = true
		}
		switch c := bytes.TrimSpace(m.Content); {
		case len(c) == 0 || string(c) == "null":
			if *m.Role != "assistant" || (len(m.ToolCalls) == 0 && len(m.FunctionCall) == 0) {
				return 0, fmt.Sprintf("messages[%d] has no content", i)
			}
		case c[0] == '"':
			var s string
			if json.Unmarshal(c, &s) != nil {
				return 0, fmt.Sprintf("messages[%d].content is not a valid string", i)
			}
			tokens += EstimateTokens(len(s))
		case c[0] == '[':
			tokens += EstimateTokens(len(c))
		default:
			return 0, fmt.Sprintf("messages[%d].content must be a string or an array of content parts", i)
		}
		if len(m.ToolCalls) > 0 {
			tokens += EstimateTokens(len(m.ToolCalls))
		}
		if w := bytes.TrimSpace(m.Weight); len(w) > 0 {
			if string(w) != "0" && string(w) != "1" {
				return 0, fmt.Sprintf("messages[%d].weight must be 0 or 1", i)
			}
			if *m.Role != "assistant" {
				return 0, fmt.Sprintf("messages[%d].weight is only allowed on assistant messages", i)
			}
		}
	}
	if !assistant {
		return 0, "no assistant message: each example needs at least one"
	}
	return tokens, ""
}
