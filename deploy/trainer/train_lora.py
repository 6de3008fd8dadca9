#!/usr/bin/env python3
"""Reference LoRA trainer for the MaaS platform's training workers (real GPUs).

A worker runs it through its command template (MAAS_TRAINER_COMMAND, see README.md here)
with the job's base model, datasets and hyperparameters. It trains a LoRA adapter on the
chat JSONL dataset (OpenAI's fine-tuning format), printing one JSON progress line per
logging step on standard output, and saves the adapter in PEFT's layout into
--output-dir. Everything else (warnings, library logs) goes to standard error; the worker
shows the last lines of it when the run fails.

Loss is computed on assistant turns only (and not on an assistant turn whose "weight" is
0), as OpenAI's fine-tuning does.

Not run in CI: it needs a GPU, torch, transformers, peft and datasets (requirements.txt).
"""

import argparse
import json
import math
import os
import sys

BASE_LEARNING_RATE = 2e-4  # scaled by --learning-rate-multiplier


def emit(obj):
    """One progress line for the worker."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Train a LoRA adapter on a chat JSONL dataset.")
    p.add_argument("--base-model", required=True, help="Hugging Face model id or local directory")
    p.add_argument("--training-file", required=True)
    p.add_argument("--validation-file", default="", help="empty: no validation")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--n-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--learning-rate-multiplier", type=float, default=1.0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default="all-linear",
                   help='comma-separated module names, or "all-linear"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--gradient-accumulation", type=int, default=1)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 weights (default: when the GPU supports it)")
    return p.parse_args(argv)


def read_jsonl(path):
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{os.path.basename(path)} line {n}: not JSON ({e.msg})")
            msgs = ex.get("messages") if isinstance(ex, dict) else None
            if not isinstance(msgs, list) or not msgs:
                raise SystemExit(f"{os.path.basename(path)} line {n}: no messages")
            examples.append(msgs)
    if not examples:
        raise SystemExit(f"{os.path.basename(path)}: no examples")
    return examples


def text_of(content):
    """A message content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def render(tokenizer, messages, add_generation_prompt=False):
    """Token ids of messages through the model's chat template (a plain one when it has none)."""
    msgs = [{"role": m.get("role", "user"), "content": text_of(m.get("content"))} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=add_generation_prompt)
        # Some versions answer a BatchEncoding rather than a list of ids.
        return ids["input_ids"] if hasattr(ids, "keys") else ids
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in msgs)
    if add_generation_prompt:
        text += "<|assistant|>\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def tokenize_example(tokenizer, messages, max_len):
    """input_ids and labels: labels are -100 except on the assistant turns to learn.

    A turn's tokens are found by rendering the conversation up to it (with the generation
    prompt) and up to its end: templates render a prefix of a conversation as a prefix of
    its tokens, which holds for the common chat templates.
    """
    ids = list(render(tokenizer, messages))
    labels = [-100] * len(ids)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or m.get("weight", 1) == 0:
            continue
        start = len(render(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(render(tokenizer, messages[: i + 1]))
        for k in range(start, min(end, len(ids))):
            labels[k] = ids[k]
    ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels}


def main(argv):
    args = parse_args(argv)

    # Imported here so that --help works without the libraries.
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback,
                              TrainingArguments)

    transformers.logging.set_verbosity_warning()
    transformers.set_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    train_rows = [tokenize_example(tokenizer, m, args.max_seq_len) for m in read_jsonl(args.training_file)]
    train_rows = [r for r in train_rows if any(l != -100 for l in r["labels"])]
    if not train_rows:
        raise SystemExit("no example has an assistant turn to learn (after truncation to --max-seq-len)")
    eval_rows = None
    if args.validation_file:
        eval_rows = [tokenize_example(tokenizer, m, args.max_seq_len) for m in read_jsonl(args.validation_file)]
        eval_rows = [r for r in eval_rows if any(l != -100 for l in r["labels"])] or None
    tokens_per_epoch = sum(len(r["input_ids"]) for r in train_rows)

    bf16 = args.bf16
    if bf16 is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else (torch.float16 if torch.cuda.is_available() else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.base_model, torch_dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    model.config.use_cache = False

    targets = args.target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha,
                                             lora_dropout=args.lora_dropout, target_modules=targets,
                                             bias="none", task_type="CAUSAL_LM"))

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        pad = tokenizer.pad_token_id
        ids = [r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in batch]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}

    class Progress(TrainerCallback):
        """Turns the Trainer's logs into the worker's JSON progress lines."""

        def __init__(self):
            self.last_loss = None

        def on_log(self, _args, state, _control, logs=None, **_):
            logs = logs or {}
            line = {"step": state.global_step, "total_steps": state.max_steps}
            if "loss" in logs and math.isfinite(logs["loss"]):
                self.last_loss = round(float(logs["loss"]), 6)
                line["loss"] = self.last_loss
            elif "eval_loss" in logs and math.isfinite(logs["eval_loss"]):
                # Same step as the last training log: carry its loss so neither is lost.
                if self.last_loss is not None:
                    line["loss"] = self.last_loss
                line["val_loss"] = round(float(logs["eval_loss"]), 6)
            else:
                return
            emit(line)

        def on_epoch_end(self, _args, state, _control, **_):
            emit({"message": f"Epoch {round(state.epoch or 0)}/{args.n_epochs} done (step {state.global_step}/{state.max_steps})"})

    training_args = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(args.output_dir)), "trainer-state"),
        num_train_epochs=args.n_epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation,
        learning_rate=BASE_LEARNING_RATE * args.learning_rate_multiplier,
        lr_scheduler_type="linear",
        warmup_ratio=0.03,
        logging_steps=args.logging_steps,
        eval_strategy="epoch" if eval_rows else "no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=bf16,
        fp16=(not bf16) and torch.cuda.is_available(),
        seed=args.seed,
        remove_unused_columns=False,
    )
    emit({"message": f"Training {len(train_rows)} examples ({tokens_per_epoch} tokens) for {args.n_epochs} epochs on {args.base_model}"})
    trainer = Trainer(model=model, args=training_args, train_dataset=Dataset.from_list(train_rows),
                      eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                      data_collator=collate, callbacks=[Progress()])
    trainer.train()

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)  # adapter_config.json + adapter_model.safetensors
    tokenizer.save_pretrained(args.output_dir)
    emit({"trained_tokens": tokens_per_epoch * args.n_epochs})
    emit({"message": "Adapter saved"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
