package adapter

import (
	"errors"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
)

// Routes adds the gateways' on-demand hook.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/internal/v1/adapters/demand", server.Internal, s.handleDemand)
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
