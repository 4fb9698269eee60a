#!/usr/bin/env python3
"""Writes a model directory for `--load-format dummy`: a config.json of a known shape and a
byte-level BPE tokenizer.json covering its whole vocabulary, so any generated id decodes.

Why: GPU checks and smoke tests run real shapes (up to Llama-3-8B) without downloading weights
or tokenizers; weights come from the config alone (crates/weights/src/dummy.rs).

    scripts/dummy-model.py DIR {tiny,small,smollm2,llama3-8b}
"""
import json
import os
import sys

SHAPES = {
    # The smoke test's toy (head_dim 16: CPU only, below the GPU kernels' 32).
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=260, max_position_embeddings=512,
                 tie_word_embeddings=True, rope_theta=10000.0),
    # Small but GPU-shaped: head_dim 64, GQA 2:1.
    "small": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=2048, max_position_embeddings=2048,
                  tie_word_embeddings=True, rope_theta=10000.0),
    # SmolLM2-135M: 9 query / 3 KV heads (uneven under TP), tied embeddings.
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                    tie_word_embeddings=True, rope_theta=100000.0),
    # Llama-3-8B (context capped at 8192 to keep the KV cache small).
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                      tie_word_embeddings=False, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def byte_alphabet():
    """GPT-2's byte alphabet: printable bytes map to themselves, the rest to U+0100 onwards."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer(vocab_size):
    alphabet = byte_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab.update({s: 256 + i for i, s in enumerate(SPECIALS)})
    # Filler pieces (a space and a number) up to the model's vocabulary: reachable by no merge,
    # but every id decodes to text.
    space = alphabet[ord(" ")]
    for i in range(256 + len(SPECIALS), vocab_size):
        vocab[f"{space}{i}"] = i
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": bl, "post_processor": None, "decoder": bl,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []}}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in SHAPES:
        sys.exit(f"usage: {sys.argv[0]} DIR {{{','.join(SHAPES)}}}")
    out, shape = sys.argv[1], SHAPES[sys.argv[2]]
    os.makedirs(out, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "rms_norm_eps": 1e-5, "bos_token_id": 256, "eos_token_id": 257, "torch_dtype": "bfloat16", **shape}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer(shape["vocab_size"]), f)


if __name__ == "__main__":
    main()
