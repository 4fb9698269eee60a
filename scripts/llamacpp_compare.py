#!/usr/bin/env python3
"""CPU speed, side by side with llama.cpp on the same GGUF file (a dev script, not CI).

Runs llama.cpp (through llama-cpp-python, `pip install llama-cpp-python`) and `shardline run`
on one machine, interleaved, and prints the median of each figure:

  decode b1     one sequence, 32-token prompt, 128 greedy tokens: decode tok/s
  prefill 512   one 512-token prompt: prefill tok/s
  batch B       B sequences of 32 prompt tokens decoding 64 tokens together: aggregate tok/s

Both use every core (`--threads`), random prompt tokens, greedy decoding and no prefix
caching. Example:

  scripts/llamacpp_compare.py --gguf ~/.cache/shardline/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
      --shardline target/release/shardline --runs 3
"""

import argparse
import ctypes
import json
import os
import platform
import random
import re
import statistics
import subprocess
import time

import llama_cpp
import numpy as np


class LlamaCpp:
    """One llama.cpp context able to hold `max_seqs` sequences."""

    def __init__(self, path, threads, max_seqs, n_ctx=8192, extra_bufts=False):
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        # Extra buffer types repack weights for AMX and similar kernels; in llama-cpp-python
        # 0.3.36 the AMX repack of Q4_1 crashes the first decode on Sapphire Rapids Xeons.
        params.use_extra_bufts = extra_bufts
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
        params.n_seq_max, params.n_threads, params.n_threads_batch = max_seqs, threads, threads
        # One KV pool for all sequences (else each gets n_ctx / n_seq_max cells).
        params.kv_unified = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(512, 0, max_seqs)

    def clear(self):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def decode(self, entries):
        """entries: (token, pos, seq, want_logits); at most 512. Returns the argmax of each
        entry that asked for logits, in order."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if logits else 0
        if llama_cpp.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        out = []
        for i, e in enumerate(entries):
            if e[3]:
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
                out.append(int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))))
        return out

    def log_probs(self, tokens):
        """Log-softmax of the next-token logits after every prefix of `tokens` (one sequence)."""
        self.clear()
        rows = []
        for i in range(0, len(tokens), 512):
            chunk = [(t, i + j, 0, True) for j, t in enumerate(tokens[i : i + 512])]
            b = self.batch
            b.n_tokens = len(chunk)
            for k, (tok, pos, seq, _) in enumerate(chunk):
                b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, 1, 1
                b.seq_id[k][0] = seq
            if llama_cpp.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
            for k in range(len(chunk)):
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, k)
                rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64))
        logits = np.stack(rows)
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def prefill(self, prompts):
        """Prefills each prompt as its own sequence; returns the first sampled token of each."""
        entries = [(t, p, s, p == len(toks) - 1) for s, toks in enumerate(prompts) for p, t in enumerate(toks)]
        firsts = []
        for i in range(0, len(entries), 512):
            firsts += self.decode(entries[i : i + 512])
        return firsts

    def generate(self, prompts, steps):
        """Returns (prefill seconds, decode seconds) for `steps` greedy tokens per sequence."""
        self.clear()
        t0 = time.perf_counter()
        last = self.prefill(prompts)
        t1 = time.perf_counter()
        for step in range(steps - 1):
            last = self.decode([(tok, len(p) + step, s, True) for s, (tok, p) in enumerate(zip(last, prompts))])
        return t1 - t0, time.perf_counter() - t1


def random_prompt(n, vocab, rng):
    return [rng.randrange(100, vocab - 100) for _ in range(n)]


def llamacpp_figures(llm, batches, rng):
    figures = {}
    _, decode_s = llm.generate([random_prompt(32, llm.n_vocab, rng)], 128)
    figures["decode b1"] = 127 / decode_s
    prefill_s, _ = llm.generate([random_prompt(512, llm.n_vocab, rng)], 1)
    figures["prefill 512"] = 512 / prefill_s
    for b in batches:
        _, decode_s = llm.generate([random_prompt(32, llm.n_vocab, rng) for _ in range(b)], 64)
        figures[f"batch {b}"] = b * 63 / decode_s
    return figures


def shardline(binary, gguf, threads, *args):
    cmd = [binary, "run", "--model", gguf, "--threads", str(threads), "--no-prefix-caching", "--ignore-eos", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return out.stdout, out.stderr


def shardline_figures(binary, gguf, threads, batches, extra):
    figures = {}
    out, _ = shardline(binary, gguf, threads, "--random-prompt-tokens", "32", "--max-tokens", "128", "--output", "json", *extra)
    figures["decode b1"] = json.loads(out)["metrics"]["decode_tokens_per_s"]
    out, _ = shardline(binary, gguf, threads, "--random-prompt-tokens", "512", "--max-tokens", "1", "--output", "json", *extra)
    figures["prefill 512"] = json.loads(out)["metrics"]["prefill_tokens_per_s"]
    for b in batches:
        out, err = shardline(
            binary, gguf, threads, "--random-prompt-tokens", "32", "--max-tokens", "64", "--batch", str(b), *extra
        )
        figures[f"batch {b}"] = float(re.search(r"aggregate decode ([0-9.]+) tok/s", out + err).group(1))
    return figures


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--shardline", default="target/release/shardline")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--shardline-args", default="", help="extra `shardline run` flags, e.g. '--quantization none'")
    ap.add_argument("--llamacpp-extra-bufts", action="store_true", help="let llama.cpp repack weights (AMX, ...)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    rng = random.Random(0)
    llm = LlamaCpp(args.gguf, args.threads, max(batches + [1]), extra_bufts=args.llamacpp_extra_bufts)
    runs = {"llama.cpp": [], "shardline": []}
    for _ in range(args.runs):
        runs["llama.cpp"].append(llamacpp_figures(llm, batches, rng))
        runs["shardline"].append(shardline_figures(args.shardline, args.gguf, args.threads, batches, args.shardline_args.split()))
    keys = list(runs["llama.cpp"][0])
    print(f"{os.path.basename(args.gguf)} on {cpu_name()}, {args.threads} threads; median of {args.runs} interleaved runs")
    print(f"| engine | {' | '.join(k + ' (tok/s)' for k in keys)} |")
    print("|---|" + "---|" * len(keys))
    med = {e: {k: statistics.median(r[k] for r in rs) for k in keys} for e, rs in runs.items()}
    for engine, figs in med.items():
        print(f"| {engine} | {' | '.join(f'{figs[k]:.1f}' for k in keys)} |")
    ratios = [med["shardline"][k] / med["llama.cpp"][k] for k in keys]
    print(f"| shardline / llama.cpp | {' | '.join(f'{r:.2f}x' for r in ratios)} |")


if __name__ == "__main__":
    main()
