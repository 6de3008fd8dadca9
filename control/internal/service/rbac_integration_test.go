package service

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/maas-platform/maas/pkg/internalauth"
	"github.com/maas-platform/maas/pkg/obs"
)

// Identities of the RBAC matrix.
const (
	anon     = "no token"
	badTok   = "bad token"
	expired  = "expired token"
	ended    = "ended session"
	asUser   = "user"
	asDev    = "developer"
	asAdmin  = "admin"
	internal = "internal token"

	// API keys (scopes in brackets), sent to control directly or as the identity the gateway
	// signs for a key (via gateway).
	keyUserInf   = "user key [inference]"
	keyUserMgmt  = "user key [management]" // granted by an admin
	keyAdminInf  = "admin key [inference]"
	keyAdminMgmt = "admin key [management]"
	keyAdminAll  = "admin key [inference management]"
	fwdAdminInf  = "admin key [inference] via gateway"
	fwdAdminMgmt = "admin key [management] via gateway"
)

var identities = []string{anon, badTok, expired, ended, asUser, asDev, asAdmin, internal,
	keyUserInf, keyUserMgmt, keyAdminInf, keyAdminMgmt, keyAdminAll, fwdAdminInf, fwdAdminMgmt}

// inferenceOnly are the key identities without the management scope: every console API
// route that needs credentials refuses them (403, insufficient_scope).
var inferenceOnly = map[string]bool{keyUserInf: true, keyAdminInf: true, fwdAdminInf: true}

// ownerOf is the user whose roles an identity carries.
func ownerOf(who string) string {
	switch who {
	case keyUserInf, keyUserMgmt:
		return asUser
	case keyAdminInf, keyAdminMgmt, keyAdminAll, fwdAdminInf, fwdAdminMgmt:
		return asAdmin
	}
	return who
}

// expect builds the expected status per identity: the API's usual shape is 401 for the
// first four (and for the internal token, which is no user credential), then the given
// statuses for user, developer and admin. Keys without the management scope get 403 on
// the console API; keys with it get their owner's status.
func expect(user, dev, admin int) map[string]int {
	return map[string]int{anon: 401, badTok: 401, expired: 401, ended: 401, internal: 401, asUser: user, asDev: dev, asAdmin: admin,
		keyUserInf: 403, keyAdminInf: 403, fwdAdminInf: 403,
		keyUserMgmt: user, keyAdminMgmt: admin, fwdAdminMgmt: admin, keyAdminAll: admin}
}

// expectInference is expect for the OpenAI-shaped API under /v1 (inference scope): keys
// with only the management scope get 403; keys with inference get their owner's status.
func expectInference(user, dev, admin int) map[string]int {
	return with(expect(user, dev, admin), keyUserInf, user, keyAdminInf, admin, fwdAdminInf, admin,
		keyUserMgmt, 403, keyAdminMgmt, 403, fwdAdminMgmt, 403)
}

// with returns m with the statuses of some identities replaced (pairs of identity, status).
func with(m map[string]int, pairs ...any) map[string]int {
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i].(string)] = pairs[i+1].(int)
	}
	return m
}

func all(status int) map[string]int {
	m := map[string]int{}
	for _, id := range identities {
		m[id] = status
	}
	return m
}

// internalOnly: only the internal token passes.
func internalOnly(status int) map[string]int {
	m := all(401)
	m[internal] = status
	return m
}

type rbacFixture struct {
	tc                *testControl
	tokens            map[string]string
	users             map[string]testUser
	admin             testUser
	victimSeq         int
	publicModel       string
	backendID         string
	passwordOf        map[string]string
	adminTokForSetups string
	keyIDs            map[string]int64 // of the key identities
	ftJob             string           // fineTuneJob
}

// headers are the credentials of who.
func (f *rbacFixture) headers(who string) map[string]string {
	switch who {
	case fwdAdminInf, fwdAdminMgmt:
		key := map[string]string{fwdAdminInf: keyAdminInf, fwdAdminMgmt: keyAdminMgmt}[who]
		return internalauth.Sign(testInternalToken, internalauth.Identity{
			UserID: f.users[asAdmin].ID, KeyID: f.keyIDs[key], Roles: []string{"admin"}}, time.Now())
	}
	return bearer(f.tokens[who])
}

