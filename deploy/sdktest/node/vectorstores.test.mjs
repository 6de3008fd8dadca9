// Vector stores (/v1/vector_stores, forwarded by the gateway to control; ingestion embeds
// back through the gateway) with the official OpenAI Node client. Run by deploy/deploytest
// with the environment described in compat.test.mjs, plus SDKTEST_VECTOR_STORES=1 once that
// platform starts control with MAAS_GATEWAY_URL (ingestion needs it); skipped otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { toFile } from 'openai';

const enabled = process.env.SDKTEST_VECTOR_STORES === '1';
const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set (run this suite through deploy/deploytest)`);
  return v;
};
const client = () => new OpenAI({ baseURL: env('SDKTEST_BASE_URL'), apiKey: env('SDKTEST_API_KEY'), maxRetries: 0, timeout: 30_000 });

async function waitFile(c, storeID, fileID) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const f = await c.vectorStores.files.retrieve(fileID, { vector_store_id: storeID });
    if (f.status !== 'in_progress') return f;
    assert.ok(Date.now() < deadline, `file ${fileID} still in progress`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('vector stores: create, files, batches, search, delete', { skip: !enabled && 'SDKTEST_VECTOR_STORES is not 1' }, async () => {
  const c = client();
  const up = async (name, text) => (await c.files.create({ file: await toFile(Buffer.from(text), name), purpose: 'assistants' })).id;
  const owl = await up('owls.txt', 'Barn owls hunt at night and find mice by sound alone, even in complete darkness.');
  const moss = await up('moss.md', '# Moss\n\nMoss grows on the shady side of trees and holds rain water like a sponge.');
  const broken = await up('broken.pdf', '%PDF-1.7\n' + 'not really a pdf '.repeat(30));

  const vs = await c.vectorStores.create({ name: 'node', metadata: { suite: 'node' } });
  assert.match(vs.id, /^vs_/);
  assert.equal(vs.object, 'vector_store');
  assert.equal(vs.metadata.suite, 'node');

  const f = await c.vectorStores.files.create(vs.id, { file_id: owl, attributes: { animal: true, legs: 2 } });
  assert.equal(f.object, 'vector_store.file');
  assert.equal(f.vector_store_id, vs.id);
  assert.deepEqual(f.attributes, { animal: true, legs: 2 });
  assert.equal((await waitFile(c, vs.id, owl)).status, 'completed');

  const batch = await c.vectorStores.fileBatches.create(vs.id, { file_ids: [moss, broken] });
  assert.match(batch.id, /^vsfb_/);
  assert.equal(batch.object, 'vector_store.files_batch');
  assert.equal((await waitFile(c, vs.id, moss)).status, 'completed');
  const failed = await waitFile(c, vs.id, broken);
  assert.equal(failed.status, 'failed');
  assert.equal(failed.last_error.code, 'invalid_file');
  const b = await c.vectorStores.fileBatches.retrieve(batch.id, { vector_store_id: vs.id });
  assert.equal(b.status, 'completed');
  assert.deepEqual([b.file_counts.completed, b.file_counts.failed, b.file_counts.total], [1, 1, 2]);
  const batchFiles = [];
  for await (const x of c.vectorStores.fileBatches.listFiles(batch.id, { vector_store_id: vs.id })) batchFiles.push(x.id);
  assert.deepEqual(batchFiles.sort(), [moss, broken].sort());

  const listed = [];
  for await (const x of c.vectorStores.files.list(vs.id, { limit: 1 })) listed.push(x.id);
  assert.equal(listed.length, 3);

  const page = await c.vectorStores.search(vs.id, { query: 'how do owls find mice in the dark', max_num_results: 3 });
  assert.ok(page.data.length > 0, 'no search results');
  assert.equal(page.data[0].file_id, owl);
  assert.equal(page.data[0].filename, 'owls.txt');
  assert.equal(page.data[0].content[0].type, 'text');
  assert.ok(page.data[0].score > 0 && page.data[0].score <= 1);
  const filtered = await c.vectorStores.search(vs.id, { query: 'owls', filters: { type: 'eq', key: 'animal', value: false } });
  assert.equal(filtered.data.length, 0);

  const del = await c.vectorStores.files.delete(owl, { vector_store_id: vs.id });
  assert.equal(del.deleted, true);
  const after = await c.vectorStores.search(vs.id, { query: 'owls mice', max_num_results: 10 });
  assert.ok(!after.data.some((r) => r.file_id === owl), 'a detached file is still found');

  const gone = await c.vectorStores.delete(vs.id);
  assert.equal(gone.deleted, true);
  await assert.rejects(c.vectorStores.retrieve(vs.id), (err) => err instanceof OpenAI.NotFoundError);
});

test('vector stores: invalid requests name their parameter', { skip: !enabled && 'SDKTEST_VECTOR_STORES is not 1' }, async () => {
  const c = client();
  const vs = await c.vectorStores.create({ name: 'node-bad' });
  await assert.rejects(c.vectorStores.search(vs.id, { query: 'x', max_num_results: 51 }), (err) => {
    assert.ok(err instanceof OpenAI.BadRequestError, `${err}`);
    assert.equal(err.param, 'max_num_results');
    return true;
  });
  await assert.rejects(c.vectorStores.files.create(vs.id, { file_id: 'file-doesnotexist0000' }), (err) => {
    assert.ok(err instanceof OpenAI.BadRequestError, `${err}`);
    assert.equal(err.param, 'file_id');
    return true;
  });
  await c.vectorStores.delete(vs.id);
});
