package textcheck

import "testing"

func TestValid(t *testing.T) {
	for s, want := range map[string]bool{"": true, "héllo\n\t": true, "a\x00b": false, "a\xffb": false, "\u2028": true} {
		if got := Valid(s); got != want {
			t.Errorf("Valid(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"plain text\n\ttab\r\n": "plain text\n\ttab\r\n",
		"a\x00b\x01c\x1fd\x7fe": "abcde",
		"bad \xff byte":         "bad \uFFFD byte",
		"é\x00":                 "é",
	} {
		if got := Clean(in); got != want {
			t.Errorf("Clean(%q) = %q, want %q", in, got, want)
		}
		if !Valid(Clean(in)) {
			t.Errorf("Clean(%q) is not Valid", in)
		}
	}
}

func TestCut(t *testing.T) {
	for _, c := range []struct {
		s    string
		max  int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 3, "hel"},
		{"héllo", 2, "h"}, // é is two bytes: not split
		{"héllo", 3, "hé"},
		{"日本", 4, "日"},
		{"日本", 0, ""},
	} {
		if got := Cut(c.s, c.max); got != c.want {
			t.Errorf("Cut(%q, %d) = %q, want %q", c.s, c.max, got, c.want)
		}
	}
}
