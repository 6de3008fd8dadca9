// Package reqbody reads an inference request body the way an engine will: it is the
// gateway's one reading of the fields it acts on (model, stream, stream_options, max_tokens,
// max_completion_tokens, n and the size of messages, prompt or input).
//
// Parse makes one pass over the body. It validates the whole body with encoding/json's
// grammar and nesting limit (RFC 8259), and in the same pass reads the top-level members
// with a real decoder's semantics, so that the gateway and the engine can never see two
// different requests in the same bytes:
//
//   - key names are compared after their escapes are decoded ("str\u0065am" is stream);
//   - keys are case-sensitive, as in Python engines (vLLM, SGLang: json + pydantic);
//     a key that differs from an interpreted one only in case ("Model", "STREAM", or the
//     Unicode folds "ſtream" and "max_toKens" with a Kelvin sign) is refused, because Go's
//     encoding/json, which our own simulator uses, matches such keys case-insensitively;
//   - an interpreted key that appears twice is refused: engines take the last one, a
//     byte scanner the first, and no answer is safe;
//   - every string in the body must be valid UTF-8, and no \u escape may decode to an
//     unpaired UTF-16 surrogate (Python keeps it and fails later; Go replaces it).
//
// What is refused is answered with a 400 (*apierr.Error) whose param names the field when
// it is known. Parse allocates nothing for a typical body: the Fields it returns point into
// the body (Model is copied only when it was written with escapes).
//
// Fields.Reservation is the token reservation for admission:
// n × (the larger of max_tokens and max_completion_tokens, else the model's output cap),
// once per prompt of a completions batch, plus a prompt estimate of one token per 4 bytes
// of the prompt field's JSON. The output part is an upper bound for an engine that honours
// those limits (when the body gives none, Rewrites sets max_tokens to the cap, so the
// engine is held to it); the prompt part is an estimate (JSON escapes, chat templates,
// tools and the tokenizer make it differ either way; the engine's context window bounds
// it), corrected to the engine's reported usage when the request ends.
//
// Fields.AppendRewrite writes the body an engine receives: stream_options.include_usage
// set for a stream (the engine then reports usage in its last chunk) and max_tokens set
// when the body gives no output limit; only those bytes change.
//
// Parse is safe for concurrent use; a Fields value is not (it is one request's).
package reqbody
