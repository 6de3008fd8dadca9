package trainer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/maas-platform/maas/pkg/training"
)

// Progress is what one line of the trainer's standard output says. Exactly one of Metric,
// Event and TrainedTokens is set, or Metric with Checkpoint.
type Progress struct {
	// Metric is a step's figures ({"step":…,"total_steps":…,"loss":…,"val_loss":…}).
	Metric *training.Metric
	// Checkpoint marks Metric as a saved checkpoint ({"checkpoint":true,"step":…}).
	Checkpoint bool
	// Event is a message: {"message":…,"level":…}, or a line that is not a progress
	// object (Log is then true).
	Event *training.Event
	Log   bool
	// TrainedTokens is the trainer's own count ({"trained_tokens":…}).
	TrainedTokens int64
}

// progressLine is the JSON a trainer prints. Losses are accepted under OpenAI's names
// (train_loss, valid_loss) and the usual short ones (loss, val_loss).
type progressLine struct {
	Step                   *int     `json:"step"`
	TotalSteps             int      `json:"total_steps"`
	Loss                   *float64 `json:"loss"`
	TrainLoss              *float64 `json:"train_loss"`
	ValLoss                *float64 `json:"val_loss"`
	ValidLoss              *float64 `json:"valid_loss"`
	TrainMeanTokenAccuracy *float64 `json:"train_mean_token_accuracy"`
	ValidMeanTokenAccuracy *float64 `json:"valid_mean_token_accuracy"`
	Checkpoint             bool     `json:"checkpoint"`
	Message                string   `json:"message"`
	Level                  string   `json:"level"`
	TrainedTokens          *int64   `json:"trained_tokens"`
}

// MaxLineBytes bounds one kept line of trainer output; the rest of a longer line is dropped.
const MaxLineBytes = 1000

// ParseLine reads one line of the trainer's standard output. A line that is not a JSON
// progress object becomes a log event (Log true) with its text cleaned: valid UTF-8, no
// control characters, at most MaxLineBytes, and only what follows the last carriage
// return (progress bars redraw a line with \r). ok is false for a line with nothing to
// show.
func ParseLine(line []byte) (p Progress, ok bool) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return p, false
	}
	if line[0] == '{' {
		var pl progressLine
		if err := json.Unmarshal(line, &pl); err == nil {
			if p, ok := pl.progress(); ok {
				return p, true
			}
		}
	}
	text := CleanText(string(line), MaxLineBytes)
	if text == "" {
		return p, false
	}
	return Progress{Event: &training.Event{Level: "info", Message: text}, Log: true}, true
}

func (pl progressLine) progress() (Progress, bool) {
	switch {
	case pl.Step != nil:
		if *pl.Step < 0 || pl.TotalSteps < 0 {
			return Progress{}, false
		}
		m := &training.Metric{Step: *pl.Step, TotalSteps: pl.TotalSteps,
			TrainLoss: first(pl.TrainLoss, pl.Loss), ValidLoss: first(pl.ValidLoss, pl.ValLoss),
			TrainMeanTokenAccuracy: finite(pl.TrainMeanTokenAccuracy), ValidMeanTokenAccuracy: finite(pl.ValidMeanTokenAccuracy)}
		return Progress{Metric: m, Checkpoint: pl.Checkpoint}, true
	case pl.Message != "":
		lvl := pl.Level
		switch lvl {
		case "info", "warn", "error":
		case "warning":
			lvl = "warn"
		default:
			lvl = "info"
		}
		msg := CleanText(pl.Message, MaxLineBytes)
		if msg == "" {
			return Progress{}, false
		}
		return Progress{Event: &training.Event{Level: lvl, Message: msg}}, true
	case pl.TrainedTokens != nil && *pl.TrainedTokens >= 0:
		return Progress{TrainedTokens: *pl.TrainedTokens}, true
	}
	return Progress{}, false
}

func first(a, b *float64) *float64 {
	if a = finite(a); a != nil {
		return a
	}
	return finite(b)
}

// finite drops NaN and infinities, which JSON cannot carry to control.
func finite(v *float64) *float64 {
	if v == nil || *v != *v || *v > 1e300 || *v < -1e300 {
		return nil
	}
	return v
}

// CleanText makes s safe to show: invalid UTF-8 replaced, only the text after the last
// carriage return kept, control characters other than tab and newline dropped, and cut at
// max bytes on a character boundary (with "…").
func CleanText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if i := strings.LastIndexByte(strings.TrimRight(s, "\r"), '\r'); i >= 0 {
		s = s[i+1:]
	}
	s = strings.Map(func(r rune) rune {
		if r != '\n' && r != '\t' && unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	return truncate(s, max)
}

// truncate cuts s to at most max bytes on a character boundary, marking the cut.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	const mark = "…"
	cut := max - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// readLines calls f with each line of r (without its newline), at most maxLine bytes of
// it; a longer line's rest is skipped. It reads r to its end whatever the lines hold, so
// the writer never blocks on a full pipe.
func readLines(r io.Reader, maxLine int, f func([]byte)) {
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case err == bufio.ErrBufferFull:
			if len(long) < maxLine {
				long = append(long, chunk[:min(len(chunk), maxLine-len(long))]...)
			}
			continue
		case long != nil:
			if len(long) < maxLine {
				long = append(long, chunk[:min(len(chunk), maxLine-len(long))]...)
			}
			f(bytes.TrimRight(long, "\r\n"))
			long = nil
		case len(chunk) > 0:
			f(bytes.TrimRight(chunk[:min(len(chunk), maxLine)], "\r\n"))
		}
		if err != nil {
			return
		}
	}
}
