// Package sim is the platform's simulator engine: an OpenAI-compatible inference server
// that stands in for vLLM where there is no GPU (laptops, CI, benchmarks). It is labelled
// as a simulator everywhere it appears (owned_by in /v1/models, its logs).
//
// Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health,
// /metrics (vLLM's metric names), and vLLM's /v1/load_lora_adapter and
// /v1/unload_lora_adapter (runtime LoRA adapters, bounded by MAAS_SIM_MAX_LORAS slots; see
// lora.go for what is imitated and the one departure).
//
// Tokens. Prompt tokens are counted by a deterministic tokenizer (Tokens): every run of
// ASCII letters and digits is one token, every other non-space character (punctuation,
// symbols, each non-ASCII character) is one token, whitespace is not counted. A chat
// prompt costs 4 tokens per message plus its content's (and name's) tokens, plus 2 for the
// reply's priming. A completion prompt given as token ids counts its ids. Generated text
// is a sequence of words, one token each, so Tokens(output) == completion_tokens (unless a
// stop sequence cut the text).
//
// Completion length: max_tokens (max_completion_tokens for chat) caps a length drawn from
// the configured distribution; the draw is derived from the prompt, so the same request
// gives the same answer. finish_reason is "length" when the cap cut the answer, else "stop".
// With vLLM's ignore_eos the answer is exactly max_tokens long. Stop sequences (stop, a
// string or a list; an empty one is refused, as vLLM does) end the answer at the token that
// completes one: the text ends where the sequence begins, the tokens up to it are counted,
// finish_reason is "stop" (vLLM's detokenizer rule; vLLM's extra stop_reason field is not
// sent).
//
// Streams are shaped like vLLM's: a chat stream opens each choice with a role chunk, then
// sends one chunk per token; the chunk of a choice's last token carries its finish_reason
// (there is no separate empty finishing chunk; vLLM sends one only for the end-of-sequence
// token, which the simulator does not model). With stream_options.include_usage a last
// chunk with empty choices carries the usage, and the other chunks "usage":null; with
// continuous_usage_stats as well (vLLM's extension; ignored without include_usage, as vLLM
// does) every chunk carries the usage so far: its prompt's tokens and its choice's tokens.
// system_fingerprint is null in non-streamed answers and absent from chunks, as vLLM sends
// it by default; MAAS_SIM_SYSTEM_FINGERPRINT sets a value, sent as vLLM started with
// --fingerprint-mode does (answers, and a stream's usage chunk or finishing chunks).
//
// Writes: with no latency configured a stream is written as one body, the cheapest for the
// simulator; MAAS_SIM_FLUSH_EVERY_TOKEN (or any latency) writes and flushes every event on
// its own, one chunk each, as a real engine does.
//
// Metrics count like vLLM's: vllm:prompt_tokens_total when a request's first token is out
// (vLLM counts a prompt at the end of its prefill), vllm:generation_tokens_total as tokens
// are produced, whether or not the client stays for
// them (a stream the client dropped counts the tokens produced before the engine noticed);
// vllm:request_success_total and the latency histograms only requests that ran to the end.
//
// Load. At most MaxConcurrency requests run at once; the rest wait in a queue (as vLLM
// does), bounded by MaxQueue when set (503 beyond it). The running and waiting counts and
// a KV-cache usage estimate are on /metrics as vllm:num_requests_running,
// vllm:num_requests_waiting, vllm:gpu_cache_usage_perc and vllm:kv_cache_usage_perc.
//
// Failure injection: see ParseFailure for the X-Sim-Fail header and MAAS_SIM_FAIL syntax.
// MAAS_SIM_FAIL (with MAAS_SIM_FAIL_RATE) is set by whoever starts the simulator and always
// applies. The X-Sim-Fail request header is honoured only when the simulator was started
// with MAAS_SIM_FAIL_HEADER=true (Options.FailHeaderEnabled); by default it is ignored,
// because a gateway that forwarded a client's header would let any key holder make the
// engine fail and trip every gateway's breakers for it. Tests that inject per request
// turn it on; `make run` leaves it off.
package sim