// matrixCase is one endpoint: route is the router's pattern; req returns the concrete path
// and body for a caller.
type matrixCase struct {
	method, route string
	req           func(f *rbacFixture, who string) (path string, body any)
	want          map[string]int
}

func fixed(path string, body any) func(*rbacFixture, string) (string, any) {
	return func(*rbacFixture, string) (string, any) { return path, body }
}

func (f *rbacFixture) victim() testUser {
	return f.tc.createUser(f.adminTokForSetups, "user")
}

func (f *rbacFixture) freshModel() string {
	f.victimSeq++
	name := fmt.Sprintf("victim-model-%d", f.victimSeq)
	f.tc.call("POST", "/api/v1/models", f.adminTokForSetups, map[string]any{"name": name, "type": "chat"}, 201)
	return name
}

// ownKey creates a key owned by who (by the user for anonymous callers, who cannot own one).
func (f *rbacFixture) ownKey(who string) int64 {
	owner := ownerOf(who)
	if _, ok := f.users[owner]; !ok {
		owner = asUser
	}
	id, _ := f.tc.createKey(f.users[owner].Token, nil)
	return id
}

// userFile uploads a file owned by the user identity.
// fineTuneJob is a fine-tuning job of the user, created on first use.
func (f *rbacFixture) fineTuneJob() string {
	if f.ftJob == "" {
		tok := f.users[asUser].Token
		file := f.tc.uploadFile(tok, "matrix.jsonl", "fine-tune", chatLine+"\n")
		f.ftJob = f.tc.createJob(tok, map[string]any{"model": f.publicModel, "training_file": file.ID}).ID
	}
	return f.ftJob
}

func (f *rbacFixture) userFile() string {
	return f.tc.uploadFile(f.users[asUser].Token, "matrix.txt", "user_data", "matrix").ID
}

