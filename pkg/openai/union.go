package openai

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

var null = []byte("null")

// Content is a message's content: a plain string, an array of typed parts
// ([{"type":"text","text":"…"}, {"type":"image_url",…}]), or null. The zero value is null.
type Content struct {
	Text  string
	Parts []ContentPart
	// IsString is set when the JSON form was (or is to be written as) a plain string.
	IsString bool
}

// ContentPart is one element of an array content. Only text parts carry text; other
// parts (image_url, input_audio, …) are kept raw.
type ContentPart struct {
	Type string          `json:"type"`
	Text string          `json:"text,omitempty"`
	Raw  json.RawMessage `json:"-"`
}

// TextContent returns a plain string content.
func TextContent(s string) Content { return Content{Text: s, IsString: true} }

// String returns the text of the content: the string itself, or the text parts joined
// with newlines.
func (c Content) String() string {
	if c.IsString || len(c.Parts) == 0 {
		return c.Text
	}
	var b []byte
	for i, p := range c.Parts {
		if p.Type != "text" {
			continue
		}
		if i > 0 && len(b) > 0 {
			b = append(b, '\n')
		}
		b = append(b, p.Text...)
	}
	return string(b)
}

// MarshalJSON writes a string, the parts array, or null.
func (c Content) MarshalJSON() ([]byte, error) {
	switch {
	case c.IsString:
		return json.Marshal(c.Text)
	case c.Parts != nil:
		out := []byte{'['}
		for i, p := range c.Parts {
			if i > 0 {
				out = append(out, ',')
			}
			if len(p.Raw) > 0 {
				out = append(out, p.Raw...)
				continue
			}
			b, err := json.Marshal(struct {
				Type string `json:"type"`
				Text string `json:"text"`
			}{p.Type, p.Text})
			if err != nil {
				return nil, err
			}
			out = append(out, b...)
		}
		return append(out, ']'), nil
	}
	return null, nil
}

// UnmarshalJSON accepts a string, an array of parts, or null.
func (c *Content) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	*c = Content{}
	switch {
	case bytes.Equal(b, null):
		return nil
	case len(b) > 0 && b[0] == '"':
		c.IsString = true
		return json.Unmarshal(b, &c.Text)
	case len(b) > 0 && b[0] == '[':
		var raws []json.RawMessage
		if err := json.Unmarshal(b, &raws); err != nil {
			return err
		}
		c.Parts = make([]ContentPart, len(raws))
		for i, r := range raws {
			if err := json.Unmarshal(r, &c.Parts[i]); err != nil {
				return fmt.Errorf("content part %d: %w", i, err)
			}
			c.Parts[i].Raw = r
		}
		return nil
	}
	return errors.New("content must be a string, an array of parts or null")
}

// StringList is a field that is either one string or an array of strings (e.g. "stop").
type StringList []string

// UnmarshalJSON accepts a string or an array of strings.
func (s *StringList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = StringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("must be a string or an array of strings")
	}
	*s = many
	return nil
}

// Input is the "prompt" of /v1/completions and the "input" of /v1/embeddings: a string,
// an array of strings, an array of token ids, or an array of arrays of token ids. After
// decoding, exactly one of Strings and Tokens is non-nil; each element is one input.
type Input struct {
	Strings []string
	Tokens  [][]int
	// Single is set when the JSON form was one string or one token array.
	Single bool
}

// Len is the number of inputs.
func (in Input) Len() int {
	if in.Tokens != nil {
		return len(in.Tokens)
	}
	return len(in.Strings)
}

// MarshalJSON writes the input back in the form it came in.
func (in Input) MarshalJSON() ([]byte, error) {
	switch {
	case in.Tokens != nil && in.Single && len(in.Tokens) == 1:
		return json.Marshal(in.Tokens[0])
	case in.Tokens != nil:
		return json.Marshal(in.Tokens)
	case in.Single && len(in.Strings) == 1:
		return json.Marshal(in.Strings[0])
	case in.Strings != nil:
		return json.Marshal(in.Strings)
	}
	return null, nil
}

// UnmarshalJSON accepts the four forms.
func (in *Input) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	*in = Input{}
	if len(b) == 0 {
		return errors.New("empty input")
	}
	switch b[0] {
	case '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		in.Strings, in.Single = []string{s}, true
		return nil
	case '[':
	default:
		return errors.New("must be a string, an array of strings or an array of token arrays")
	}
	inner := bytes.TrimSpace(b[1:])
	switch {
	case len(inner) > 0 && inner[0] == ']':
		in.Strings = []string{}
		return nil
	case len(inner) > 0 && inner[0] == '"':
		return json.Unmarshal(b, &in.Strings)
	case len(inner) > 0 && inner[0] == '[':
		if err := json.Unmarshal(b, &in.Tokens); err != nil {
			return errors.New("token arrays must hold integers")
		}
		return nil
	default:
		var toks []int
		if err := json.Unmarshal(b, &toks); err != nil {
			return errors.New("must be a string, an array of strings or an array of token arrays")
		}
		in.Tokens, in.Single = [][]int{toks}, true
		return nil
	}
}

// Vector is an embedding: float numbers, or (encoding_format "base64") the standard
// base64 of the little-endian float32 values. Either form decodes into Float.
type Vector struct {
	Float []float32
	// Base64 selects the base64 form when marshalling.
	Base64 bool
}

// MarshalJSON writes the array or the base64 string.
func (v Vector) MarshalJSON() ([]byte, error) {
	if v.Base64 {
		return json.Marshal(EncodeBase64(v.Float))
	}
	if v.Float == nil {
		return []byte("[]"), nil
	}
	return json.Marshal(v.Float)
}

// UnmarshalJSON accepts an array of numbers or a base64 string.
func (v *Vector) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		f, err := DecodeBase64(s)
		if err != nil {
			return err
		}
		v.Float, v.Base64 = f, true
		return nil
	}
	v.Base64 = false
	return json.Unmarshal(b, &v.Float)
}

// EncodeBase64 returns the base64 form of an embedding (little-endian float32).
func EncodeBase64(f []float32) string {
	return base64.StdEncoding.EncodeToString(AppendFloat32LE(nil, f))
}

// AppendFloat32LE appends the little-endian bytes of f to dst.
func AppendFloat32LE(dst []byte, f []float32) []byte {
	for _, x := range f {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(x))
	}
	return dst
}

// DecodeBase64 decodes the base64 form of an embedding.
func DecodeBase64(s string) ([]float32, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("decode base64 embedding: %w", err)
	}
	if len(raw)%4 != 0 {
		return nil, fmt.Errorf("decode base64 embedding: %d bytes is not a whole number of float32", len(raw))
	}
	out := make([]float32, len(raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out, nil
}
