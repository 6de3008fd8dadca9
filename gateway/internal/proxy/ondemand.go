package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
)

// On-demand loading of LoRA adapters. A model with a base model (snapshot.Model.BaseModel)
// is an adapter that control places on the backends of its base, least recently used
// evicted; a request for one that no backend serves asks control to place it (the demand
// hook), then waits, counted as queued, until a snapshot shows a backend serving it, at
// most AdapterLoadTimeout and never past the request's own deadline. Only a request that
// found no backend at all for an adapter comes here: other models, and adapters loaded
// somewhere, never do.

// Placement is control's answer to a demand (POST /internal/v1/adapters/demand).
type Placement struct {
	Model       string   `json:"model"`
	BaseModel   string   `json:"base_model"`
	LoadedOn    []string `json:"loaded_on"`
	PlaceableOn []string `json:"placeable_on"`
}

// AdapterHook asks control to load an adapter that no backend serves. Demand returns
// errNotAdapter (wrapped) when control knows no placeable adapter of that name.
type AdapterHook interface {
	Demand(ctx context.Context, model string) (Placement, error)
}

// errNotAdapter: control's hook answered 404 (no placeable adapter of that name).
var errNotAdapter = errors.New("proxy: not a placeable adapter")

// demandEvery is the least time between two demands of one model by one gateway.
const demandEvery = time.Second

// maxDemands is the number of models whose last demand is kept before old ones are
// forgotten.
const maxDemands = 1024

// demandTimeout bounds one call of the hook.
const demandTimeout = 5 * time.Second

// demands coalesces the demands of one model: one call in flight per model, and its
// answer reused for demandEvery after it came. Safe for concurrent use.
type demands struct {
	hook AdapterHook
	now  func() time.Time
	mu   sync.Mutex
	last map[string]*demand // by model; bounded by the snapshot's adapters
}

type demand struct {
	done chan struct{} // closed when p and err are set
	at   time.Time     // when the answer came
	p    Placement
	err  error
}

// get returns the demand of model in flight, or the last one when younger than
// demandEvery, or starts a new one. The call runs on its own context: a client that
// leaves does not cut it short for the others.
func (d *demands) get(model string) *demand {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if x := d.last[model]; x != nil {
		select {
		case <-x.done:
			if now.Sub(x.at) < demandEvery {
				return x
			}
		default:
			return x // in flight
		}
	}
	if d.last == nil {
		d.last = map[string]*demand{}
	}
	if len(d.last) >= maxDemands { // forget answered demands past their reuse (deleted adapters)
		for name, x := range d.last {
			select {
			case <-x.done:
				if now.Sub(x.at) >= demandEvery {
					delete(d.last, name)
				}
			default:
			}
		}
	}
	x := &demand{done: make(chan struct{})}
	d.last[model] = x
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), demandTimeout)
		p, err := d.hook.Demand(ctx, model)
		cancel()
		d.mu.Lock()
		x.p, x.err, x.at = p, err, d.now()
		d.mu.Unlock()
		close(x.done)
	}()
	return x
}

// awaitAdapter is the answer to "no backend serves this adapter": demand it (coalesced),
// then wait until the pool sees a backend serving it. nil: dispatch may acquire again.
func (c *call) awaitAdapter(rc *fasthttp.RequestCtx, acq context.Context, noBackend error) error {
	h := c.h
	if h.demands.hook == nil {
		return noBackend
	}
	start := time.Now()
	bound := h.o.AdapterLoadTimeout
	if left := c.start.Add(h.o.RequestTimeout).Sub(h.o.Now()); left < bound {
		bound = left
	}
	ctx, cancel := context.WithTimeout(acq, bound)
	defer cancel()
	// A client that closes its connection ends the wait (the watch aborts the guard,
	// which cancels ctx); so does the end of the shutdown grace.
	if !c.guard.onAbort(cancel) {
		return c.waitEnded(context.Canceled, start)
	}
	defer c.guard.onAbort(nil)
	if c.watch == nil {
		c.watch = newClientWatch(&c.guard, h.o.BaseContext)
	}
	c.watch.arm(rc)
	defer c.watch.disarm()

	d := h.demands.get(c.model.Name)
	select {
	case <-d.done:
	case <-ctx.Done():
		return c.waitEnded(ctx.Err(), start)
	}
	switch {
	case errors.Is(d.err, errNotAdapter):
		h.m.adapterLoads.WithLabelValues("not_adapter").Inc()
		return &apierr.Error{Kind: apierr.NotFound, Param: "model", Code: "model_not_found",
			Message: "the model `" + c.model.Name + "` is not available: no backend serves it and it is no LoRA adapter that can be loaded", Err: d.err}
	case d.err != nil:
		h.m.adapterLoads.WithLabelValues("error").Inc()
		return &apierr.Error{Kind: apierr.Unavailable, Code: "adapter_not_loaded", RetryAfter: time.Second,
			Message: "the LoRA adapter `" + c.model.Name + "` is loaded on no backend and could not be loaded now; try again later", Err: d.err}
	case len(d.p.PlaceableOn) == 0:
		h.m.adapterLoads.WithLabelValues("not_placeable").Inc()
		return &apierr.Error{Kind: apierr.Unavailable, Code: "adapter_not_placeable",
			Message: "the LoRA adapter `" + c.model.Name + "` is loaded on no backend and none can load it: no healthy backend of its base model `" +
				d.p.BaseModel + "` has adapter slots", Err: noBackend}
	}
	if err := h.o.Pool.AwaitServed(ctx, c.model.Name); err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) {
			h.m.adapterLoads.WithLabelValues("queue_full").Inc()
			return err
		}
		return c.waitEnded(err, start)
	}
	h.m.adapterLoads.WithLabelValues("loaded").Inc()
	h.m.adapterWait.Observe(time.Since(start).Seconds())
	return nil
}

