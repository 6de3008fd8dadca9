package vectorindex

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"strconv"
)

// MaxFilterDepth bounds the nesting of compound filters; MaxFilterNodes bounds their size.
const (
	MaxFilterDepth = 8
	MaxFilterNodes = 256
)

// Filter is an attribute filter in OpenAI's vector-store grammar: a comparison (Type is
// eq, ne, gt, gte, lt, lte, in or nin; Key and Value set) or a compound (Type is and or
// or; Filters set). Build one with ParseFilter, which validates it.
type Filter struct {
	Type    string    `json:"type"`
	Key     string    `json:"key,omitempty"`
	Value   any       `json:"value,omitempty"` // string, float64, bool; []any of those for in/nin
	Filters []*Filter `json:"filters,omitempty"`
}

// FilterError is a malformed filter; Path names the offending element relative to the
// filter's root (e.g. "filters[1].value").
type FilterError struct {
	Path    string
	Message string
}

func (e *FilterError) Error() string {
	if e.Path == "" {
		return "filter: " + e.Message
	}
	return "filter " + e.Path + ": " + e.Message
}

// ParseFilter decodes and validates a filter. JSON null yields nil.
func ParseFilter(raw []byte) (*Filter, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var f Filter
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &FilterError{Message: "not valid JSON"}
	}
	nodes := 0
	if err := build(&f, v, "", 1, &nodes); err != nil {
		return nil, err
	}
	return &f, nil
}

func join(path, elem string) string {
	if path == "" {
		return elem
	}
	return path + "." + elem
}

func build(f *Filter, v any, path string, depth int, nodes *int) error {
	*nodes++
	if *nodes > MaxFilterNodes {
		return &FilterError{Path: path, Message: fmt.Sprintf("more than %d filters", MaxFilterNodes)}
	}
	if depth > MaxFilterDepth {
		return &FilterError{Path: path, Message: fmt.Sprintf("nested deeper than %d", MaxFilterDepth)}
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return &FilterError{Path: path, Message: "must be an object"}
	}
	typ, _ := obj["type"].(string)
	f.Type = typ
	switch typ {
	case "and", "or":
		for k := range obj {
			if k != "type" && k != "filters" {
				return &FilterError{Path: join(path, k), Message: "unknown field in a compound filter"}
			}
		}
		list, ok := obj["filters"].([]any)
		if !ok || len(list) == 0 {
			return &FilterError{Path: join(path, "filters"), Message: "must be a non-empty array"}
		}
		f.Filters = make([]*Filter, len(list))
		for i, e := range list {
			f.Filters[i] = &Filter{}
			if err := build(f.Filters[i], e, fmt.Sprintf("%s[%d]", join(path, "filters"), i), depth+1, nodes); err != nil {
				return err
			}
		}
		return nil
	case "eq", "ne", "gt", "gte", "lt", "lte", "in", "nin":
		for k := range obj {
			if k != "type" && k != "key" && k != "value" {
				return &FilterError{Path: join(path, k), Message: "unknown field in a comparison filter"}
			}
		}
		key, ok := obj["key"].(string)
		if !ok || key == "" {
			return &FilterError{Path: join(path, "key"), Message: "must be a non-empty string"}
		}
		f.Key = key
		raw, present := obj["value"]
		if !present {
			return &FilterError{Path: join(path, "value"), Message: "is required"}
		}
		if typ == "in" || typ == "nin" {
			list, ok := raw.([]any)
			if !ok || len(list) == 0 {
				return &FilterError{Path: join(path, "value"), Message: "must be a non-empty array for " + typ}
			}
			vals := make([]any, len(list))
			for i, e := range list {
				s, err := scalar(e)
				if err != nil {
					return &FilterError{Path: fmt.Sprintf("%s[%d]", join(path, "value"), i), Message: err.Error()}
				}
				vals[i] = s
			}
			f.Value = vals
			return nil
		}
		s, err := scalar(raw)
		if err != nil {
			return &FilterError{Path: join(path, "value"), Message: err.Error()}
		}
		if _, isBool := s.(bool); isBool && typ != "eq" && typ != "ne" {
			return &FilterError{Path: join(path, "value"), Message: "a boolean supports only eq, ne, in and nin"}
		}
		f.Value = s
		return nil
	default:
		return &FilterError{Path: join(path, "type"), Message: "must be one of eq, ne, gt, gte, lt, lte, in, nin, and, or"}
	}
}

func scalar(v any) (any, error) {
	switch x := v.(type) {
	case string, bool:
		return x, nil
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, fmt.Errorf("number out of range")
		}
		return f, nil
	case float64:
		return x, nil
	default:
		return nil, fmt.Errorf("must be a string, a number or a boolean")
	}
}

// Match reports whether attrs satisfy f (a nil filter matches everything).
func (f *Filter) Match(attrs map[string]any) bool {
	if f == nil {
		return true
	}
	switch f.Type {
	case "and":
		for _, c := range f.Filters {
			if !c.Match(attrs) {
				return false
			}
		}
		return true
	case "or":
		for _, c := range f.Filters {
			if c.Match(attrs) {
				return true
			}
		}
		return false
	}
	a, ok := attrs[f.Key]
	if !ok {
		return false
	}
	switch f.Type {
	case "in", "nin":
		list, _ := f.Value.([]any)
		found, comparable := false, false
		for _, v := range list {
			c, ok := compare(a, v)
			if ok {
				comparable = true
				if c == 0 {
					found = true
					break
				}
			}
		}
		if f.Type == "in" {
			return found
		}
		return comparable && !found
	}
	c, ok := compare(a, f.Value)
	if !ok {
		return false
	}
	switch f.Type {
	case "eq":
		return c == 0
	case "ne":
		return c != 0
	case "gt":
		return c > 0
	case "gte":
		return c >= 0
	case "lt":
		return c < 0
	case "lte":
		return c <= 0
	}
	return false
}

// compare orders a against b when they have the same type (booleans: equal or not).
func compare(a, b any) (int, bool) {
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return cmp.Compare(x, y), ok
	case float64:
		y, ok := b.(float64)
		return cmp.Compare(x, y), ok
	case bool:
		y, ok := b.(bool)
		if x == y {
			return 0, ok
		}
		return 1, ok
	}
	return 0, false
}
