package service

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTrustedProxies(t *testing.T) {
	tests := []struct {
		env     string
		want    []netip.Prefix
		wantErr bool
	}{
		{"", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, false}, // default
		{"10.0.0.0/8, 192.0.2.5 ,10.1.2.3/16", []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.5/32"), netip.MustParsePrefix("10.1.0.0/16")}, false},
		{"none", nil, false},
		{"10.0.0.0/8,gateway", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("MAAS_TRUSTED_PROXIES", tt.env)
			}
			o, _, err := Load(nil)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "MAAS_TRUSTED_PROXIES") {
					t.Fatalf("error %v, want one naming MAAS_TRUSTED_PROXIES", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, o.TrustedProxies, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("TrustedProxies (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUsageSettings(t *testing.T) {
	o, _, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Usage.RetentionMonths != 0 || o.Usage.Ahead != 2 || o.Usage.Interval <= 0 {
		t.Errorf("defaults: %+v, want everything kept, 2 months ahead, a positive interval", o.Usage)
	}
	t.Setenv("MAAS_USAGE_RETENTION_MONTHS", "13")
	if o, _, err = Load(nil); err != nil || o.Usage.RetentionMonths != 13 {
		t.Errorf("retention %d (%v), want 13", o.Usage.RetentionMonths, err)
	}
	t.Setenv("MAAS_USAGE_RETENTION_MONTHS", "-1")
	if _, _, err := Load(nil); err == nil || !strings.Contains(err.Error(), "MAAS_USAGE_RETENTION_MONTHS") {
		t.Errorf("error %v, want one naming MAAS_USAGE_RETENTION_MONTHS", err)
	}
}