func matrix() []matrixCase {
	return []matrixCase{
		{"GET", "/health", fixed("/health", nil), all(200)},
		{"GET", "/ready", fixed("/ready", nil), all(200)},
		{"GET", "/metrics", fixed("/metrics", nil), all(200)},

		{"POST", "/api/v1/auth/login", func(f *rbacFixture, who string) (string, any) {
			return "/api/v1/auth/login", map[string]string{"username": f.users[asUser].Username, "password": f.users[asUser].Password}
		}, all(200)},
		{"GET", "/api/v1/users/me", fixed("/api/v1/users/me", nil), expect(200, 200, 200)},
		{"POST", "/api/v1/users/me/password", func(f *rbacFixture, who string) (string, any) {
			pw := "whatever-password"
			if u, ok := f.users[ownerOf(who)]; ok {
				pw = u.Password
			}
			return "/api/v1/users/me/password", map[string]string{"current_password": pw, "new_password": pw}
		}, expect(204, 204, 204)},

		{"POST", "/api/v1/users", func(f *rbacFixture, who string) (string, any) {
			f.victimSeq++
			return "/api/v1/users", map[string]any{"username": fmt.Sprintf("new_%d", f.victimSeq), "password": "Password-123"}
		}, expect(403, 403, 201)},
		{"GET", "/api/v1/users", fixed("/api/v1/users", nil), expect(403, 403, 200)},
		{"GET", "/api/v1/users/{id}", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/users/%d", f.users[asUser].ID), nil
		}, expect(403, 403, 200)},
		{"PATCH", "/api/v1/users/{id}", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/users/%d", f.users[asUser].ID), map[string]any{"full_name": "Changed " + who}
		}, expect(403, 403, 200)},
		{"DELETE", "/api/v1/users/{id}", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/users/%d", f.victim().ID), nil
		}, expect(403, 403, 204)},
		{"PUT", "/api/v1/users/{id}/roles", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/users/%d/roles", f.victim().ID), map[string]any{"roles": []string{"user", "developer"}}
		}, expect(403, 403, 200)},
		{"GET", "/api/v1/users/{id}/quota", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/users/%d/quota", f.users[asUser].ID), nil
		}, expect(403, 403, 200)},
		{"PUT", "/api/v1/users/{id}/quota", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/users/%d/quota", f.users[asUser].ID), map[string]any{"requests_per_minute": 60}
		}, expect(403, 403, 200)},

		// A key without the inference scope cannot create one with it (the default scope).
		{"POST", "/api/v1/api-keys", fixed("/api/v1/api-keys", map[string]any{"name": "matrix"}),
			with(expect(201, 201, 201), keyUserMgmt, 403, keyAdminMgmt, 403, fwdAdminMgmt, 403)},
		{"GET", "/api/v1/api-keys", fixed("/api/v1/api-keys", nil), expect(200, 200, 200)},
		{"GET", "/api/v1/api-keys/{id}", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/api-keys/%d", f.ownKey(who)), nil
		}, expect(200, 200, 200)},
		{"DELETE", "/api/v1/api-keys/{id}", func(f *rbacFixture, who string) (string, any) {
			return fmt.Sprintf("/api/v1/api-keys/%d", f.ownKey(who)), nil
		}, expect(204, 204, 204)},

		{"POST", "/api/v1/models", func(f *rbacFixture, who string) (string, any) {
			f.victimSeq++
			return "/api/v1/models", map[string]any{"name": fmt.Sprintf("matrix-model-%d", f.victimSeq), "type": "embedding"}
		}, expect(403, 403, 201)},
		{"GET", "/api/v1/models", fixed("/api/v1/models", nil), expect(200, 200, 200)},
		{"GET", "/api/v1/models/{name:*}", func(f *rbacFixture, who string) (string, any) {
			return "/api/v1/models/" + f.publicModel, nil
		}, expect(200, 200, 200)},
		{"PATCH", "/api/v1/models/{name:*}", func(f *rbacFixture, who string) (string, any) {
			return "/api/v1/models/" + f.publicModel, map[string]any{"description": "by " + who}
		}, expect(403, 403, 200)},
		{"DELETE", "/api/v1/models/{name:*}", func(f *rbacFixture, who string) (string, any) {
			return "/api/v1/models/" + f.freshModel(), nil
		}, expect(403, 403, 204)},

		{"GET", "/api/v1/backends", fixed("/api/v1/backends", nil), expect(403, 403, 200)},
		{"GET", "/api/v1/backends/{id}", func(f *rbacFixture, who string) (string, any) {
			return "/api/v1/backends/" + f.backendID, nil
		}, expect(403, 403, 200)},
		{"PATCH", "/api/v1/backends/{id}", func(f *rbacFixture, who string) (string, any) {
			return "/api/v1/backends/" + f.backendID, map[string]any{"weight": 50}
		}, expect(403, 403, 200)},

		// Files: a JSON body is not an upload (400 once admitted); only the owner and admins
		// reach a file, others get 404.
		{"POST", "/v1/files", fixed("/v1/files", map[string]any{"purpose": "batch"}), expectInference(400, 400, 400)},
		{"GET", "/v1/files", fixed("/v1/files", nil), expectInference(200, 200, 200)},
		{"GET", "/v1/files/{id}", func(f *rbacFixture, who string) (string, any) {
			return "/v1/files/" + f.userFile(), nil
		}, expectInference(200, 404, 200)},
		{"GET", "/v1/files/{id}/content", func(f *rbacFixture, who string) (string, any) {
			return "/v1/files/" + f.userFile() + "/content", nil
		}, expectInference(200, 404, 200)},
		{"DELETE", "/v1/files/{id}", func(f *rbacFixture, who string) (string, any) {
			return "/v1/files/" + f.userFile(), nil
		}, expectInference(200, 404, 200)},

		// Fine-tuning: a job is seen by its owner and admins (others 404); a creation without
		// a training file is a 400 once admitted; the cancelled job does not exist.
		{"POST", "/v1/fine_tuning/jobs", func(f *rbacFixture, who string) (string, any) {
			return "/v1/fine_tuning/jobs", map[string]any{"model": f.publicModel}
		}, expectInference(400, 400, 400)},
		{"GET", "/v1/fine_tuning/jobs", fixed("/v1/fine_tuning/jobs", nil), expectInference(200, 200, 200)},
		{"GET", "/v1/fine_tuning/jobs/{id}", func(f *rbacFixture, who string) (string, any) {
			return "/v1/fine_tuning/jobs/" + f.fineTuneJob(), nil
		}, expectInference(200, 404, 200)},
		{"GET", "/v1/fine_tuning/jobs/{id}/events", func(f *rbacFixture, who string) (string, any) {
			return "/v1/fine_tuning/jobs/" + f.fineTuneJob() + "/events", nil
		}, expectInference(200, 404, 200)},
		{"GET", "/v1/fine_tuning/jobs/{id}/checkpoints", func(f *rbacFixture, who string) (string, any) {
			return "/v1/fine_tuning/jobs/" + f.fineTuneJob() + "/checkpoints", nil
		}, expectInference(200, 404, 200)},
		{"POST", "/v1/fine_tuning/jobs/{id}/cancel", fixed("/v1/fine_tuning/jobs/ftjob-missing0000/cancel", nil), expectInference(404, 404, 404)},

		{"POST", "/v1/vector_stores", fixed("/v1/vector_stores", map[string]any{"name": "matrix"}), expectInference(200, 200, 200)},
		{"GET", "/v1/vector_stores", fixed("/v1/vector_stores", nil), expectInference(200, 200, 200)},
		{"GET", "/v1/vector_stores/{id}", fixed("/v1/vector_stores/vs_missing00000000", nil), expectInference(404, 404, 404)},
		{"POST", "/v1/vector_stores/{id}", fixed("/v1/vector_stores/vs_missing00000000", map[string]any{"name": "x"}), expectInference(404, 404, 404)},
		{"DELETE", "/v1/vector_stores/{id}", fixed("/v1/vector_stores/vs_missing00000000", nil), expectInference(404, 404, 404)},
		{"POST", "/v1/vector_stores/{id}/search", fixed("/v1/vector_stores/vs_missing00000000/search", map[string]any{"query": "x"}), expectInference(404, 404, 404)},
		{"POST", "/v1/vector_stores/{id}/files", fixed("/v1/vector_stores/vs_missing00000000/files", map[string]any{"file_id": "file-missing000000"}), expectInference(404, 404, 404)},
		{"GET", "/v1/vector_stores/{id}/files", fixed("/v1/vector_stores/vs_missing00000000/files", nil), expectInference(404, 404, 404)},
		{"GET", "/v1/vector_stores/{id}/files/{file_id}", fixed("/v1/vector_stores/vs_missing00000000/files/file-missing000000", nil), expectInference(404, 404, 404)},
		{"POST", "/v1/vector_stores/{id}/files/{file_id}", fixed("/v1/vector_stores/vs_missing00000000/files/file-missing000000", map[string]any{"attributes": map[string]any{}}), expectInference(404, 404, 404)},
		{"DELETE", "/v1/vector_stores/{id}/files/{file_id}", fixed("/v1/vector_stores/vs_missing00000000/files/file-missing000000", nil), expectInference(404, 404, 404)},
		{"GET", "/v1/vector_stores/{id}/files/{file_id}/content", fixed("/v1/vector_stores/vs_missing00000000/files/file-missing000000/content", nil), expectInference(404, 404, 404)},
		{"POST", "/v1/vector_stores/{id}/file_batches", fixed("/v1/vector_stores/vs_missing00000000/file_batches", map[string]any{"file_ids": []string{"file-missing000000"}}), expectInference(404, 404, 404)},
		{"GET", "/v1/vector_stores/{id}/file_batches/{batch_id}", fixed("/v1/vector_stores/vs_missing00000000/file_batches/vsfb_missing", nil), expectInference(404, 404, 404)},
		{"POST", "/v1/vector_stores/{id}/file_batches/{batch_id}/cancel", fixed("/v1/vector_stores/vs_missing00000000/file_batches/vsfb_missing/cancel", nil), expectInference(404, 404, 404)},
		{"GET", "/v1/vector_stores/{id}/file_batches/{batch_id}/files", fixed("/v1/vector_stores/vs_missing00000000/file_batches/vsfb_missing/files", nil), expectInference(404, 404, 404)},
		// The training workers' API: only the internal token; a claim without worker_id is a
		// 400, calls about a job that does not exist 404.
		{"POST", "/internal/v1/fine_tuning/claim", fixed("/internal/v1/fine_tuning/claim", map[string]any{}), internalOnly(400)},
		{"POST", "/internal/v1/fine_tuning/jobs/{id}/heartbeat", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/heartbeat", map[string]any{}), internalOnly(404)},
		{"POST", "/internal/v1/fine_tuning/jobs/{id}/events", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/events", map[string]any{}), internalOnly(404)},
		{"POST", "/internal/v1/fine_tuning/jobs/{id}/checkpoints", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/checkpoints", map[string]any{"step": 1}), internalOnly(404)},
		{"GET", "/internal/v1/fine_tuning/jobs/{id}/files/{file_id}", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/files/file-x", nil), internalOnly(404)},
		{"PUT", "/internal/v1/fine_tuning/jobs/{id}/adapter", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/adapter", []byte("tar")), internalOnly(404)},
		{"GET", "/internal/v1/fine_tuning/jobs/{id}/adapter", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/adapter", nil), internalOnly(404)},
		{"POST", "/internal/v1/fine_tuning/jobs/{id}/complete", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/complete", map[string]any{}), internalOnly(404)},
		{"POST", "/internal/v1/fine_tuning/jobs/{id}/fail", fixed("/internal/v1/fine_tuning/jobs/ftjob-missing0000/fail", map[string]any{"message": "x"}), internalOnly(404)},
		{"POST", "/internal/v1/adapters/demand", fixed("/internal/v1/adapters/demand", map[string]any{"model": "ft:none"}), internalOnly(404)},
		{"GET", "/api/v1/adapters", fixed("/api/v1/adapters", nil), expect(403, 403, 200)},

		{"POST", "/internal/v1/backends/register", func(f *rbacFixture, who string) (string, any) {
			return "/internal/v1/backends/register", registerBody(f.backendID, 2000)
		}, internalOnly(200)},
		{"POST", "/internal/v1/backends/{id}/heartbeat", func(f *rbacFixture, who string) (string, any) {
			return "/internal/v1/backends/" + f.backendID + "/heartbeat", map[string]any{"state": "healthy", "running_requests": 1}
		}, internalOnly(200)},
		{"POST", "/internal/v1/backends/{id}/deregister", func(f *rbacFixture, who string) (string, any) {
			f.victimSeq++
			id := fmt.Sprintf("gone-%d", f.victimSeq)
			f.tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody(id, 2000), 200)
			return "/internal/v1/backends/" + id + "/deregister", nil
		}, internalOnly(204)},
	}
}

func registerBody(id string, intervalMS int) map[string]any {
	return map[string]any{"id": id, "url": "http://127.0.0.1:9", "engine_kind": "sim",
		"models": []string{"sim-chat", "sim-embedding"}, "capacity": 8, "heartbeat_interval_ms": intervalMS}
}

// expiredToken is a correctly signed session token that expired an hour ago.
func expiredToken(t *testing.T, userID int64) string {
	t.Helper()
	past := time.Now().Add(-2 * time.Hour)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer: "maas-control", Subject: fmt.Sprint(userID),
		IssuedAt: jwt.NewNumericDate(past), ExpiresAt: jwt.NewNumericDate(past.Add(time.Hour)),
	}).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestRBACMatrix calls every registered endpoint as every identity and checks the status.
// A route registered on the router but missing from the matrix fails the test.
func TestRBACMatrix(t *testing.T) {
	tc := startControl(t, nil)
	adminTok := tc.adminToken()
	f := &rbacFixture{tc: tc, adminTokForSetups: adminTok, users: map[string]testUser{}}
	f.users[asUser] = tc.createUser(adminTok, "user")
	f.users[asDev] = tc.createUser(adminTok, "developer")
	var me struct {
		ID int64 `json:"id"`
	}
	tc.call("GET", "/api/v1/users/me", adminTok, nil, 200).decode(t, &me)
	f.users[asAdmin] = testUser{ID: me.ID, Username: "admin", Password: testAdminPassword, Token: adminTok}
	f.publicModel = "org/public-model"
	tc.call("POST", "/api/v1/models", adminTok, map[string]any{"name": f.publicModel, "type": "chat"}, 201)
	f.backendID = "matrix-backend"
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody(f.backendID, 60000), 200)

	// A session of an admin ended by a password reset.
	reset := tc.createUser(adminTok, "admin")
	tc.call("PATCH", fmt.Sprintf("/api/v1/users/%d", reset.ID), adminTok, map[string]any{"password": "Reset-Pass-123"}, 200)

	f.tokens = map[string]string{
		anon:     "",
		badTok:   "not-a-valid-token",
		expired:  expiredToken(t, f.users[asUser].ID),
		ended:    reset.Token,
		asUser:   f.users[asUser].Token,
		asDev:    f.users[asDev].Token,
		asAdmin:  adminTok,
		internal: testInternalToken,
	}
	f.keyIDs = map[string]int64{}
	for who, fields := range map[string]map[string]any{
		keyUserInf:   nil,
		keyUserMgmt:  {"name": "granted", "user_id": f.users[asUser].ID, "scopes": []string{"management"}},
		keyAdminInf:  nil,
		keyAdminMgmt: {"name": "mgmt", "scopes": []string{"management"}},
		keyAdminAll:  {"name": "all", "scopes": []string{"inference", "management"}},
	} {
		tok := adminTok
		if who == keyUserInf {
			tok = f.users[asUser].Token
		}
		f.keyIDs[who], f.tokens[who] = tc.createKey(tok, fields)
	}

	// Every registered route must be in the matrix, and every matrix route registered.
	quiet := obs.NewLogger(obs.LogOptions{Out: discard{}})
	srv, _, err := newServer(tc.Pool, tc.Opts, quiet, obs.NewRegistry("control"), newQueue(tc.Pool, tc.Opts, quiet))
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for method, paths := range srv.RouterList() {
		for _, p := range paths {
			registered[method+" "+p] = true
		}
	}
	cases := matrix()
	inMatrix := map[string]bool{}
	for _, c := range cases {
		inMatrix[c.method+" "+c.route] = true
	}
	var missing, stale []string
	for r := range registered {
		if !inMatrix[r] {
			missing = append(missing, r)
		}
	}
	for r := range inMatrix {
		if !registered[r] {
			stale = append(stale, r)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("routes registered but missing from the RBAC matrix: %s", strings.Join(missing, ", "))
	}
	if len(stale) > 0 {
		t.Errorf("matrix routes that are not registered: %s", strings.Join(stale, ", "))
	}
	if len(registered) < 25 {
		t.Fatalf("router lists only %d routes; the walk is broken", len(registered))
	}

	for _, c := range cases {
		for _, who := range identities {
			want, ok := c.want[who]
			if !ok {
				t.Fatalf("%s %s: no expectation for %s", c.method, c.route, who)
			}
			t.Run(c.method+" "+c.route+" as "+who, func(t *testing.T) {
				path, body := c.req(f, who)
				r := tc.do(c.method, path, body, f.headers(who))
				if r.Status != want {
					t.Fatalf("%s %s as %s: status %d, want %d: %s", c.method, path, who, r.Status, want, r.Body)
				}
				if c.route == "/api/v1/users/me/password" && r.Status == 204 {
					// A password change ends the owner's sessions (not its keys): log in again.
					owner := ownerOf(who)
					u := f.users[owner]
					u.Token = tc.login(u.Username, u.Password)
					f.users[owner], f.tokens[owner] = u, u.Token
					if owner == asAdmin {
						f.adminTokForSetups = u.Token
					}
				}
				if r.Status >= 400 {
					e := r.apiErr(t)
					if inferenceOnly[who] && r.Status == 403 && (e.Error.Code == nil || *e.Error.Code != "insufficient_scope" || !strings.Contains(e.Error.Message, "management scope")) {
						t.Errorf("key without the management scope answered %q (code %v), want insufficient_scope", e.Error.Message, e.Error.Code)
					}
					if who == ended && r.Status == 401 && strings.HasPrefix(c.route, "/api/v1/") && !strings.Contains(e.Error.Message, "session ended") {
						t.Errorf("ended session answered %q, want a message about the ended session", e.Error.Message)
					}
					if who == expired && r.Status == 401 && strings.HasPrefix(c.route, "/api/v1/") && !strings.Contains(e.Error.Message, "expired") {
						t.Errorf("expired token answered %q, want a message about expiry", e.Error.Message)
					}
				}
			})
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