// waitEnded maps the end of an adapter's wait by its context: the client left, the
// shutdown grace ended, or the bound passed.
func (c *call) waitEnded(err error, start time.Time) error {
	h := c.h
	h.m.adapterWait.Observe(time.Since(start).Seconds())
	switch c.guard.aborted() {
	case abortClientGone:
		h.m.adapterLoads.WithLabelValues("client_gone").Inc()
		return &apierr.Error{Kind: apierr.ClientClosed, Message: "request cancelled while its LoRA adapter was being loaded", Err: err}
	case abortShutdown:
		h.m.adapterLoads.WithLabelValues("shutdown").Inc()
		return &apierr.Error{Kind: apierr.Unavailable, Message: "the gateway is shutting down", RetryAfter: time.Second, Err: err}
	}
	if h.o.BaseContext.Err() != nil { // a stream's base context ends with the shutdown grace
		h.m.adapterLoads.WithLabelValues("shutdown").Inc()
		return &apierr.Error{Kind: apierr.Unavailable, Message: "the gateway is shutting down", RetryAfter: time.Second, Err: err}
	}
	if errors.Is(err, context.Canceled) {
		h.m.adapterLoads.WithLabelValues("client_gone").Inc()
		return &apierr.Error{Kind: apierr.ClientClosed, Message: "request cancelled while its LoRA adapter was being loaded", Err: err}
	}
	h.m.adapterLoads.WithLabelValues("timeout").Inc()
	return &apierr.Error{Kind: apierr.Unavailable, Code: "adapter_load_timeout", RetryAfter: 5 * time.Second,
		Message: "the LoRA adapter `" + c.model.Name + "` is being loaded on a backend but was not ready in time; try again shortly", Err: err}
}

// controlHook is the AdapterHook of control's internal API.
type controlHook struct {
	c     *controlClient
	token string
}

func (k controlHook) Demand(ctx context.Context, model string) (Placement, error) {
	body, err := json.Marshal(map[string]string{"model": model})
	if err != nil {
		return Placement{}, err
	}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(k.c.scheme + "://" + k.c.host + "/internal/v1/adapters/demand")
	req.Header.SetContentType("application/json")
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.SetBodyRaw(body)
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(demandTimeout)
	}
	if err := k.c.hc.DoDeadline(req, resp, deadline); err != nil {
		return Placement{}, fmt.Errorf("demand adapter %s: %w", model, err)
	}
	b, err := resp.BodyUncompressed()
	if err != nil {
		return Placement{}, fmt.Errorf("demand adapter %s: %w", model, err)
	}
	switch st := resp.StatusCode(); st {
	case 200:
	case 404:
		return Placement{}, fmt.Errorf("demand adapter %s: %w", model, errNotAdapter)
	default:
		return Placement{}, fmt.Errorf("demand adapter %s: control answered %s", model, strconv.Itoa(st))
	}
	var p Placement
	if err := json.Unmarshal(b, &p); err != nil {
		return Placement{}, fmt.Errorf("demand adapter %s: %w", model, err)
	}
	return p, nil
}
