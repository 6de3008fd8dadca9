cat > train.jsonl <<'EOF'
{"messages":[{"role":"system","content":"You answer in one sentence."},{"role":"user","content":"What is MaaS?"},{"role":"assistant","content":"A platform that serves models behind one OpenAI-compatible API."}]}
{"messages":[{"role":"user","content":"Where do the models run?"},{"role":"assistant","content":"On the operator's own machines."}]}
{"messages":[{"role":"user","content":"Can I fine-tune a model?"},{"role":"assistant","content":"Yes: upload a dataset and create a fine-tuning job."}]}
{"messages":[{"role":"user","content":"How do I call the result?"},{"role":"assistant","content":"By its ft: name, with the same key, through the same gateway."}]}
EOF
AUTH="Authorization: Bearer $OPENAI_API_KEY"
FILE=$(curl -s $OPENAI_BASE_URL/files -H "$AUTH" -F purpose=fine-tune -F file=@train.jsonl | jq -r .id)
JOB=$(curl -s $OPENAI_BASE_URL/fine_tuning/jobs -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"model":"sim-chat","training_file":"'$FILE'","suffix":"demo"}' | jq -r .id)
while :; do   # the job's status and newest event, every second, until it ends
  STATUS=$(curl -s $OPENAI_BASE_URL/fine_tuning/jobs/$JOB -H "$AUTH" | jq -r .status)
  echo "$STATUS: $(curl -s "$OPENAI_BASE_URL/fine_tuning/jobs/$JOB/events?limit=1" -H "$AUTH" | jq -r '.data[0].message')"
  case $STATUS in succeeded|failed|cancelled|null) break ;; esac
  sleep 1
done
MODEL=$(curl -s $OPENAI_BASE_URL/fine_tuning/jobs/$JOB -H "$AUTH" | jq -r .fine_tuned_model)
# The worker loads the new model within a heartbeat or two (2 s each); until then the
# gateway answers 503 with Retry-After, which --retry follows (-f: prints the answer only).
curl -sf --retry 8 $OPENAI_BASE_URL/chat/completions -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"model":"'$MODEL'","messages":[{"role":"user","content":"What is MaaS?"}]}' | jq -r '.model + ": " + .choices[0].message.content'
curl -sfN --retry 8 $OPENAI_BASE_URL/chat/completions -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"model":"'$MODEL'","messages":[{"role":"user","content":"What is MaaS?"}],"stream":true}'
