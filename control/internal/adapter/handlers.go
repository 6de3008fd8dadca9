package adapter

import (
	"errors"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
)

// Routes adds the gateways' on-demand hook and the operators' placement list.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/internal/v1/adapters/demand", server.Internal, s.handleDemand)
	srv.Handle("GET", "/api/v1/adapters", server.AdminOnly, s.handleList)
}

func (s *Service) handleList(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	list, err := s.List(c.Ctx, page.After, page.Limit)
	if err != nil {
		return apierr.Wrap(err, "list adapters")
	}
	return c.JSON(200, server.NewList(list, page.Limit, func(a *Adapter) any { return a.Model }))
}

// DemandRequest is POST /internal/v1/adapters/demand.
type DemandRequest struct {
	Model string `json:"model"`
}

func (s *Service) handleDemand(c *server.Call) error {
	var r DemandRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	if r.Model == "" {
		return apierr.Param("model", "model is required")
	}
	p, err := s.Demand(c.Ctx, r.Model)
	if errors.Is(err, ErrNotFound) {
		return &apierr.Error{Kind: apierr.NotFound, Param: "model", Code: "model_not_found",
			Message: "The model `" + r.Model + "` is no placeable LoRA adapter.", Err: err}
	}
	if err != nil {
		return apierr.Wrap(err, "demand adapter")
	}
	return c.JSON(200, p)
}
