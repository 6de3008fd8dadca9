package finetune

import (
	"context"
	"io"
	"time"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
	"github.com/maas-platform/maas/pkg/training"
)

// transferTimeout bounds a dataset download or an adapter upload.
const transferTimeout = 30 * time.Minute

// Routes adds the public fine-tuning API and the training workers' internal API to srv.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/v1/fine_tuning/jobs", server.Authenticated, s.handleCreate)
	srv.Handle("GET", "/v1/fine_tuning/jobs", server.Authenticated, s.handleList)
	srv.Handle("GET", "/v1/fine_tuning/jobs/{id}", server.Authenticated, s.handleGet)
	srv.Handle("POST", "/v1/fine_tuning/jobs/{id}/cancel", server.Authenticated, s.handleCancel)
	srv.Handle("GET", "/v1/fine_tuning/jobs/{id}/events", server.Authenticated, s.handleEvents)
	srv.Handle("GET", "/v1/fine_tuning/jobs/{id}/checkpoints", server.Authenticated, s.handleCheckpoints)

	srv.Handle("POST", "/internal/v1/fine_tuning/claim", server.Internal, s.handleClaim)
	srv.Handle("POST", "/internal/v1/fine_tuning/jobs/{id}/heartbeat", server.Internal, s.handleHeartbeat)
	srv.Handle("POST", "/internal/v1/fine_tuning/jobs/{id}/events", server.Internal, s.handlePostEvents)
	srv.Handle("POST", "/internal/v1/fine_tuning/jobs/{id}/checkpoints", server.Internal, s.handlePostCheckpoint)
	srv.HandleWith("GET", "/internal/v1/fine_tuning/jobs/{id}/files/{file_id}", server.Internal,
		server.RouteOptions{Timeout: transferTimeout}, s.handleFile)
	srv.HandleWith("PUT", "/internal/v1/fine_tuning/jobs/{id}/adapter", server.Internal,
		server.RouteOptions{MaxBody: s.opts.MaxAdapterBytes, Stream: true, Timeout: transferTimeout}, s.handlePutAdapter)
	srv.HandleWith("GET", "/internal/v1/fine_tuning/jobs/{id}/adapter", server.Internal,
		server.RouteOptions{Timeout: transferTimeout}, s.handleGetAdapter)
	srv.Handle("POST", "/internal/v1/fine_tuning/jobs/{id}/complete", server.Internal, s.handleComplete)
	srv.Handle("POST", "/internal/v1/fine_tuning/jobs/{id}/fail", server.Internal, s.handleFail)
}

func caller(c *server.Call) Caller {
	return Caller{UserID: c.Principal.UserID, Roles: c.Principal.Roles, Admin: c.Principal.IsAdmin()}
}

func (s *Service) handleCreate(c *server.Call) error {
	var r createRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	j, err := s.Create(c.Ctx, caller(c), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, j)
}

func (s *Service) handleList(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	jobs, err := s.List(c.Ctx, caller(c), page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(200, server.NewList(jobs, page.Limit, func(j *Job) any { return j.ID }))
}

func (s *Service) handleGet(c *server.Call) error {
	j, err := s.Get(c.Ctx, caller(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(200, j)
}

func (s *Service) handleCancel(c *server.Call) error {
	j, err := s.Cancel(c.Ctx, caller(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(200, j)
}

func (s *Service) handleEvents(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	ev, err := s.Events(c.Ctx, caller(c), c.Param("id"), page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(200, server.NewList(ev, page.Limit, func(e *Event) any { return e.ID }))
}

func (s *Service) handleCheckpoints(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	cp, err := s.Checkpoints(c.Ctx, caller(c), c.Param("id"), page.After, page.Limit)
	if err != nil {
		return err
	}
	l := server.NewList(cp, page.Limit, func(k *Checkpoint) any { return k.ID })
	first := any(nil)
	if len(l.Data) > 0 {
		first = l.Data[0].ID
	}
	return c.JSON(200, struct {
		server.List[*Checkpoint]
		FirstID any `json:"first_id"`
	}{l, first})
}

func lease(c *server.Call) string { return string(c.RC.Request.Header.Peek(training.LeaseHeader)) }

func (s *Service) handleClaim(c *server.Call) error {
	var r training.ClaimRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	if r.WorkerID == "" || len(r.WorkerID) > 128 || !textcheck.Valid(r.WorkerID) {
		return apierr.Param("worker_id", "worker_id must be 1 to 128 characters of valid UTF-8 without NUL")
	}
	if r.GPUs < 0 || r.LeaseSeconds < 0 {
		return apierr.Param("gpus", "gpus and lease_seconds must not be negative")
	}
	t, err := s.Claim(c.Ctx, r)
	if err != nil {
		return err
	}
	if t == nil {
		return c.NoContent()
	}
	return c.JSON(200, t)
}

func (s *Service) handleHeartbeat(c *server.Call) error {
	var r training.HeartbeatRequest
	if len(c.RC.PostBody()) > 0 {
		if err := c.Decode(&r); err != nil {
			return err
		}
	}
	out, err := s.Heartbeat(c.Ctx, c.Param("id"), lease(c))
	if err != nil {
		return err
	}
	return c.JSON(200, out)
}

func (s *Service) handlePostEvents(c *server.Call) error {
	var r training.EventsRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	if err := s.PostEvents(c.Ctx, c.Param("id"), lease(c), r); err != nil {
		return err
	}
	return c.NoContent()
}

func (s *Service) handlePostCheckpoint(c *server.Call) error {
	var r training.CheckpointRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	cp, err := s.PostCheckpoint(c.Ctx, c.Param("id"), lease(c), r)
	if err != nil {
		return err
	}
	return c.JSON(200, cp)
}

func (s *Service) handleFile(c *server.Call) error {
	return c.StreamBody("application/jsonl", func(ctx context.Context) (io.ReadCloser, int64, error) {
		return s.OpenFile(ctx, c.Param("id"), lease(c), c.Param("file_id"))
	})
}

func (s *Service) handlePutAdapter(c *server.Call) error {
	n, err := s.PutAdapter(c.Ctx, c.Param("id"), lease(c), c.BodyStream())
	if err != nil {
		return err
	}
	return c.JSON(200, map[string]any{"bytes": n})
}

func (s *Service) handleGetAdapter(c *server.Call) error {
	return c.StreamBody("application/x-tar", func(ctx context.Context) (io.ReadCloser, int64, error) {
		return s.OpenAdapter(ctx, c.Param("id"))
	})
}

func (s *Service) handleComplete(c *server.Call) error {
	var r training.CompleteRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	if err := s.Complete(c.Ctx, c.Param("id"), lease(c), r); err != nil {
		return err
	}
	return c.NoContent()
}

func (s *Service) handleFail(c *server.Call) error {
	var r training.FailRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	if err := s.Fail(c.Ctx, c.Param("id"), lease(c), r); err != nil {
		return err
	}
	return c.NoContent()
}
