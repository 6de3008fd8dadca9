package service

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type keyJSON struct {
	ID        int64      `json:"id"`
	Key       string     `json:"key"`
	Models    []string   `json:"models"`
	Scopes    []string   `json:"scopes"`
	RPM       *int       `json:"rpm"`
	TPM       *int       `json:"tpm"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// Who may create a key with which scopes, and the scopes' validation errors.
func TestKeyScopesAtCreation(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()
	dev := tc.createUser(admin, "developer")

	var k keyJSON
	tc.call("POST", "/api/v1/api-keys", dev.Token, map[string]any{"name": "default"}, 201).decode(t, &k)
	if diff := cmp.Diff([]string{"inference"}, k.Scopes); diff != "" {
		t.Errorf("default scopes (-want +got):\n%s", diff)
	}
	for _, tc2 := range []struct {
		body   map[string]any
		status int
		param  string
		msg    string
	}{
		{map[string]any{"name": "m", "scopes": []string{"management"}}, 403, "scopes", "only an admin"},
		{map[string]any{"name": "m", "scopes": []string{"inference", "management"}}, 403, "scopes", "only an admin"},
		{map[string]any{"name": "m", "scopes": []string{}}, 400, "scopes", "at least one"},
		{map[string]any{"name": "m", "scopes": []string{"root"}}, 400, "scopes", `unknown scope "root"`},
		{map[string]any{"name": "m", "scopes": []string{"inference", "inference"}}, 400, "scopes", "twice"},
		{map[string]any{"name": "m", "scopes": "inference"}, 400, "scopes", "array"},
	} {
		e := tc.call("POST", "/api/v1/api-keys", dev.Token, tc2.body, tc2.status).apiErr(t)
		if e.Error.Param == nil || *e.Error.Param != tc2.param || !strings.Contains(e.Error.Message, tc2.msg) {
			t.Errorf("%v: error %+v, want param %q and %q", tc2.body, e.Error, tc2.param, tc2.msg)
		}
	}

	// An admin may grant management, to itself or to another user; listing and retrieving
	// show the scopes.
	tc.call("POST", "/api/v1/api-keys", admin, map[string]any{"name": "granted", "user_id": dev.ID, "scopes": []string{"management", "inference"}}, 201).decode(t, &k)
	if diff := cmp.Diff([]string{"inference", "management"}, k.Scopes); diff != "" {
		t.Errorf("granted scopes (-want +got):\n%s", diff)
	}
	var got keyJSON
	tc.call("GET", fmt.Sprintf("/api/v1/api-keys/%d", k.ID), dev.Token, nil, 200).decode(t, &got)
	if diff := cmp.Diff([]string{"inference", "management"}, got.Scopes); diff != "" {
		t.Errorf("GET scopes (-want +got):\n%s", diff)
	}
	var list struct {
		Data []keyJSON `json:"data"`
	}
	tc.call("GET", "/api/v1/api-keys", dev.Token, nil, 200).decode(t, &list)
	if len(list.Data) != 2 || list.Data[0].Scopes == nil || list.Data[1].Scopes == nil {
		t.Errorf("list: %+v", list.Data)
	}
	// The developer's management key acts as the developer: own resources, not admin ones.
	tc.call("GET", "/api/v1/users/me", k.Key, nil, 200)
	tc.call("GET", "/api/v1/users", k.Key, nil, 403)
}

// No key creates a key with more rights than itself.
func TestKeyCannotCreateAMorePowerfulKey(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	var parent keyJSON
	tc.call("POST", "/api/v1/api-keys", admin, map[string]any{"name": "parent", "scopes": []string{"inference", "management"},
		"models": []string{"a", "b"}, "rpm": 10, "expires_at": exp}, 201).decode(t, &parent)

	// Narrower: allowed, and what the request leaves out is inherited.
	var child keyJSON
	tc.call("POST", "/api/v1/api-keys", parent.Key, map[string]any{"name": "child", "models": []string{"a"}, "rpm": 5}, 201).decode(t, &child)
	if diff := cmp.Diff([]string{"inference"}, child.Scopes); diff != "" {
		t.Errorf("child scopes (-want +got):\n%s", diff)
	}
	if child.RPM == nil || *child.RPM != 5 || child.ExpiresAt == nil || !child.ExpiresAt.Equal(exp) {
		t.Errorf("child %+v, want rpm 5 and the parent's expiry", child)
	}
	var inherit keyJSON
	tc.call("POST", "/api/v1/api-keys", parent.Key, map[string]any{"name": "inherit", "scopes": []string{"management", "inference"}}, 201).decode(t, &inherit)
	if diff := cmp.Diff([]string{"a", "b"}, inherit.Models); diff != "" || inherit.RPM == nil || *inherit.RPM != 10 {
		t.Errorf("inherited key %+v (models diff %s)", inherit, diff)
	}

	for _, c := range []struct {
		body  map[string]any
		param string
	}{
		{map[string]any{"name": "x", "models": []string{"a", "c"}}, "models"},
		{map[string]any{"name": "x", "rpm": 11}, "rpm"},
		{map[string]any{"name": "x", "rpm": 0}, "rpm"}, // 0 is unlimited
		{map[string]any{"name": "x", "expires_at": exp.Add(time.Minute)}, "expires_at"},
	} {
		e := tc.call("POST", "/api/v1/api-keys", parent.Key, c.body, 403).apiErr(t)
		if e.Error.Param == nil || *e.Error.Param != c.param || !strings.Contains(e.Error.Message, "more rights than itself") {
			t.Errorf("%v: %+v, want 403 on %s", c.body, e.Error, c.param)
		}
	}

	// A management-only key cannot create an inference key (the default scope).
	var mgmt keyJSON
	tc.call("POST", "/api/v1/api-keys", admin, map[string]any{"name": "mgmt", "scopes": []string{"management"}}, 201).decode(t, &mgmt)
	e := tc.call("POST", "/api/v1/api-keys", mgmt.Key, map[string]any{"name": "x"}, 403).apiErr(t)
	if e.Error.Param == nil || *e.Error.Param != "scopes" {
		t.Errorf("management key creating an inference key: %+v", e.Error)
	}
	tc.call("POST", "/api/v1/api-keys", mgmt.Key, map[string]any{"name": "x", "scopes": []string{"management"}}, 201)
	// A key without limits places none on its children.
	tc.call("POST", "/api/v1/api-keys", mgmt.Key, map[string]any{"name": "y", "scopes": []string{"management"}, "rpm": 1000}, 201)
}
