package proxy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var jsonSamples = []string{
	`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`,
	`{}`, ` { } `, `{"a":{}}`, `{"a":[]}`, `{"a":[1,2,{"b":[true,false,null]}]}`,
	`{"s":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}`, `{"n":[0,-0,1.5,-2e10,3E+2,4e-3,10.25]}`,
	`[1,2]`, `"x"`, `12`, `null`, ` true `,
	``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,"a":1}`, `{"a":1 "b":2}`, `{"a" 1}`,
	`{"a":1}}`, `{"a":1} x`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`, `{"a":tru}`, `{"a":nul}`,
	`{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":0x10}`,
	`{"a":"\x"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`, "{\"a\":\"tab\there\"}", "{\"a\":\"\xff\"}",
	`{"a":"unterminated}`, `{a:1}`, `{'a':1}`, `{"a":NaN}`, `{"a":[}`, `{"a":{]}`, `[1}`, `{"a":1]`,
	`{"a":{"b":{"c":[[[[]]]]}}}`, `{"":""}`, `{"a":"}"}`, `{"a":"\\"}`, `{"a":"\\\"}`,
}

func TestScanObjectMatchesJSONValid(t *testing.T) {
	for _, s := range jsonSamples {
		valid, _ := scanObject([]byte(s), func([]byte, int, int) {})
		if want := json.Valid([]byte(s)); valid != want {
			t.Errorf("scanObject(%q) valid = %v, json.Valid = %v", s, valid, want)
		}
	}
}

func TestScanObjectMembers(t *testing.T) {
	body := []byte(` {"model" : "m", "x":{"y":[1,"}"]}, "max_tokens":16 ,"s":"a\"b"} `)
	var got [][2]string
	valid, isObj := scanObject(body, func(k []byte, s, e int) { got = append(got, [2]string{string(k), string(body[s:e])}) })
	want := [][2]string{{"model", `"m"`}, {"x", `{"y":[1,"}"]}`}, {"max_tokens", "16"}, {"s", `"a\"b"`}}
	if !valid || !isObj {
		t.Fatalf("valid %v object %v", valid, isObj)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	for _, s := range []string{`[1]`, `"s"`, `1`} {
		if valid, isObj := scanObject([]byte(s), func([]byte, int, int) {}); !valid || isObj {
			t.Errorf("%s: valid %v object %v, want valid non-object", s, valid, isObj)
		}
	}
}

func TestScanObjectNestingLimit(t *testing.T) {
	for _, depth := range []int{maxNesting - 1, maxNesting, maxNesting + 1, 100000} {
		for _, s := range []string{
			strings.Repeat("[", depth) + strings.Repeat("]", depth),
			`{"a":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`,
		} {
			valid, _ := scanObject([]byte(s), func([]byte, int, int) {})
			if want := json.Valid([]byte(s)); valid != want {
				t.Errorf("depth %d (%.10s…): valid = %v, json.Valid = %v", depth, s, valid, want)
			}
		}
	}
}

func FuzzScanObject(f *testing.F) {
	for _, s := range jsonSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		valid, isObj := scanObject(b, func(k []byte, s, e int) {
			if s > e || e > len(b) {
				t.Fatalf("member %q range %d..%d of %d bytes", k, s, e, len(b))
			}
		})
		if want := json.Valid(b); valid != want {
			t.Fatalf("scanObject(%q) valid = %v, json.Valid = %v", b, valid, want)
		}
		if valid {
			var v any
			_ = json.Unmarshal(b, &v)
			if _, obj := v.(map[string]any); obj != isObj {
				t.Fatalf("scanObject(%q) object = %v, decoded %T", b, isObj, v)
			}
		}
	})
}
