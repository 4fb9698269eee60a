#!/usr/bin/env bash
# The first thing to run on a GPU machine: from a bundle built elsewhere by
# scripts/gpu-bundle.sh (no cargo, no network needed here), check Shardline's CUDA path and
# print one table: kernels vs their CPU references, CPU f32 vs CUDA f32 greedy tokens on the same
# dummy weights, CUDA bf16 agreement, PP 2 on one GPU, TP 2, measured HBM bandwidth,
# Llama-3-8B-shaped bf16 decode speed at batch 1/8/64 against the bandwidth roofline, and HF
# transformers on the same GPU and config when torch is installed.
#
#   bash gpu-check.sh            # from the unpacked bundle folder; ~5-8 min on an H100/H200
#
# Needs: an NVIDIA driver (CUDA 13.0, driver 580+), python3, and the CUDA 13 runtime libraries
# (libcudart, libcublas(Lt), libcurand, libnccl): the nvidia-* wheels of a torch environment are
# found automatically, or set SHARDLINE_CUDA_LIBS=dir1:dir2.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${SHARDLINE_CHECK_DIR:-$here/check}"
mkdir -p "$work"
log="$work/log.txt"
: >"$log"
table="$work/table.md"
printf '| check | result |\n|---|---|\n' >"$table"
row() { printf '| %s | %s |\n' "$1" "$2" >>"$table"; printf '%-48s %s\n' "$1" "$2"; }
say() { echo "== $*" | tee -a "$log" >&2; }

# --- libraries: the wheels' lib folders ---
libs="${SHARDLINE_CUDA_LIBS:-}"
if [ -z "$libs" ]; then
  libs="$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
dirs = set()
for r in roots:
    for so in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
    for so in glob.glob(os.path.join(r, "torch", "lib", "lib*.so*")):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
EOF
)"
fi
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# --- binaries: decompressed once (the bundle carries them xz-compressed) ---
unpack() {
  local src="$here/bin/$1.xz" dst="$work/$1"
  [ -x "$dst" ] && return 0
  if command -v xz >/dev/null; then xz -dc "$src" >"$dst"; else python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$src" >"$dst"; fi
  chmod +x "$dst"
}
unpack shardline
unpack kernels-gpu-tests
sl="$work/shardline"
missing="$(ldd "$sl" | grep 'not found')"
if [ -n "$missing" ]; then
  row "libraries" "MISSING: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')(set SHARDLINE_CUDA_LIBS)"
fi
gpus="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
ngpu="$(echo "$gpus" | grep -c .)"
if [ "$ngpu" -gt 0 ]; then row "GPUs" "$ngpu × $(echo "$gpus" | head -1)"; else row "GPUs" "none found by nvidia-smi"; fi

# --- dummy models (configs + tokenizers covering their vocabularies) ---
for shape in small smollm2 llama3-8b; do
  [ -f "$work/models/$shape/tokenizer.json" ] || python3 "$here/scripts/dummy-model.py" "$work/models/$shape" "$shape"
done

# --- 1. kernels vs their CPU references ---
say "kernel tests"
out="$(timeout 300 "$work/kernels-gpu-tests" --test-threads 1 --nocapture 2>&1)"
echo "$out" >>"$log"
summary="$(echo "$out" | grep -E '^test result' | tail -1 | sed 's/^test result: //; s/; 0 measured.*//')"
failed="$(echo "$out" | grep -E '^test .* FAILED' | sed 's/^test //; s/ \.\.\. FAILED//' | tr '\n' ' ')"
skipped="$(echo "$out" | grep -c 'skipped: no CUDA device')"
[ "$skipped" -gt 0 ] && skipped=" ($skipped skipped: no CUDA device)" || skipped=""
row "kernels vs CPU references" "${summary:-did not run}${failed:+ FAILED: $failed}$skipped"
bw_out="$(timeout 120 "$work/kernels-gpu-tests" --ignored --nocapture bandwidth 2>&1)"
echo "$bw_out" >>"$log"
bw="$(echo "$bw_out" | grep -oE 'HBM copy bandwidth: [0-9.]+' | grep -oE '[0-9.]+$' | tail -1)"
row "HBM bandwidth (copy kernel, read+write)" "${bw:-n/a} GB/s"

# --- helpers over `shardline run` ---
run_json() { # model, extra flags... → JSON (one object) or empty
  local model="$1"; shift
  timeout 300 "$sl" run --model "$work/models/$model" --load-format dummy --random-prompt-tokens 48 \
    --max-tokens 32 --ignore-eos --logprobs 5 --output json --seed 1 "$@" 2>>"$log" | tail -1
}
compare() { # a.json b.json → "identical" / "k/n tokens agree, first difference at i" ; max |Δlogprob| of top-1
  python3 - "$1" "$2" <<'EOF'
import json, sys
try:
    a, b = (json.loads(open(p).read()) for p in sys.argv[1:3])
except Exception:
    print("no result: a run failed (see the log)"); sys.exit()
ta, tb = a["token_ids"], b["token_ids"]
same = sum(x == y for x, y in zip(ta, tb))
first = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
d = max((abs(x["logprob"] - y["logprob"]) for x, y in zip(a["logprobs"], b["logprobs"]) if x["token_id"] == y["token_id"]), default=0)
verdict = "identical" if first is None and len(ta) == len(tb) else f"{same}/{len(ta)} agree, first difference at token {first}"
print(f"{verdict}; max |Δ logprob| {d:.2e}")
EOF
}

