package sim

import (
	"encoding/json"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/openai"
)

func (s *Sim) describe(m *model) openai.Model {
	out := openai.Model{ID: m.name, Object: openai.ObjectModel, Created: m.created, OwnedBy: OwnedBy,
		Root: m.root, MaxModelLen: s.o.MaxModelLen}
	if m.parent != "" {
		p := m.parent
		out.Parent = &p
	}
	return out
}

func (s *Sim) listModels(ctx *fasthttp.RequestCtx) {
	t := s.models.Load()
	list := openai.ModelList{Object: openai.ObjectList, Data: make([]openai.Model, 0, len(t.order))}
	for _, m := range t.order {
		list.Data = append(list.Data, s.describe(m))
	}
	writeJSON(ctx, 200, list)
}

func (s *Sim) getModel(ctx *fasthttp.RequestCtx, name string) {
	m := s.models.Load().byName[name]
	if m == nil {
		apierr.WriteFast(ctx, &apierr.Error{Kind: apierr.NotFound, Code: "model_not_found", Message: "The model `" + name + "` does not exist."})
		return
	}
	writeJSON(ctx, 200, s.describe(m))
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		apierr.WriteFast(ctx, apierr.Wrap(err, "marshal response"))
		return
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}
