#!/usr/bin/env python3
"""HF transformers on the same GPU and the same config as Shardline's GPU check: random weights,
bf16, `generate` (greedy, EOS ignored), decode tokens per second at the given batch sizes. It is
the naive baseline users compare against (vLLM's launch blog measured it at batch 1 and up).

    hf_gpu_baseline.py MODEL_DIR --batch 1 64 --prompt-tokens 128 --new-tokens 128

Prints one line per batch: `hf batch=N decode_tok_s=X prefill_s=Y`.
"""
import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()

    config = AutoConfig.from_pretrained(args.model_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16).eval()
    for batch in args.batch:
        ids = torch.randint(1000, config.vocab_size // 2, (batch, args.prompt_tokens), device="cuda")
        mask = torch.ones_like(ids)
        gen = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=mask)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **gen)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
        # Decode rate: tokens after the first, over the time after the prefill.
        rate = batch * (args.new_tokens - 1) / max(total - prefill, 1e-9)
        print(f"hf batch={batch} decode_tok_s={rate:.1f} prefill_s={prefill:.3f}", flush=True)


if __name__ == "__main__":
    main()
