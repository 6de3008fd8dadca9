// Package server is control's HTTP layer: the only place the fasthttp.Server is configured,
// the router, authentication of callers (JWT, API key, or an identity signed by the gateway),
// role checks, request decoding, pagination and error writing.
//
// Domain packages (user, model, backend) register their handlers on a Server with the
// access each route needs; handlers return errors and one function writes them in the
// OpenAI error shape.
package server
