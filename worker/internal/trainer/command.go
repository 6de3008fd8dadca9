package trainer

import (
	"fmt"
	"slices"
	"strings"
)

// Placeholders are the names a command template may use, each written {name}.
var Placeholders = []string{
	"base_model",               // the base model's name, as the job gives it
	"fine_tuned_model",         // the name the result will be served under
	"job_id",                   // the fine-tuning job's id
	"training_file",            // path of the downloaded training JSONL
	"validation_file",          // path of the validation JSONL; an empty argument when the job has none
	"output_dir",               // where the trainer writes the adapter (PEFT layout)
	"n_epochs",                 // hyperparameters, resolved by control (no "auto")
	"batch_size",               //
	"learning_rate_multiplier", //
	"lora_rank",                //
	"lora_alpha",               //
	"seed",                     //
	"gpus",                     // MAAS_TRAINER_GPUS
}

// Template is a trainer command line split into words, with {placeholders} in them. The
// zero value has no words and cannot run.
type Template struct {
	words []string
}

// ParseTemplate splits s into words the way a POSIX shell splits a simple command — blanks
// separate words, single quotes keep text literal, double quotes group, a backslash escapes
// the next character — but expands nothing: no variables, no globs, no command
// substitution, no pipes. Each {placeholder} is checked against Placeholders. The job's
// values are substituted later into the words, so a value is always part of one argument
// and never parsed by a shell.
func ParseTemplate(s string) (Template, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return Template{}, fmt.Errorf("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return Template{}, fmt.Errorf("unterminated double quote")
			}
			inWord = true
		case c == '\\':
			if i+1 >= len(s) {
				return Template{}, fmt.Errorf("trailing backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return NewTemplate(words)
}

// NewTemplate checks the placeholders of already split words.
func NewTemplate(words []string) (Template, error) {
	if len(words) == 0 {
		return Template{}, fmt.Errorf("empty command")
	}
	for _, w := range words {
		if err := eachPlaceholder(w, func(string) {}); err != nil {
			return Template{}, err
		}
	}
	return Template{words: slices.Clone(words)}, nil
}

// placeholderAt returns the name of the {name} at the start of w (a name is lowercase
// letters, digits and underscores) and its length with the braces; ok is false when w does
// not start with one. Other braces are literal text: a template may hold JSON.
func placeholderAt(w string) (name string, n int, ok bool) {
	if len(w) < 3 || w[0] != '{' {
		return "", 0, false
	}
	for i := 1; i < len(w); i++ {
		c := w[i]
		switch {
		case c == '}' && i > 1:
			return w[1:i], i + 1, true
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		default:
			return "", 0, false
		}
	}
	return "", 0, false
}

// eachPlaceholder calls f with each {name} of w and fails on an unknown one.
func eachPlaceholder(w string, f func(name string)) error {
	for i := 0; i < len(w); i++ {
		name, n, ok := placeholderAt(w[i:])
		if !ok {
			continue
		}
		if !slices.Contains(Placeholders, name) {
			return fmt.Errorf("unknown placeholder {%s} (known: {%s})", name, strings.Join(Placeholders, "}, {"))
		}
		f(name)
		i += n - 1
	}
	return nil
}

// Args returns the argv of one run: each word with its placeholders replaced by values[name]
// (an empty string when values has none). A word stays one argument whatever its value
// holds: spaces, quotes, "$(…)", ";" are passed literally.
func (t Template) Args(values map[string]string) []string {
	args := make([]string, len(t.words))
	for i, w := range t.words {
		var b strings.Builder
		for k := 0; k < len(w); k++ {
			if name, n, ok := placeholderAt(w[k:]); ok {
				b.WriteString(values[name])
				k += n - 1
				continue
			}
			b.WriteByte(w[k])
		}
		args[i] = b.String()
	}
	return args
}

// Words returns the template's words (placeholders unexpanded).
func (t Template) Words() []string { return slices.Clone(t.words) }

// IsZero reports whether t has no command.
func (t Template) IsZero() bool { return len(t.words) == 0 }
