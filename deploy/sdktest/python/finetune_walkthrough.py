import time

from openai import OpenAI

# OPENAI_BASE_URL and OPENAI_API_KEY from the environment; the retries cover the new
# model's first seconds, before the worker has loaded it (503 with Retry-After).
client = OpenAI(max_retries=8)
file = client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
job = client.fine_tuning.jobs.create(model="sim-chat", training_file=file.id, suffix="demo")
while job.status not in ("succeeded", "failed", "cancelled"):
    time.sleep(1)
    job = client.fine_tuning.jobs.retrieve(job.id)
    events = client.fine_tuning.jobs.list_events(job.id, limit=1)
    print(f"{job.status}: {events.data[0].message if events.data else ''}")
model = job.fine_tuned_model
messages = [{"role": "user", "content": "What is MaaS?"}]
r = client.chat.completions.create(model=model, messages=messages)
print(f"{r.model}: {r.choices[0].message.content}")
for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
