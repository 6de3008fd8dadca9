import fs from 'node:fs';
import OpenAI from 'openai';

// OPENAI_BASE_URL and OPENAI_API_KEY from the environment; the retries cover the new
// model's first seconds, before the worker has loaded it (503 with Retry-After).
const client = new OpenAI({ maxRetries: 8 });
const file = await client.files.create({ file: fs.createReadStream('train.jsonl'), purpose: 'fine-tune' });
let job = await client.fineTuning.jobs.create({ model: 'sim-chat', training_file: file.id, suffix: 'demo' });
while (!['succeeded', 'failed', 'cancelled'].includes(job.status)) {
  await new Promise((resolve) => setTimeout(resolve, 1000));
  job = await client.fineTuning.jobs.retrieve(job.id);
  const events = await client.fineTuning.jobs.listEvents(job.id, { limit: 1 });
  console.log(`${job.status}: ${events.data[0]?.message}`);
}
const model = job.fine_tuned_model;
const messages = [{ role: 'user', content: 'What is MaaS?' }];
const r = await client.chat.completions.create({ model, messages });
console.log(`${r.model}: ${r.choices[0].message.content}`);
for await (const chunk of await client.chat.completions.create({ model, messages, stream: true })) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? '');
}
console.log();
