package backend

import (
	"errors"
	"net/url"
	"regexp"
	"slices"
	"time"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/registry"
)

// Routes adds the workers' internal endpoints and the operator endpoints to srv.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/internal/v1/backends/register", server.Internal, s.handleRegister)
	srv.Handle("POST", "/internal/v1/backends/{id}/heartbeat", server.Internal, s.handleHeartbeat)
	srv.Handle("POST", "/internal/v1/backends/{id}/deregister", server.Internal, s.handleDeregister)

	srv.Handle("GET", "/api/v1/backends", server.AdminOnly, s.handleList)
	srv.Handle("GET", "/api/v1/backends/{id}", server.AdminOnly, s.handleGet)
	srv.Handle("PATCH", "/api/v1/backends/{id}", server.AdminOnly, s.handlePatch)
}

var (
	idRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$`)
	modelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,255}$`)
	kinds   = []string{registry.KindVLLM, registry.KindSGLang, registry.KindTGI, registry.KindLlamaCPP,
		registry.KindOllama, registry.KindOpenAI, registry.KindSim}
	states = []string{registry.StateHealthy, registry.StateUnhealthy, registry.StateDraining}
)

// Heartbeat interval bounds.
const (
	DefaultHeartbeatInterval = 2 * time.Second
	MinHeartbeatInterval     = 50 * time.Millisecond
	MaxHeartbeatInterval     = 5 * time.Minute
)

func validModels(models []string) error {
	if len(models) > 1000 {
		return apierr.Param("models", "at most 1000 models")
	}
	for _, m := range models {
		if !modelRE.MatchString(m) {
			return apierr.Param("models", "model %q is not a valid model name", m)
		}
	}
	return nil
}

func validateRegister(r *registry.RegisterRequest) error {
	if !idRE.MatchString(r.ID) {
		return apierr.Param("id", "id must be 1 to 128 characters: letters, digits, '_', '.', ':', '@', '-'")
	}
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return apierr.Param("url", "url must be an http(s) URL of the engine")
	}
	if !slices.Contains(kinds, r.EngineKind) {
		return apierr.Param("engine_kind", "engine_kind must be one of vllm, sglang, tgi, llamacpp, ollama, openai, sim")
	}
	if len(r.Models) == 0 {
		return apierr.Param("models", "models must list at least one served model")
	}
	if err := validModels(r.Models); err != nil {
		return err
	}
	if r.Capacity == 0 {
		r.Capacity = 64
	}
	if r.Capacity < 1 || r.Capacity > 1_000_000 {
		return apierr.Param("capacity", "capacity must be from 1 to 1000000")
	}
	if r.HeartbeatIntervalMS == 0 {
		r.HeartbeatIntervalMS = int(DefaultHeartbeatInterval / time.Millisecond)
	}
	if d := time.Duration(r.HeartbeatIntervalMS) * time.Millisecond; d < MinHeartbeatInterval || d > MaxHeartbeatInterval {
		return apierr.Param("heartbeat_interval_ms", "heartbeat_interval_ms must be from %d to %d",
			MinHeartbeatInterval.Milliseconds(), MaxHeartbeatInterval.Milliseconds())
	}
	if len(r.WorkerVersion) > 100 {
		return apierr.Param("worker_version", "worker_version must have at most 100 characters")
	}
	return nil
}

func notFound(id string, err error) error {
	return &apierr.Error{Kind: apierr.NotFound, Message: "backend " + id + " is not registered", Code: registry.NotFoundCode, Err: err}
}

func storeErr(id string, err error) error {
	if errors.Is(err, ErrNotFound) {
		return notFound(id, err)
	}
	return apierr.Wrap(err, "backend %s", id)
}

func (s *Service) handleRegister(c *server.Call) error {
	var r registry.RegisterRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	if err := validateRegister(&r); err != nil {
		return err
	}
	b, err := s.Register(c.Ctx, r)
	if err != nil {
		return storeErr(r.ID, err)
	}
	s.log.Info("backend registered", "backend", b.ID, "engine_kind", b.EngineKind, "models", len(b.Models), "state", b.State)
	return c.JSON(200, b)
}

func (s *Service) handleHeartbeat(c *server.Call) error {
	id := c.Param("id")
	var h registry.HeartbeatRequest
	if err := c.Decode(&h); err != nil {
		return err
	}
	if h.State == "" {
		h.State = registry.StateHealthy
	}
	if !slices.Contains(states, h.State) {
		return apierr.Param("state", "state must be healthy, unhealthy or draining")
	}
	if h.Running < 0 || h.Waiting < 0 || h.InFlight < 0 {
		return apierr.Param("running_requests", "load figures must not be negative")
	}
	if h.KVCacheUsage < 0 || h.KVCacheUsage > 1 {
		return apierr.Param("kv_cache_usage", "kv_cache_usage must be from 0 to 1")
	}
	if h.Models != nil {
		if err := validModels(h.Models); err != nil {
			return err
		}
	}
	if h.AdapterSlots < 0 || h.AdapterSlots > 10000 {
		return apierr.Param("adapter_slots", "adapter_slots must be from 0 to 10000")
	}
	if len(h.Adapters) > h.AdapterSlots {
		return apierr.Param("adapters", "more adapters loaded than adapter_slots")
	}
	if err := validModels(h.Adapters); err != nil {
		return apierr.Param("adapters", "%s", err.(*apierr.Error).Message)
	}
	b, err := s.Heartbeat(c.Ctx, id, h)
	if err != nil {
		return storeErr(id, err)
	}
	if b.AdapterSlots > 0 && s.placer != nil {
		// A placement that fails leaves the worker's adapters as they are (no desired set).
		desired, err := s.placer.Desired(c.Ctx, b)
		if err != nil {
			s.log.Error("adapter placement", "backend", id, "err", err)
		} else {
			if desired == nil {
				desired = []registry.DesiredAdapter{}
			}
			b.DesiredAdapters = &desired
		}
	}
	return c.JSON(200, b)
}

func (s *Service) handleDeregister(c *server.Call) error {
	id := c.Param("id")
	if err := s.Deregister(c.Ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
		return storeErr(id, err)
	}
	s.log.Info("backend deregistered", "backend", id)
	return c.NoContent()
}

func (s *Service) handleList(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	list, err := s.List(c.Ctx, page.After, page.Limit)
	if err != nil {
		return apierr.Wrap(err, "list backends")
	}
	return c.JSON(200, server.NewList(list, page.Limit, func(b *registry.Backend) any { return b.ID }))
}

func (s *Service) handleGet(c *server.Call) error {
	id := c.Param("id")
	b, err := s.Get(c.Ctx, id)
	if err != nil {
		return storeErr(id, err)
	}
	return c.JSON(200, b)
}

type patchRequest struct {
	Weight   *int  `json:"weight"`
	Drain    *bool `json:"drain"`
	Disabled *bool `json:"disabled"`
}

func (s *Service) handlePatch(c *server.Call) error {
	id := c.Param("id")
	var req patchRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	if req.Weight != nil && (*req.Weight < 0 || *req.Weight > 10000) {
		return apierr.Param("weight", "weight must be from 0 to 10000")
	}
	b, err := s.Update(c.Ctx, id, Change(req))
	if err != nil {
		return storeErr(id, err)
	}
	s.log.Info("backend changed by operator", "backend", id, "weight", b.Weight, "state", b.State, "disabled", b.Disabled, "by", c.Principal.UserID)
	return c.JSON(200, b)
}
