// Package proxy is the gateway's request path for the OpenAI endpoints, and the forwarding
// of control-plane paths. Handlers return errors; one function (writeError) turns them
// into OpenAI error responses. Request bodies are scanned as bytes, never decoded whole.
//
// An inference request's life is a sequence of stages, a file each, run in order by serve
// (call.go):
//
//	authenticate  authorize.go  the API key, before the body is read (an anonymous request costs no scan);
//	                            on /v1/embeddings, a platform service's signed identity instead (onbehalf.go)
//	read          body.go       the body, read whole from the (streamed) connection, bounded by MaxBodyBytes
//	parse         parse.go      readRequest: every field of the body the gateway acts on
//	authorise     authorize.go  the model exists and the key may use it
//	admit         admit.go      the quota reservation
//	rewrite       rewrite.go    the body and headers a backend receives
//	dispatch      dispatch.go   one retry/failover loop; an attempt per backend
//	              ondemand.go   a LoRA adapter that no backend serves: control's demand hook, then a
//	                            wait (queued, bounded) for a snapshot in which a backend serves it
//	relay         relay.go      the answer to the client; the stream state machine
//	account       account.go    quota settlement, usage record, metrics, access log
//
// Every backend failure becomes the client's error in one place, judge (failure.go), for
// streamed and non-streamed requests alike: what is relayed, retried, sent again on a new
// connection, and counted against a backend's breaker.
// A streamed call outlives its handler: the stream writer (relay.go) runs on fasthttp's
// connection goroutine and finishes the call. A refused connection makes a backend
// Unreachable: its open breaker probes its port and closes as soon as it accepts again.
//
// Forwarded requests (forward.go) stream both bodies: the request's from the client to
// control, bounded per route (MAAS_FILES_MAX_BYTES for an upload), the answer's back to the
// client; each is counted and access-logged once its answer has been sent.
package proxy
