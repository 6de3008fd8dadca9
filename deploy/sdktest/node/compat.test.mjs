// The official OpenAI Node client against a running MaaS gateway. deploy/deploytest starts
// the platform (control, gateway, simulator engine), runs `npm ci` here and then
// `node --test` with:
//   SDKTEST_BASE_URL      the gateway's base URL, /v1 included
//   SDKTEST_API_KEY       a key for every model
//   SDKTEST_LIMITED_KEY   a key with a small requests-per-minute limit
//   SDKTEST_CHAT_MODEL, SDKTEST_EMBEDDING_MODEL
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set (run this suite through deploy/deploytest)`);
  return v;
};
const baseURL = env('SDKTEST_BASE_URL');
const chatModel = env('SDKTEST_CHAT_MODEL');
const embeddingModel = env('SDKTEST_EMBEDDING_MODEL');
const client = (opts = {}) => new OpenAI({ baseURL, apiKey: env('SDKTEST_API_KEY'), maxRetries: 0, timeout: 30_000, ...opts });
const messages = [{ role: 'user', content: 'Say hello to the MaaS gateway.' }];

test('list models', async () => {
  const ids = [];
  for await (const m of client().models.list()) {
    assert.equal(m.object, 'model');
    ids.push(m.id);
  }
  assert.ok(ids.includes(chatModel), `models ${ids} lack ${chatModel}`);
  assert.ok(ids.includes(embeddingModel), `models ${ids} lack ${embeddingModel}`);
});

test('chat completion, not streamed', async () => {
  const c = await client().chat.completions.create({ model: chatModel, messages, max_tokens: 8 });
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.choices.length, 1);
  assert.equal(c.choices[0].message.role, 'assistant');
  assert.ok(c.choices[0].message.content.length > 0);
  assert.ok(['stop', 'length'].includes(c.choices[0].finish_reason));
  assert.ok(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);
});

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

test('chat completion, streamed with include_usage', async () => {
  const chunks = await collect(await client().chat.completions.create({
    model: chatModel, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  }));
  assert.ok(chunks.length >= 3, `only ${chunks.length} chunks`);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [], 'the usage chunk has no choices');
  assert.ok(last.usage.completion_tokens > 0);
  const text = chunks.flatMap((c) => c.choices.map((ch) => ch.delta.content ?? '')).join('');
  assert.ok(text.length > 0);
  assert.ok(chunks.slice(0, -1).every((c) => !c.usage), 'usage only on the last chunk');
});

test('chat completion, streamed without usage', async () => {
  const chunks = await collect(await client().chat.completions.create({ model: chatModel, messages, max_tokens: 8, stream: true }));
  assert.ok(chunks.length >= 2);
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.ok(!c.usage, 'no usage chunk unless asked');
    assert.equal(c.choices.length, 1);
  }
  assert.ok(chunks.at(-1).choices[0].finish_reason);
});

test('text completion', async () => {
  const c = await client().completions.create({ model: chatModel, prompt: 'Once upon a time', max_tokens: 8 });
  assert.equal(c.object, 'text_completion');
  assert.ok(c.choices[0].text.length > 0);
  assert.ok(c.usage.total_tokens > 0);
});

test('embeddings, float and base64 agree', async () => {
  const input = ['the quick brown fox', 'jumps over the lazy dog'];
  const asFloat = await client().embeddings.create({ model: embeddingModel, input, encoding_format: 'float' });
  // The client asks for base64 by default and decodes it to numbers.
  const asBase64 = await client().embeddings.create({ model: embeddingModel, input });
  assert.equal(asFloat.data.length, 2);
  assert.equal(asBase64.data.length, 2);
  for (let i = 0; i < 2; i++) {
    const f = asFloat.data[i].embedding, b = asBase64.data[i].embedding;
    assert.ok(Array.isArray(f) && f.length > 0 && typeof f[0] === 'number');
    assert.equal(b.length, f.length);
    for (let j = 0; j < f.length; j++) assert.ok(Math.abs(f[j] - b[j]) < 1e-6, `dimension ${j}: ${f[j]} vs ${b[j]}`);
  }
  assert.notDeepEqual(asFloat.data[0].embedding, asFloat.data[1].embedding);
  // Asking for base64 explicitly gives the raw string.
  const raw = await client().embeddings.create({ model: embeddingModel, input: input[0], encoding_format: 'base64' });
  assert.equal(typeof raw.data[0].embedding, 'string');
  assert.equal(Buffer.from(raw.data[0].embedding, 'base64').length, asFloat.data[0].embedding.length * 4);
});

test('invalid key is an AuthenticationError', async () => {
  const bad = client({ apiKey: 'sk-not-a-real-key-000000000000000000000000000' });
  await assert.rejects(bad.chat.completions.create({ model: chatModel, messages }), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 401);
    return true;
  });
});

test('unknown model is a NotFoundError', async () => {
  await assert.rejects(client().chat.completions.create({ model: 'no-such-model', messages }), (err) => {
    assert.ok(err instanceof OpenAI.NotFoundError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 404);
    return true;
  });
});

test('rate limit is a RateLimitError, and the client honours Retry-After', async () => {
  const limited = (maxRetries) => client({ apiKey: env('SDKTEST_LIMITED_KEY'), maxRetries });
  let limitErr;
  for (let i = 0; i < 100 && !limitErr; i++) {
    try {
      await limited(0).embeddings.create({ model: embeddingModel, input: 'x', encoding_format: 'float' });
    } catch (err) {
      limitErr = err;
    }
  }
  assert.ok(limitErr instanceof OpenAI.RateLimitError, `got ${limitErr?.constructor?.name}: ${limitErr?.message}`);
  assert.equal(limitErr.status, 429);
  const retryAfter = Number(limitErr.headers.get('retry-after'));
  assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
  // With retries on, the client waits as told and then succeeds.
  const start = Date.now();
  const ok = await limited(3).embeddings.create({ model: embeddingModel, input: 'x', encoding_format: 'float' });
  const waited = Date.now() - start;
  assert.equal(ok.data.length, 1);
  assert.ok(waited >= (retryAfter - 1) * 1000, `succeeded after ${waited} ms, Retry-After was ${retryAfter} s`);
});
