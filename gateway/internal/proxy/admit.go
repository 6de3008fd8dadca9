package proxy

import (
	"context"

	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/pkg/apierr"
)

// admit reserves the request's tokens against the key's and the user's limits. A panic in
// the quota tier costs this request a 500, nothing else.
func (c *call) admit() (err error) {
	if c.h.o.Quota == nil {
		return nil
	}
	defer func() {
		if v := recover(); v != nil {
			c.h.o.Panics.Record(panics.Admit, v, "request_id", c.reqID)
			err = apierr.New(apierr.Internal, "internal error")
		}
	}()
	t, err := c.h.o.Quota.Admit(context.Background(), c.key, c.fields.Reservation(int64(c.model.MaxOutputTokens)))
	if err != nil {
		return err
	}
	c.ticket = t
	return nil
}

// settle ends the ticket (once) with the tokens used.
func (c *call) settle(total int64) {
	t := c.ticket
	if t == nil {
		return
	}
	c.ticket = nil
	defer func() {
		if v := recover(); v != nil {
			c.h.o.Panics.Record(panics.Admit, v, "request_id", c.reqID)
		}
	}()
	t.Settle(total)
}
