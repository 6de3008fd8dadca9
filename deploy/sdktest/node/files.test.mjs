// The Files API (/v1/files, forwarded by the gateway to control) with the official OpenAI
// Node client. Run by deploy/deploytest with the environment described in compat.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { toFile } from 'openai';

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set (run this suite through deploy/deploytest)`);
  return v;
};
const client = () => new OpenAI({ baseURL: env('SDKTEST_BASE_URL'), apiKey: env('SDKTEST_API_KEY'), maxRetries: 0, timeout: 30_000 });
const line = JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] });
const dataset = `${line}\n${line}\n`;

test('files: upload, retrieve, list, download, delete', async () => {
  const c = client();
  const f = await c.files.create({ file: await toFile(Buffer.from(dataset), 'train.jsonl'), purpose: 'fine-tune' });
  assert.match(f.id, /^file-/);
  assert.equal(f.object, 'file');
  assert.equal(f.bytes, Buffer.byteLength(dataset));
  assert.equal(f.filename, 'train.jsonl');
  assert.equal(f.purpose, 'fine-tune');
  assert.equal(f.status, 'processed');

  const got = await c.files.retrieve(f.id);
  assert.equal(got.id, f.id);
  assert.equal(got.created_at, f.created_at);

  const ids = [];
  for await (const item of c.files.list({ purpose: 'fine-tune', limit: 1 })) ids.push(item.id);
  assert.ok(ids.includes(f.id), `list ${ids} lacks ${f.id}`);

  const content = await c.files.content(f.id);
  assert.equal(await content.text(), dataset);

  const del = await c.files.delete(f.id);
  assert.deepEqual({ id: del.id, object: del.object, deleted: del.deleted }, { id: f.id, object: 'file', deleted: true });
  await assert.rejects(c.files.content(f.id), (err) => err instanceof OpenAI.NotFoundError);
  await assert.rejects(c.files.retrieve(f.id), (err) => err instanceof OpenAI.NotFoundError);
});

test('files: an invalid dataset is refused with its line number', async () => {
  const bad = `${line}\n${line}\n${JSON.stringify({ messages: [{ role: 'bot', content: 'x' }] })}\n`;
  await assert.rejects(
    client().files.create({ file: await toFile(Buffer.from(bad), 'bad.jsonl'), purpose: 'fine-tune' }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, `${err}`);
      assert.match(err.message, /line 3: messages\[0\] has role "bot"/);
      assert.equal(err.param, 'file');
      assert.equal(err.code, 'invalid_file_format');
      return true;
    },
  );
});
