package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"

	"github.com/maas-platform/maas/pkg/apierr"
)

// Decode reads the JSON body into v strictly: unknown fields, trailing data, malformed
// JSON and wrongly typed fields are 400s, the latter naming the field in param.
func (c *Call) Decode(v any) error {
	return DecodeJSON(c.RC.PostBody(), v)
}

// DecodeJSON is Decode on raw bytes.
func DecodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return apierr.New(apierr.InvalidRequest, "request body is empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return apierr.New(apierr.InvalidRequest, "request body has data after the JSON object")
	}
	return nil
}

func decodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			return apierr.New(apierr.InvalidRequest, "request body must be a JSON object")
		}
		return apierr.Param(field, "%s must be of type %s", field, jsonType(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return apierr.New(apierr.InvalidRequest, "malformed JSON in request body")
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return apierr.Param(name, "unknown field %q", name)
	}
	return apierr.New(apierr.InvalidRequest, "invalid request body: %v", err)
}

func jsonType(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	case "map", "struct", "ptr":
		return "object"
	case "float32", "float64":
		return "number"
	}
	if strings.HasPrefix(goKind, "int") || strings.HasPrefix(goKind, "uint") {
		return "integer"
	}
	return goKind
}

func marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Page limits.
const (
	DefaultLimit = 20
	MaxLimit     = 100
)

// Page is a list request: at most Limit items after the cursor After ("" = from the start).
type Page struct {
	Limit int
	After string
}

// PageParams reads limit and after from the query string.
func (c *Call) PageParams() (Page, error) {
	p := Page{Limit: DefaultLimit}
	args := c.RC.QueryArgs()
	if raw := args.Peek("limit"); raw != nil {
		n, err := strconv.Atoi(string(raw))
		if err != nil || n < 1 || n > MaxLimit {
			return p, apierr.Param("limit", "limit must be an integer from 1 to %d", MaxLimit)
		}
		p.Limit = n
	}
	p.After = string(args.Peek("after"))
	return p, nil
}

// IntAfter parses the cursor as a numeric id (0 when empty).
func (p Page) IntAfter() (int64, error) {
	if p.After == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(p.After, 10, 64)
	if err != nil || n < 0 {
		return 0, apierr.Param("after", "after must be the id of a listed item")
	}
	return n, nil
}

// List is the paginated list envelope.
type List[T any] struct {
	Object  string `json:"object"`
	Data    []T    `json:"data"`
	HasMore bool   `json:"has_more"`
	LastID  any    `json:"last_id"`
}

// NewList builds the envelope from up to limit+1 fetched items; id gives an item's cursor.
func NewList[T any](items []T, limit int, id func(T) any) List[T] {
	l := List[T]{Object: "list", Data: items}
	if len(items) > limit {
		l.Data = items[:limit]
		l.HasMore = true
	}
	if l.Data == nil {
		l.Data = []T{}
	}
	if len(l.Data) > 0 {
		l.LastID = id(l.Data[len(l.Data)-1])
	}
	return l
}

// QueryInt reads an optional positive integer query parameter.
func (c *Call) QueryInt(name string) (int64, bool, error) {
	raw := c.RC.QueryArgs().Peek(name)
	if raw == nil {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n <= 0 {
		return 0, false, apierr.Param(name, "%s must be a positive integer", name)
	}
	return n, true, nil
}
