#!/usr/bin/env bash
# Linker wrapper for the `cuda` build (scripts/cuda-build.sh makes it cargo's linker): when a
# link asks for -lcuda, it first (re)builds a libcuda stub in $SHARDLINE_CUDA_LINK_DIR, then runs
# the real linker. Why: cudarc links libcuda dynamically, but libcuda comes only with a GPU driver
# (no PyPI wheel has it), so a GPU-less builder has nothing to link against. The stub exports the
# driver symbols the Rust code references -- the undefined `cu[A-Z]*` symbols of the cudarc and
# candle-core rlibs of this very build -- each `int SYMBOL(void){return 999;}` (999 is
# CUDA_ERROR_UNKNOWN), with soname libcuda.so.1 so the binary asks for the driver's real library.
# It is generated here, at link time, because only then do those rlibs exist.
# It is for linking, and for running `--device cpu` where no driver exists; never ship it.
set -euo pipefail
dir="${SHARDLINE_CUDA_LINK_DIR:?eval scripts/cuda-toolchain.sh first}"
linker="${SHARDLINE_CUDA_REAL_LINKER:-cc}"

needs_cuda=0 out=""
prev=""
for a in "$@"; do
  [ "$a" = "-lcuda" ] && needs_cuda=1
  [ "$prev" = "-o" ] && out="$a"
  prev="$a"
done
if [ "$needs_cuda" = 0 ] || [ -z "$out" ]; then
  exec "$linker" "$@"
fi

# rustc writes binaries into the deps folder, next to the rlibs they were built from; stale
# rlibs of older builds only add symbols, which a stub may export harmlessly.
deps="$(dirname "$out")"
shopt -s nullglob
rlibs=("$deps"/libcudarc-*.rlib "$deps"/libcandle_core-*.rlib)
shopt -u nullglob
[ "${#rlibs[@]}" -gt 0 ] || { echo "cuda-link: no cudarc/candle-core rlibs in $deps" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# nm complains about the rlibs' non-object members (lib.rmeta); those have no symbols anyway.
{ nm -u --format=just-symbols "${rlibs[@]}" 2>/dev/null || true; } |
  grep -E '^cu[A-Z][A-Za-z0-9_]*$' | sort -u |
  sed 's/.*/int &(void) { return 999; }/' >"$tmp/libcuda-stub.c"
[ -s "$tmp/libcuda-stub.c" ] || { echo "cuda-link: no cu* symbols found in ${rlibs[*]}" >&2; exit 1; }

mkdir -p "$dir"
# Rebuild only when the symbol set changed: repeated links leave the stub untouched.
if [ ! -f "$dir/libcuda.so.1" ] || ! cmp -s "$tmp/libcuda-stub.c" "$dir/libcuda-stub.c"; then
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so.1" "$tmp/libcuda-stub.c"
  mv "$tmp/libcuda-stub.c" "$dir/libcuda-stub.c"
  mv "$tmp/libcuda.so.1" "$dir/libcuda.so.1"
  ln -sfn libcuda.so.1 "$dir/libcuda.so"
  echo "cuda-link: libcuda stub with $(wc -l <"$dir/libcuda-stub.c") symbols in $dir" >&2
fi
exec "$linker" "$@"
