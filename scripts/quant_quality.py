#!/usr/bin/env python3
"""llama.cpp's own quantization error, for comparison with Shardline's (a dev script).

The Rust example scores Shardline's block-format path against its f32 path and writes the
token ids it used; this scores llama.cpp's quantized file against an F32 copy of it
(`scripts/gguf_to_f32.py`) on exactly those tokens, teacher-forced, with the same figures:
greedy agreement and KL(p_f32 || p_quantized) per position.

  cargo run --release -p shardline --example quant_quality -- smollm2-135m /tmp/tokens.json
  scripts/gguf_to_f32.py MODEL.Q4_1.gguf /tmp/model.f32.gguf
  scripts/quant_quality.py --quantized MODEL.Q4_1.gguf --f32 /tmp/model.f32.gguf --tokens /tmp/tokens.json
"""

import argparse
import json
import os

import numpy as np

from llamacpp_compare import LlamaCpp


def all_log_probs(path, sequences):
    llm = LlamaCpp(path, threads=os.cpu_count(), max_seqs=1, n_ctx=1024)
    return [llm.log_probs(tokens) for tokens in sequences]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantized", required=True)
    ap.add_argument("--f32", required=True)
    ap.add_argument("--tokens", required=True)
    args = ap.parse_args()
    sequences = json.load(open(args.tokens))
    want, got = all_log_probs(args.f32, sequences), all_log_probs(args.quantized, sequences)
    agree, kls = 0, []
    for w, g in zip(want, got):
        agree += int((w.argmax(axis=1) == g.argmax(axis=1)).sum())
        kls.extend((np.exp(w) * (w - g)).sum(axis=1).tolist())
    kls.sort()
    total = len(kls)
    print(
        f"llama.cpp {args.quantized.split('/')[-1]}: {len(sequences)} texts, {total} positions | "
        f"greedy agreement {100 * agree / total:.1f}% | KL mean {np.mean(kls):.5f} "
        f"p99 {kls[min(total * 99 // 100, total - 1)]:.5f} nats"
    )


if __name__ == "__main__":
    main()
