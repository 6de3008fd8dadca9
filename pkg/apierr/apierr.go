// Package apierr is the platform's one error vocabulary: a Kind decides the HTTP status and
// the OpenAI error "type"; the public message is kept apart from the cause that is logged.
//
// Every HTTP response that is an error, in every binary, is written by Write in OpenAI's
// shape: {"error":{"message","type","param","code"}}.
package apierr

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Kind classifies an error. The list is append-only.
type Kind uint8

const (
	Internal         Kind = iota // 500 api_error
	InvalidRequest               // 400 invalid_request_error
	Unauthenticated              // 401 authentication_error
	PermissionDenied             // 403 permission_error
	NotFound                     // 404 not_found_error
	Conflict                     // 409 conflict_error
	TooLarge                     // 413 invalid_request_error
	RateLimited                  // 429 rate_limit_exceeded
	QuotaExceeded                // 429 insufficient_quota
	Unavailable                  // 503 service_unavailable
	UpstreamTimeout              // 504 timeout
	BadGateway                   // 502 bad_gateway
	ClientClosed                 // 499 client_closed_request
	MethodNotAllowed             // 405 invalid_request_error
	Unprocessable                // 422 invalid_request_error
)

type kindInfo struct {
	status int
	typ    string
	code   string
}

var kinds = [...]kindInfo{
	Internal:         {500, "api_error", "internal_error"},
	InvalidRequest:   {400, "invalid_request_error", ""},
	Unauthenticated:  {401, "authentication_error", "invalid_api_key"},
	PermissionDenied: {403, "permission_error", "permission_denied"},
	NotFound:         {404, "not_found_error", "not_found"},
	Conflict:         {409, "conflict_error", "conflict"},
	TooLarge:         {413, "invalid_request_error", "request_too_large"},
	RateLimited:      {429, "rate_limit_error", "rate_limit_exceeded"},
	QuotaExceeded:    {429, "insufficient_quota", "insufficient_quota"},
	Unavailable:      {503, "service_unavailable", "service_unavailable"},
	UpstreamTimeout:  {504, "timeout_error", "upstream_timeout"},
	BadGateway:       {502, "bad_gateway", "bad_gateway"},
	ClientClosed:     {499, "client_closed_request", "client_closed_request"},
	MethodNotAllowed: {405, "invalid_request_error", "method_not_allowed"},
	Unprocessable:    {422, "invalid_request_error", "unprocessable_entity"},
}

// Status is the HTTP status of k.
func (k Kind) Status() int { return kinds[k].status }

// Type is the OpenAI error type of k.
func (k Kind) Type() string { return kinds[k].typ }

// Error is an error with a public face. Message and Param are shown to the client; Err is
// the cause, for logs only.
type Error struct {
	Kind       Kind
	Message    string
	Param      string
	Code       string        // overrides the Kind's default code when set
	RetryAfter time.Duration // sets Retry-After when > 0
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an Error of kind k with a formatted public message.
func New(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

// Param returns a 400 naming the offending field.
func Param(param, format string, args ...any) *Error {
	return &Error{Kind: InvalidRequest, Param: param, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an internal error whose public message is generic and whose cause is err.
func Wrap(err error, format string, args ...any) *Error {
	return &Error{Kind: Internal, Message: "internal error", Err: fmt.Errorf(format+": %w", append(args, err)...)}
}

// From returns err as an *Error, mapping anything else to an internal error.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Kind: Internal, Message: "internal error", Err: err}
}

// Body is the OpenAI error envelope.
type Body struct {
	Error BodyError `json:"error"`
}

// BodyError is the inside of the envelope.
type BodyError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// Envelope returns the JSON body for e.
func (e *Error) Envelope() []byte {
	info := kinds[e.Kind]
	b := Body{Error: BodyError{Message: e.Message, Type: info.typ}}
	if e.Param != "" {
		p := e.Param
		b.Error.Param = &p
	}
	code := info.code
	if e.Code != "" {
		code = e.Code
	}
	if code != "" {
		b.Error.Code = &code
	}
	out, _ := json.Marshal(b)
	return out
}

// Headers are the extra response headers for e (Retry-After).
func (e *Error) Headers() [][2]string {
	if e.RetryAfter > 0 {
		secs := int((e.RetryAfter + time.Second - 1) / time.Second)
		return [][2]string{{"Retry-After", strconv.Itoa(secs)}}
	}
	return nil
}
