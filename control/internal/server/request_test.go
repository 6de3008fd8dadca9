package server

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/apierr"
)

func TestDecodeJSON(t *testing.T) {
	type body struct {
		Name  string             `json:"name"`
		Count int                `json:"count"`
		Email Optional[string]   `json:"email"`
		Tags  []string           `json:"tags"`
		Inner *struct{ A int }   `json:"inner"`
		Opt   Optional[[]string] `json:"opt"`
	}
	tests := []struct {
		name      string
		in        string
		wantErr   bool
		wantParam string
		check     func(t *testing.T, b body)
	}{
		{name: "ok", in: `{"name":"a","count":2,"email":null,"opt":["x"]}`, check: func(t *testing.T, b body) {
			if b.Name != "a" || b.Count != 2 || !b.Email.Set || !b.Email.Null || b.Opt.Ptr() == nil || (*b.Opt.Ptr())[0] != "x" {
				t.Errorf("decoded %+v", b)
			}
		}},
		{name: "absent optional", in: `{"name":"a"}`, check: func(t *testing.T, b body) {
			if b.Email.Set || b.Email.Ptr() != nil {
				t.Errorf("absent optional is set: %+v", b.Email)
			}
		}},
		{name: "unknown field", in: `{"name":"a","nmae":"b"}`, wantErr: true, wantParam: "nmae"},
		{name: "wrong type", in: `{"count":"two"}`, wantErr: true, wantParam: "count"},
		{name: "wrong type in array", in: `{"tags":[1]}`, wantErr: true, wantParam: "tags"},
		{name: "malformed", in: `{"name":`, wantErr: true},
		{name: "not an object", in: `[1,2]`, wantErr: true},
		{name: "trailing data", in: `{"name":"a"} {"name":"b"}`, wantErr: true},
		{name: "empty", in: ``, wantErr: true},
		{name: "whitespace", in: "  \n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b body
			err := DecodeJSON([]byte(tt.in), &b)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("DecodeJSON: %v", err)
				}
				tt.check(t, b)
				return
			}
			if err == nil {
				t.Fatal("DecodeJSON accepted it")
			}
			e := apierr.From(err)
			if e.Kind != apierr.InvalidRequest {
				t.Errorf("kind %v, want InvalidRequest", e.Kind)
			}
			if e.Param != tt.wantParam {
				t.Errorf("param %q, want %q", e.Param, tt.wantParam)
			}
		})
	}
}

func TestNewList(t *testing.T) {
	id := func(v int) any { return v }
	tests := []struct {
		name  string
		items []int
		limit int
		want  List[int]
	}{
		{"empty", nil, 2, List[int]{Object: "list", Data: []int{}}},
		{"fits", []int{1, 2}, 2, List[int]{Object: "list", Data: []int{1, 2}, LastID: 2}},
		{"more", []int{1, 2, 3}, 2, List[int]{Object: "list", Data: []int{1, 2}, HasMore: true, LastID: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, NewList(tt.items, tt.limit, id)); diff != "" {
				t.Errorf("NewList (-want +got):\n%s", diff)
			}
		})
	}
}
