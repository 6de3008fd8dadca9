package backend

import (
	"testing"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/registry"
)

func TestValidateRegister(t *testing.T) {
	ok := func() registry.RegisterRequest {
		return registry.RegisterRequest{ID: "w-1", URL: "http://127.0.0.1:8100", EngineKind: "sim", Models: []string{"sim-chat"}}
	}
	tests := []struct {
		name  string
		edit  func(*registry.RegisterRequest)
		param string
	}{
		{"valid", func(*registry.RegisterRequest) {}, ""},
		{"bad id", func(r *registry.RegisterRequest) { r.ID = "" }, "id"},
		{"bad url", func(r *registry.RegisterRequest) { r.URL = "127.0.0.1:8100" }, "url"},
		{"bad kind", func(r *registry.RegisterRequest) { r.EngineKind = "triton" }, "engine_kind"},
		{"no models", func(r *registry.RegisterRequest) { r.Models = nil }, "models"},
		{"bad model", func(r *registry.RegisterRequest) { r.Models = []string{"a b"} }, "models"},
		{"negative capacity", func(r *registry.RegisterRequest) { r.Capacity = -1 }, "capacity"},
		{"interval too short", func(r *registry.RegisterRequest) { r.HeartbeatIntervalMS = 1 }, "heartbeat_interval_ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok()
			tt.edit(&r)
			err := validateRegister(&r)
			if tt.param == "" {
				if err != nil {
					t.Fatal(err)
				}
				if r.Capacity != 64 || r.HeartbeatIntervalMS != 2000 {
					t.Errorf("defaults not applied: %+v", r)
				}
				return
			}
			if e := apierr.From(err); err == nil || e.Param != tt.param {
				t.Errorf("err %v, want param %q", err, tt.param)
			}
		})
	}
}
