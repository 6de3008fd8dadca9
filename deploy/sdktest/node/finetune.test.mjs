// Fine-tuning (/v1/files and /v1/fine_tuning/jobs, forwarded by the gateway to control) with
// the official OpenAI Node client, and the fine-tuned model answering through the gateway.
// Run by deploy/deploytest with the environment described in compat.test.mjs, plus:
//   SDKTEST_FT_BASE_MODEL  a chat model served by a simulator with LoRA slots, trained by a
//                          `worker train` running the SIMULATED trainer (fast steps)
//   SDKTEST_FT_KEY         the key of a developer who owns the jobs
//   SDKTEST_FT_OTHER_KEY   the key of another developer
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { toFile } from 'openai';

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set (run this suite through deploy/deploytest)`);
  return v;
};
const client = (key) => new OpenAI({ baseURL: env('SDKTEST_BASE_URL'), apiKey: key, maxRetries: 0, timeout: 30_000 });
const base = env('SDKTEST_FT_BASE_MODEL');
const owner = client(env('SDKTEST_FT_KEY'));
const other = client(env('SDKTEST_FT_OTHER_KEY'));
const example = JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] });
const upload = async (lines, name) =>
  owner.files.create({ file: await toFile(Buffer.from(`${example}\n`.repeat(lines)), name), purpose: 'fine-tune' });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const isFinal = (s) => ['succeeded', 'failed', 'cancelled'].includes(s);

// eventually calls f until it returns a truthy value (or stops throwing), for up to ms.
async function eventually(what, ms, f) {
  const deadline = Date.now() + ms;
  for (;;) {
    let err;
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      err = e;
    }
    assert.ok(Date.now() < deadline, `not within ${ms} ms: ${what}${err ? ` (last error: ${err})` : ''}`);
    await sleep(50);
  }
}

async function waitStatus(id, status) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const j = await owner.fineTuning.jobs.retrieve(id);
    if (j.status === status) return j;
    assert.ok(!isFinal(j.status) && Date.now() < deadline, `job ${id} is ${j.status}, want ${status}: ${JSON.stringify(j.error)}`);
    await sleep(50);
  }
}

async function all(pages) {
  const out = [];
  for await (const item of pages) out.push(item);
  return out;
}

test('fine-tuning: an invalid dataset is refused with its line number', async () => {
  const bad = `${example}\n${JSON.stringify({ messages: [{ role: 'user', content: 'no answer' }] })}\n`;
  await assert.rejects(owner.files.create({ file: await toFile(Buffer.from(bad), 'bad.jsonl'), purpose: 'fine-tune' }), (err) => {
    assert.ok(err instanceof OpenAI.BadRequestError, `${err}`);
    assert.match(err.message, /line 2\b/);
    assert.equal(err.code, 'invalid_file_format');
    return true;
  });
});

test('fine-tuning: a job from upload to chat with the fine-tuned model; a running job cancelled', async (t) => {
  const train = await upload(2, 'train.jsonl');
  const long = await upload(100, 'long.jsonl'); // 100 examples × 50 epochs: 5,000 steps, cancelled long before
  const hyperparameters = { n_epochs: 2, batch_size: 1, learning_rate_multiplier: 2 };
  const job = await owner.fineTuning.jobs.create({
    model: base, training_file: train.id, suffix: 'node', seed: 7,
    method: { type: 'supervised', supervised: { hyperparameters } },
  });
  assert.match(job.id, /^ftjob-/);
  assert.equal(job.object, 'fine_tuning.job');
  assert.equal(job.status, 'validating_files');
  assert.equal(job.model, base);
  assert.equal(job.training_file, train.id);
  assert.equal(job.seed, 7);
  assert.equal(job.fine_tuned_model, null);
  assert.deepEqual({ ...job.method.supervised.hyperparameters, lora_rank: undefined, lora_alpha: undefined }, { ...hyperparameters, lora_rank: undefined, lora_alpha: undefined });
  assert.ok(job.method.supervised.hyperparameters.lora_rank > 0, 'LoRA rank defaulted');
  // Queued behind the first on the one training worker.
  const longJob = await owner.fineTuning.jobs.create({
    model: base, training_file: long.id, suffix: 'long',
    method: { type: 'supervised', supervised: { hyperparameters: { ...hyperparameters, n_epochs: 50 } } },
  });

  await t.test('retrieve and list, newest first, one per page', async () => {
    const got = await owner.fineTuning.jobs.retrieve(job.id);
    assert.equal(got.id, job.id);
    assert.equal(got.created_at, job.created_at);
    const first = await owner.fineTuning.jobs.list({ limit: 1 });
    assert.equal(first.data.length, 1);
    assert.equal(first.has_more, true);
    const ids = (await all(owner.fineTuning.jobs.list({ limit: 1 }))).map((j) => j.id);
    assert.deepEqual(ids, [longJob.id, job.id]);
    assert.deepEqual((await other.fineTuning.jobs.list()).data, []);
  });

  const done = await waitStatus(job.id, 'succeeded');
  const model = `ft:${base}:node:${job.id}`;
  assert.equal(done.fine_tuned_model, model);
  assert.ok(done.trained_tokens > 0, `trained_tokens ${done.trained_tokens}`);
  assert.equal(done.result_files.length, 1);
  assert.ok(done.finished_at >= done.created_at);
  assert.equal(done.error?.message ?? null, null);

  await t.test('events, newest first across pages', async () => {
    const events = await all(owner.fineTuning.jobs.listEvents(job.id, { limit: 3 }));
    assert.ok(events.length >= 8, `${events.length} events`);
    assert.equal(events[0].message, 'The job has successfully completed');
    assert.equal(events.at(-1).message, `Created fine-tuning job: ${job.id}`);
    assert.equal(new Set(events.map((e) => e.id)).size, events.length, 'an event listed twice across pages');
    for (let i = 1; i < events.length; i++) assert.ok(events[i].created_at <= events[i - 1].created_at, `event ${i} is newer than ${i - 1}`);
    const metrics = events.filter((e) => e.type === 'metrics');
    assert.equal(metrics.length, 4); // 2 examples × 2 epochs
    assert.equal(metrics[0].data.step, 4);
    assert.ok(metrics[0].data.train_loss > 0);
  });

  await t.test('checkpoints, one per epoch', async () => {
    const cps = (await owner.fineTuning.jobs.checkpoints.list(job.id)).data;
    assert.deepEqual(cps.map((c) => c.step_number), [4, 2]);
    for (const c of cps) {
      assert.equal(c.object, 'fine_tuning.job.checkpoint');
      assert.equal(c.fine_tuning_job_id, job.id);
    }
  });

  await t.test('chat with the fine-tuned model, not streamed and streamed', async () => {
    const messages = [{ role: 'user', content: 'Hi' }];
    const c = await eventually(`a chat completion from ${model}`, 20_000, () => owner.chat.completions.create({ model, messages, max_tokens: 4 }));
    assert.equal(c.model, model);
    assert.ok(c.choices[0].message.content.length > 0);
    assert.ok(c.usage.completion_tokens > 0);
    const stream = await owner.chat.completions.create({ model, messages, max_tokens: 4, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage;
    for await (const chunk of stream) {
      assert.equal(chunk.model, model);
      text += chunk.choices[0]?.delta?.content ?? '';
      usage ??= chunk.usage ?? undefined;
    }
    assert.ok(text.length > 0, 'streamed no text');
    assert.ok(usage?.completion_tokens > 0, `streamed usage ${JSON.stringify(usage)}`);
  });

  await t.test('another user sees neither the job nor the model', async () => {
    await assert.rejects(other.fineTuning.jobs.retrieve(job.id), (err) => err instanceof OpenAI.NotFoundError);
    await assert.rejects(other.fineTuning.jobs.listEvents(job.id), (err) => err instanceof OpenAI.NotFoundError);
    await assert.rejects(other.fineTuning.jobs.cancel(longJob.id), (err) => err instanceof OpenAI.NotFoundError);
    await assert.rejects(other.models.retrieve(model), (err) => err instanceof OpenAI.NotFoundError);
    // Calling it is refused as any restricted model the user may not use is (403).
    await assert.rejects(other.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 }), (err) => {
      assert.ok(err instanceof OpenAI.PermissionDeniedError, `${err}`);
      assert.equal(err.code, 'model_not_allowed');
      return true;
    });
  });

  await t.test('cancel a running job', async () => {
    await eventually(`a training step of ${longJob.id}`, 30_000, async () => {
      const page = await owner.fineTuning.jobs.listEvents(longJob.id, { limit: 1 });
      return page.data[0]?.type === 'metrics';
    });
    const cancelled = await owner.fineTuning.jobs.cancel(longJob.id);
    assert.equal(cancelled.status, 'cancelled');
    assert.equal((await owner.fineTuning.jobs.retrieve(longJob.id)).status, 'cancelled');
    await assert.rejects(owner.fineTuning.jobs.cancel(longJob.id), (err) => err instanceof OpenAI.BadRequestError);
  });
});
