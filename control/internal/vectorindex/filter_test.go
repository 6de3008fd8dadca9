package vectorindex

import (
	"errors"
	"testing"
)

func TestParseFilterErrors(t *testing.T) {
	cases := []struct{ in, path string }{
		{`{"type":"xx","key":"a","value":1}`, "type"},
		{`{"type":"eq","value":1}`, "key"},
		{`{"type":"eq","key":"a"}`, "value"},
		{`{"type":"eq","key":"a","value":{"x":1}}`, "value"},
		{`{"type":"gt","key":"a","value":true}`, "value"},
		{`{"type":"in","key":"a","value":"x"}`, "value"},
		{`{"type":"in","key":"a","value":["x",[1]]}`, "value[1]"},
		{`{"type":"and","filters":[]}`, "filters"},
		{`{"type":"or","filters":[{"type":"eq","key":"a","value":1},{"type":"eq","key":"","value":1}]}`, "filters[1].key"},
		{`{"type":"eq","key":"a","value":1,"extra":2}`, "extra"},
		{`[1]`, ""},
		{`{"type":"and","filters":[{"type":"and","filters":[{"type":"and","filters":[{"type":"and","filters":[{"type":"and","filters":[{"type":"and","filters":[{"type":"and","filters":[{"type":"and","filters":[{"type":"eq","key":"a","value":1}]}]}]}]}]}]}]}]}`,
			"filters[0].filters[0].filters[0].filters[0].filters[0].filters[0].filters[0].filters[0]"},
	}
	for _, c := range cases {
		_, err := ParseFilter([]byte(c.in))
		var fe *FilterError
		if !errors.As(err, &fe) {
			t.Errorf("%s: err %v, want a FilterError", c.in, err)
			continue
		}
		if fe.Path != c.path {
			t.Errorf("%s: path %q, want %q (%v)", c.in, fe.Path, c.path, err)
		}
	}
	if f, err := ParseFilter([]byte(" null ")); f != nil || err != nil {
		t.Errorf("null: %v %v", f, err)
	}
}

func TestMatch(t *testing.T) {
	attrs := map[string]any{"s": "b", "n": 2.0, "t": true}
	cases := map[string]bool{
		`{"type":"eq","key":"s","value":"b"}`:        true,
		`{"type":"gt","key":"s","value":"a"}`:        true,
		`{"type":"lte","key":"n","value":1.5}`:       false,
		`{"type":"ne","key":"t","value":false}`:      true,
		`{"type":"ne","key":"missing","value":1}`:    false,
		`{"type":"nin","key":"missing","value":[1]}`: false,
		`{"type":"nin","key":"n","value":[1,3]}`:     true,
		`{"type":"eq","key":"n","value":"2"}`:        false,
		`{"type":"and","filters":[{"type":"eq","key":"t","value":true},{"type":"in","key":"s","value":["a","b"]}]}`: true,
		`{"type":"or","filters":[{"type":"eq","key":"t","value":false},{"type":"lt","key":"n","value":2}]}`:         false,
	}
	for in, want := range cases {
		f, err := ParseFilter([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := f.Match(attrs); got != want {
			t.Errorf("%s: %v, want %v", in, got, want)
		}
	}
}
