package finetune

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/maas-platform/maas/control/internal/model"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// Fakes of the consumed interfaces.

type fakeFiles map[string]File

func (f fakeFiles) Get(_ context.Context, id string) (File, error) {
	if x, ok := f[id]; ok {
		return x, nil
	}
	return File{}, ErrFileNotFound
}

func (f fakeFiles) Open(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("")), nil
}

func (f fakeFiles) Create(context.Context, int64, string, string, []byte) (File, error) {
	return File{ID: "file-result"}, nil
}

type fakeModels struct{}

func (fakeModels) Get(_ context.Context, name string) (*model.Model, error) {
	if name != "base" {
		return nil, model.ErrNotFound
	}
	return &model.Model{Name: "base", Type: "chat", Visibility: "public", Enabled: true}, nil
}

func (fakeModels) Create(_ context.Context, m *model.Model) (*model.Model, error) { return m, nil }

// fakeQueue records what was enqueued; nothing works the jobs (the test calls the work).
type fakeQueue struct{ kinds []string }

func (q *fakeQueue) InsertTx(_ context.Context, _ pgx.Tx, args river.JobArgs, _ *river.InsertOpts) (*rivertype.JobInsertResult, error) {
	q.kinds = append(q.kinds, args.Kind())
	return &rivertype.JobInsertResult{}, nil
}

type nullBlobs struct{}

func (nullBlobs) Put(context.Context, string, io.Reader) (int64, error)     { return 0, nil }
func (nullBlobs) Get(context.Context, string) (io.ReadCloser, int64, error) { return nil, 0, nil }

// The validation job fails a job whose training file became unusable, with a code, a
// message and the param, and queues one whose files are fine.
func TestValidate(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('ft_owner', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	files := fakeFiles{
		"file-good": {ID: "file-good", UserID: uid, Purpose: PurposeFineTune, Bytes: 10, Lines: 3, Status: "processed"},
		"file-bad":  {ID: "file-bad", UserID: uid, Purpose: PurposeFineTune, Bytes: 10, Lines: 3, Status: "processed"},
		"file-val":  {ID: "file-val", UserID: uid, Purpose: PurposeFineTune, Bytes: 10, Lines: 1, Status: "processed"},
	}
	q := &fakeQueue{}
	s, err := New(pool, files, nullBlobs{}, fakeModels{}, q, Options{})
	if err != nil {
		t.Fatal(err)
	}
	owner := Caller{UserID: uid}
	create := func(train string, valid *string) *Job {
		t.Helper()
		j, err := s.Create(ctx, owner, &createRequest{Model: "base", TrainingFile: train, ValidationFile: valid})
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	good := create("file-good", ptr("file-val"))
	bad := create("file-bad", nil)
	gone := create("file-good", ptr("file-val"))
	if strings.Join(q.kinds, ",") != "finetune.validate,finetune.validate,finetune.validate" {
		t.Fatalf("enqueued %v", q.kinds)
	}

	// Between creation and validation: one file lost its examples, another was deleted.
	files["file-bad"] = File{ID: "file-bad", UserID: uid, Purpose: PurposeFineTune, Bytes: 10, Lines: 0, Status: "processed"}
	if err := s.validate(ctx, good.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.validate(ctx, bad.ID); err != nil {
		t.Fatal(err)
	}
	delete(files, "file-val")
	if err := s.validate(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id, status, code, param string
	}{
		{good.ID, StatusQueued, "", ""},
		{bad.ID, StatusFailed, "invalid_training_file", "training_file"},
		{gone.ID, StatusFailed, "invalid_validation_file", "validation_file"},
	} {
		j, err := s.Get(ctx, owner, c.id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status != c.status {
			t.Errorf("%s: status %s, want %s", c.id, j.Status, c.status)
		}
		if c.code == "" {
			if j.Error != nil {
				t.Errorf("%s: error %+v", c.id, j.Error)
			}
			continue
		}
		if j.Error == nil || j.Error.Code != c.code || j.Error.Param == nil || *j.Error.Param != c.param || j.Error.Message == "" || j.FinishedAt == nil {
			t.Errorf("%s: error %+v", c.id, j.Error)
		}
	}
	// Validating again changes nothing (River may run a job twice).
	if err := s.validate(ctx, good.ID); err != nil {
		t.Fatal(err)
	}
	var transitions int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM fine_tuning_job_transitions WHERE job_id = $1`, good.ID).Scan(&transitions); err != nil || transitions != 2 {
		t.Errorf("transitions of the queued job: %d (%v), want 2", transitions, err)
	}
}
