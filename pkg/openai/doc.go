// Package openai holds the OpenAI API wire types the platform speaks (chat completions,
// completions, embeddings, models, usage, stream chunks, the error envelope) and the
// server-sent-events framing of streamed responses: writing "data: {json}\n\n" events and
// the final "data: [DONE]\n\n", and reading them back.
//
// It uses the standard library only. Fields whose JSON form is a union (message content,
// prompt/input, stop, embedding vectors) have their own types that accept every form the
// API allows.
package openai
