#!/usr/bin/env bash
# Builds and links the `shardline` binary with `--features cuda` for sm_90 (H100/H200) on any
# x86-64 Linux machine, GPU or not, then smoke-tests it without a GPU. Why: GPU machines have no
# Rust and no network, so the binary is built here and carried there; CI builds it on every run
# so the CUDA path keeps linking, not only type-checking.
#   scripts/cuda-build.sh            # prints the binary's path last
# Everything slow is cached under $SHARDLINE_CI_CACHE (default ~/.cache/shardline-ci), outside
# the clone: the CUDA 13.0 wheels (cuda-toolchain/) and the cargo target dir (cuda-target/), so
# the ~20 min of candle's nvcc kernels are paid once per machine, not once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SHARDLINE_CI_CACHE:-$HOME/.cache/shardline-ci}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

# The binary always builds in the cache's own target dir, even where CARGO_TARGET_DIR is set for
# the CPU build: the two differ in features and linker and would rebuild each other's artifacts.
eval "$(env -u CARGO_TARGET_DIR scripts/cuda-env.sh)"

# Profile cuda-dist: release without fat LTO (see Cargo.toml).
start=$(date +%s)
cargo build --profile cuda-dist -p shardline --features cuda >&2
echo "cuda build: $(($(date +%s) - start)) s" >&2
bin="$CARGO_TARGET_DIR/cuda-dist/shardline"

echo "NEEDED of $bin:" >&2
readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p' >&2
echo "size: $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1))" >&2

# --- smoke test without a GPU: the stub stands in for the driver's libcuda ---
model="$cache/tiny-model"
if [ ! -f "$model/tokenizer.json" ]; then
  mkdir -p "$model"
  # A 2-layer Llama config (dummy weights) and a byte-level BPE tokenizer: 256 byte tokens + 4
  # specials, the same shapes as the tests' tiny models (crates/model/src/testing.rs).
  python3 - "$model" <<'EOF'
import json, sys
d = sys.argv[1]
json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 260, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 512, "tie_word_embeddings": True, "hidden_act": "silu",
           "bos_token_id": 256, "eos_token_id": 257}, open(f"{d}/config.json", "w"))
# GPT-2 byte alphabet: printable bytes map to themselves, the rest to U+0100 onwards.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
vocab = {chr(c): b for b, c in zip(bs, cs)}  # id = byte value
specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
vocab.update({s: 256 + i for i, s in enumerate(specials)})
bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
json.dump({"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}
                            for i, s in enumerate(specials)],
           "normalizer": None, "pre_tokenizer": bl, "post_processor": None, "decoder": bl,
           "model": {"type": "BPE", "dropout": None, "unk_token": None,
                     "continuing_subword_prefix": None, "end_of_word_suffix": None,
                     "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                     "vocab": vocab, "merges": []}}, open(f"{d}/tokenizer.json", "w"))
EOF
fi
run() {
  LD_LIBRARY_PATH="$SHARDLINE_CUDA_LD_LIBRARY_PATH_STUB" "$bin" run --model "$model" --load-format dummy \
    --prompt "hello" --max-tokens 3 --ignore-eos --output json "$@"
}
out="$(run --device cpu)" || { echo "cuda build: --device cpu failed: $out" >&2; exit 1; }
echo "--device cpu: $out" >&2
if err="$(run --device cuda 2>&1)"; then
  echo "cuda build: --device cuda succeeded on the libcuda stub?!" >&2
  exit 1
fi
echo "--device cuda (no GPU, expected to fail): $err" >&2
grep -q "no CUDA driver/GPU found" <<<"$err" || { echo "cuda build: that is not the plain-words error" >&2; exit 1; }

echo "$bin"