# --- 2. CPU f32 vs CUDA f32, CUDA bf16 ---
for model in small smollm2; do
  say "parity $model"
  run_json "$model" --device cpu --dtype f32 >"$work/$model-cpu.json"
  run_json "$model" --device cuda --dtype f32 >"$work/$model-cuda-f32.json"
  run_json "$model" --device cuda --dtype bf16 >"$work/$model-cuda-bf16.json"
  row "$model: CPU f32 vs CUDA f32 greedy" "$(compare "$work/$model-cpu.json" "$work/$model-cuda-f32.json")"
  row "$model: CUDA bf16 vs CUDA f32" "$(compare "$work/$model-cuda-f32.json" "$work/$model-cuda-bf16.json")"
done

# --- 3. PP 2 and TP 2: over NCCL between GPUs, over TCP for ranks sharing one ---
# Each rank logs its links (`LINKS rank=… tp=nccl to_stage_1=tcp`) to the log.
links() { grep -oE 'LINKS rank=[0-9]+ .*' "$log" | tail -2 | sed 's/ gpu=[^ ]*//' | tr '\n' ' '; }
say "pp 2"
run_json smollm2 --device cuda --dtype f32 --pp 2 --devices 0,0 >"$work/pp2.json"
row "PP 2, both ranks on GPU 0 (f32, TCP link)" "$(compare "$work/smollm2-cuda-f32.json" "$work/pp2.json")"
say "tp 2"
run_json smollm2 --device cuda --dtype f32 --tp 2 --devices 0,0 >"$work/tp2-tcp.json"
row "TP 2, both ranks on GPU 0 (f32, TCP link)" "$(compare "$work/smollm2-cuda-f32.json" "$work/tp2-tcp.json")"
if [ "$ngpu" -ge 2 ]; then
  run_json smollm2 --device cuda --dtype f32 --pp 2 >"$work/pp2-nccl.json"
  row "PP 2 on GPUs 0,1 (f32, NCCL send/recv)" "$(compare "$work/smollm2-cuda-f32.json" "$work/pp2-nccl.json") $(links)"
  run_json smollm2 --device cuda --dtype f32 --tp 2 >"$work/tp2.json"
  row "TP 2 on GPUs 0,1 (f32, NCCL)" "$(compare "$work/smollm2-cuda-f32.json" "$work/tp2.json") $(links)"
else
  NCCL_MULTI_RANK_GPU_ENABLE=1 run_json smollm2 --device cuda --dtype f32 --tp 2 --devices 0,0 >"$work/tp2.json"
  if [ -s "$work/tp2.json" ]; then
    row "TP 2, both ranks on GPU 0 (NCCL_MULTI_RANK_GPU_ENABLE)" "$(compare "$work/smollm2-cuda-f32.json" "$work/tp2.json") $(links)"
  else
    why="$(grep -iE 'nccl|error' "$log" | tail -1 | cut -c1-160)"
    row "TP 2 over NCCL on one GPU" "refused: ${why:-see $log}"
  fi
fi

# --- 4. Llama-3-8B-shaped bf16 decode speed ---
decode_rate() { # batch → tok/s (aggregate for batch > 1)
  local out
  out="$(timeout 420 "$sl" run --model "$work/models/llama3-8b" --load-format dummy --device cuda --dtype bf16 \
    --random-prompt-tokens 128 --max-tokens 128 --ignore-eos --batch "$1" 2>&1)"
  echo "$out" | tail -5 >>"$log"
  if [ "$1" -eq 1 ]; then echo "$out" | grep -oE 'decode [0-9.]+ tok/s' | grep -oE '[0-9.]+' | tail -1
  else echo "$out" | grep -oE 'aggregate decode [0-9.]+' | grep -oE '[0-9.]+$'; fi
}
weight_bytes="$(python3 - "$work/models/llama3-8b/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
h, i, l, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
hd = h // c["num_attention_heads"]
layer = h * (c["num_attention_heads"] * hd + 2 * c["num_key_value_heads"] * hd) + c["num_attention_heads"] * hd * h + 3 * h * i + 2 * h
# Bytes a batch-1 decode step reads: every layer, the final norm and the LM head (the embedding
# table is looked up one row at a time).
print(2 * (l * layer + h + v * h))
EOF
)"
for batch in 1 8 64; do
  say "8B decode batch $batch"
  rate="$(decode_rate "$batch")"
  if [ "$batch" -eq 1 ] && [ -n "$rate" ] && [ -n "$bw" ]; then
    roof="$(python3 -c "print(f'{$bw * 1e9 / $weight_bytes:.0f}')")"
    frac="$(python3 -c "print(f'{100 * $rate / ($bw * 1e9 / $weight_bytes):.0f}')")"
    row "Llama-3-8B shape, bf16, batch 1" "${rate} tok/s = ${frac}% of the ${roof} tok/s roofline ($(python3 -c "print(f'{$weight_bytes/1e9:.2f}')") GB/step at ${bw} GB/s)"
  else
    row "Llama-3-8B shape, bf16, batch $batch" "${rate:+$rate tok/s}${rate:-failed (see $log)}"
  fi
done

# --- 5. HF transformers, same GPU, same config ---
if python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  say "hf baseline"
  hf="$(timeout 420 python3 "$here/scripts/hf_gpu_baseline.py" "$work/models/llama3-8b" --batch 1 64 2>>"$log")"
  echo "$hf" >>"$log"
  for batch in 1 64; do
    rate="$(echo "$hf" | grep "batch=$batch " | grep -oE 'decode_tok_s=[0-9.]+' | cut -d= -f2)"
    row "HF transformers generate, bf16, batch $batch" "${rate:+$rate tok/s}${rate:-failed (see $log)}"
  done
else
  row "HF transformers" "not run: no torch with CUDA here"
fi

echo
cat "$table"
echo "(full log: $log)"
