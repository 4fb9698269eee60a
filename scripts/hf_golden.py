#!/usr/bin/env python3
"""Golden greedy outputs from HF transformers for Shardline's parity test.

Loads SmolLM2-135M-Instruct from the same Q4_1 GGUF Shardline uses (transformers dequantizes it
to f32), greedily generates --max-new-tokens tokens for each case without stopping at EOS, and
records per step the chosen token id, its logprob and the top-K of log_softmax(logits) in f64.

Not run in CI (needs torch). Regenerate with:
    python3 -m venv .venv-dev && .venv-dev/bin/pip install torch transformers accelerate gguf numpy
    .venv-dev/bin/python scripts/hf_golden.py --gguf ~/.cache/shardline/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf

Prompts avoid multi-digit numbers: transformers' GGUF tokenizer conversion groups digits,
llama.cpp (and Shardline) split them, so such prompts would tokenize differently.
"""

import argparse
import hashlib
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CASES = [
    {"name": "plain_capital", "kind": "plain", "prompt": "The capital of France is"},
    {
        "name": "plain_paragraph",
        "kind": "plain",
        "prompt": "Photosynthesis is the process by which green plants use sunlight, water and carbon "
        "dioxide to make their own food. During this process, oxygen is released as a",
    },
    {"name": "code_fibonacci", "kind": "plain", "prompt": "def fibonacci(n):\n    "},
    {
        "name": "chat_user",
        "kind": "chat",
        "messages": [{"role": "user", "content": "What is the tallest mountain in the world?"}],
    },
    {
        "name": "chat_system",
        "kind": "chat",
        "messages": [
            {"role": "system", "content": "You are a pirate. Answer every question like a pirate."},
            {"role": "user", "content": "How do I bake bread?"},
        ],
    },
    {"name": "unicode", "kind": "plain", "prompt": "Café, naïve, 東京, emoji 🚀 and Ελληνικά:"},
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def greedy(model, prompt_ids, steps, top):
    ids = torch.tensor([prompt_ids])
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    logits = out.logits[0, -1]
    record = []
    for _ in range(steps):
        logp = torch.log_softmax(logits.double(), dim=-1)
        token = int(torch.argmax(logits))
        vals, idx = torch.topk(logp, top)
        record.append(
            {
                "token_id": token,
                "logprob": float(logp[token]),
                "top": [{"token_id": int(i), "logprob": float(v)} for v, i in zip(vals, idx)],
            }
        )
        out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
    return record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", default="crates/engine/tests/data/hf_golden_smollm2.json")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    d, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    cases = []
    for case in CASES:
        c = dict(case)
        if c["kind"] == "chat":
            c["rendered"] = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True)
            ids = tok(c["rendered"], add_special_tokens=False)["input_ids"]
        else:
            ids = tok(c["prompt"], add_special_tokens=True)["input_ids"]
        c["prompt_token_ids"] = ids
        c["steps"] = greedy(model, ids, args.max_new_tokens, args.top)
        text = tok.decode([s["token_id"] for s in c["steps"]])
        print(f"{c['name']}: {text!r}")
        cases.append(c)
    meta = {
        "generated_by": "scripts/hf_golden.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf_sha256": sha256(args.gguf),
        "dtype": "f32",
        "max_new_tokens": args.max_new_tokens,
        "top": args.top,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
