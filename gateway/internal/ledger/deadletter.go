package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// deadLetter is a record PostgreSQL refused for its content, isolated from its batch.
type deadLetter struct {
	rec Record
	err error
}

// deadLetterLine is one line of the dead-letter file (JSON lines).
type deadLetterLine struct {
	At       time.Time `json:"at"`
	SQLState string    `json:"sqlstate,omitempty"`
	Error    string    `json:"error"`
	Record   struct {
		RequestID        string  `json:"request_id"`
		ClientRequestID  string  `json:"client_request_id,omitempty"`
		CreatedAt        string  `json:"created_at"`
		UserID           int64   `json:"user_id,omitempty"`
		KeyID            int64   `json:"api_key_id,omitempty"`
		Model            string  `json:"model"`
		Backend          string  `json:"backend_id,omitempty"`
		Endpoint         string  `json:"endpoint,omitempty"`
		Status           int     `json:"status"`
		PromptTokens     int64   `json:"prompt_tokens"`
		CompletionTokens int64   `json:"completion_tokens"`
		Estimated        bool    `json:"estimated,omitempty"`
		Streamed         bool    `json:"streamed,omitempty"`
		TTFTMillis       float64 `json:"ttft_ms,omitempty"`
		DurationMillis   float64 `json:"duration_ms"`
		ErrorType        string  `json:"error_type,omitempty"`
	} `json:"record"`
}

// appendDeadLetters writes dls at the end of path, one JSON line each, and syncs it.
func appendDeadLetters(path string, dls []deadLetter) error {
	var b []byte
	for _, d := range dls {
		var l deadLetterLine
		l.At = time.Now().UTC()
		l.Error = d.err.Error()
		var pe *pgconn.PgError
		if errors.As(d.err, &pe) {
			l.SQLState = pe.Code
		}
		r := &d.rec
		lr := &l.Record
		lr.RequestID, lr.ClientRequestID, lr.CreatedAt = r.RequestID, r.ClientRequestID, r.CreatedAt.UTC().Format(time.RFC3339Nano)
		lr.UserID, lr.KeyID, lr.Model, lr.Backend, lr.Endpoint = r.UserID, r.KeyID, r.Model, r.Backend, r.Endpoint
		lr.Status, lr.PromptTokens, lr.CompletionTokens = r.Status, r.PromptTokens, r.CompletionTokens
		lr.Estimated, lr.Streamed, lr.ErrorType = r.Estimated, r.Streamed, r.ErrorType
		if r.TTFT >= 0 {
			lr.TTFTMillis = float64(r.TTFT) / float64(time.Millisecond)
		}
		lr.DurationMillis = float64(r.Duration) / float64(time.Millisecond)
		line, err := json.Marshal(&l)
		if err != nil {
			return err
		}
		b = append(append(b, line...), '\n')
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open dead-letter file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write dead letters: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
