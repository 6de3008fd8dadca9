package apikey

import (
	"strings"
	"testing"
)

func TestParseScopes(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want Scopes
		err  string
	}{
		{[]string{"inference"}, Inference, ""},
		{[]string{"management"}, Management, ""},
		{[]string{"management", "inference"}, AllScopes, ""},
		{nil, 0, "at least one"},
		{[]string{}, 0, "at least one"},
		{[]string{"admin"}, 0, `unknown scope "admin"`},
		{[]string{"inference", "inference"}, 0, "twice"},
		{[]string{"Inference"}, 0, "unknown scope"},
	} {
		got, err := ParseScopes(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseScopes(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseScopes(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestScopesSetOperations(t *testing.T) {
	if !AllScopes.Has(Management) || Inference.Has(Management) || !Inference.Has(0) {
		t.Error("Has")
	}
	if !Inference.Within(AllScopes) || AllScopes.Within(Inference) || !Management.Within(Management) {
		t.Error("Within")
	}
	if got := AllScopes.String(); got != "inference,management" {
		t.Errorf("String = %q", got)
	}
	if got := Scopes(0).Names(); got == nil || len(got) != 0 {
		t.Errorf("Names of none = %#v", got)
	}
}

func TestScopeFor(t *testing.T) {
	for path, want := range map[string]Scopes{
		"/api/v1/users":        Management,
		"/api/v1/api-keys/3":   Management,
		"/api":                 Management,
		"/v1/chat/completions": Inference,
		"/v1/models":           Inference,
		"/v1/files/file-1":     Inference,
		"/apis":                Inference,
	} {
		if got := ScopeFor(path); got != want {
			t.Errorf("ScopeFor(%q) = %v, want %v", path, got, want)
		}
	}
}
