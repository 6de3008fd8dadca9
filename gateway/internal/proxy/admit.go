package proxy

import "context"

// admit reserves the request's tokens against the key's and the user's limits.
func (c *call) admit() error {
	if c.h.o.Quota == nil {
		return nil
	}
	t, err := c.h.o.Quota.Admit(context.Background(), c.key, c.fields.reservation(c.ep, c.model))
	if err != nil {
		return err
	}
	c.ticket = t
	return nil
}
