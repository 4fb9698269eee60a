#!/usr/bin/env python3
"""Predicted vs measured for `shardline plan` (docs/plan-validation.md).

Published: TensorRT-LLM's performance overview (trtllm-bench, max throughput, total output
tok/s): Llama-3.1-70B FP8 on H100 SXM at TP 1/2/4/8, and Llama-3.3-70B FP4 on RTX PRO 6000 at
PP 1/2/4/8. Own: an `experiment` report of launch/experiments/plan-validation.toml.

    python3 scripts/plan_validation.py --shardline target/release/shardline \
        [--experiment reports/plan-validation-*/report.json] [--hardware-h100 FILE]

Prints Markdown tables with each row's error, the median absolute error, and whether each
group's ranking of layouts matches. Nothing here runs on a GPU: the published side is the
vendor's table.
"""
import argparse, json, statistics, subprocess, sys

H100_70B_FP8 = {  # (ISL, OSL) -> {TP: output tok/s}
    (128, 128): {1: 3191, 2: 6183, 4: 10261, 8: 14686},
    (128, 2048): {1: 745, 2: 5822, 4: 11442, 8: 17464},
    (2048, 2048): {1: 358, 2: 2733, 4: 5640, 8: 8773},
    (2048, 128): {1: 316, 2: 748, 4: 1240, 8: 1840},
}
RTX_70B_FP4 = {(128, 128): {1: 3264, 2: 6172, 4: 9641, 8: 11881}}  # PP degree -> tok/s

# trtllm-bench's engine limits and KV rule (max batch 2048 requests, 8192 tokens per step,
# KV takes 90% of the memory free after weights and activations).
TRTLLM = ["--max-num-seqs", "2048", "--max-batch-tokens", "8192", "--kv-cache-free-fraction", "0.9"]


def plan(binary, args):
    out = subprocess.run([binary, "plan", "--output", "json", *args], capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[0]
    return json.loads(out.stdout), None


def layout_row(j, tp, pp):
    rows = [l for l in j["layouts"] if l["tp"] == tp and l["pp"] == pp and l["replicas"] == 1]
    return rows[0] if rows else None


def ranking(values):
    return [k for k, _ in sorted(values.items(), key=lambda kv: -kv[1])]


def published(binary, hw, model, weights, table, vary, extra):
    lines, errors, rankings_ok = [], [], []
    for (isl, osl), measured in table.items():
        predicted = {}
        for n, tok_s in measured.items():
            tp, pp = (n, 1) if vary == "tp" else (1, n)
            j, err = plan(binary, ["--model", model, "--gpus", str(n), "--hardware", hw, "--weights-dtype", weights,
                                   "--kv-dtype", "fp8", "--input-len", str(isl), "--output-len", str(osl),
                                   "--max-throughput", *TRTLLM, *extra])
            row = layout_row(j, tp, pp) if j else None
            if row is None or not row["fits"]:
                lines.append(f"| {isl}/{osl} | {vary.upper()} {n} | {tok_s:,} | does not fit ({err or row and row['why']}) | |")
                errors.append(1.0)
                continue
            p = row["output_tokens_per_s"]
            predicted[n] = p
            e = p / tok_s - 1
            errors.append(abs(e))
            lines.append(f"| {isl}/{osl} | {vary.upper()} {n} | {tok_s:,} | {p:,.0f} | {e * 100:+.0f}% |"
                         f" {row['kv_tokens']:,} KV tokens, {row['running_per_replica']} running, TPOT {row['tpot_ms']:.0f} ms |")
        ok = ranking(predicted) == ranking({k: v for k, v in measured.items() if k in predicted})
        rankings_ok.append(ok and len(predicted) == len(measured))
    return lines, errors, rankings_ok


def own(binary, report_path, hw):
    rep = json.load(open(report_path))
    lines, errors, rankings_ok = [], [], []
    by_c = {}
    for lay in rep["layouts"]:
        tp, pp = lay["tp"], lay["pp"]
        for run in lay["runs"]:
            c = run["concurrency"]
            j, err = plan(binary, ["--model", rep["config"]["model"]["name"], "--gpus", str(tp * pp), "--hardware", hw,
                                   "--input-len", str(run["input_len"]), "--output-len", str(run["output_len"]),
                                   "--concurrency", str(c)])
            row = layout_row(j, tp, pp)
            m, p = run["output_throughput"], row["output_tokens_per_s"]
            e = p / m - 1
            errors.append(abs(e))
            by_c.setdefault(c, ({}, {}))
            by_c[c][0][lay["name"]], by_c[c][1][lay["name"]] = m, p
            lines.append(f"| {lay['name']} | {c} | {m:.1f} | {p:.1f} | {e * 100:+.0f}% | {run['tpot_ms']['p50']:.1f} | {row['tpot_ms']:.1f} |"
                         f" {run['ttft_ms']['p50']:.0f} | {row['ttft_ms']:.0f} |")
    for c, (m, p) in sorted(by_c.items()):
        rankings_ok.append((c, ranking(m), ranking(p)))
    return lines, errors, rankings_ok


def fit_h100(binary, base):
    """Grid search of h100-sxm.toml's efficiency and overheads on the TP 8 column alone (the
    other 12 rows and the RTX PRO 6000 rows stay out of sample). Prints the best settings."""
    import itertools, math, os, re, tempfile
    text = open(base).read()
    tp8 = {k: {8: v[8]} for k, v in H100_70B_FP8.items()}
    best = None
    for compute, memory, step, layer in itertools.product(
            [0.4, 0.5, 0.6, 0.7], [0.6, 0.7, 0.8, 0.9], [400, 800, 1600, 3200], [5, 15, 40]):
        t = re.sub(r"(?m)^compute = .*$", f"compute = {compute}", text)
        t = re.sub(r"(?m)^memory = .*$", f"memory = {memory}", t)
        t = re.sub(r"(?m)^step_us = .*$", f"step_us = {step}", t)
        t = re.sub(r"(?m)^layer_us = .*$", f"layer_us = {layer}", t)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(t)
        _, errors, _ = published(binary, f.name, "llama-3.1-70b", "fp8", tp8, "tp", [])
        os.unlink(f.name)
        score = sum(math.log1p(e) ** 2 for e in errors)
        if best is None or score < best[0]:
            best = (score, compute, memory, step, layer, errors)
    print("best on TP 8: compute %.2f memory %.2f step_us %d layer_us %d; |errors| %s" % (
        best[1], best[2], best[3], best[4], ", ".join(f"{e * 100:.0f}%" for e in best[5])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit-h100", metavar="TOML", help="fit this H100 profile's factors on the TP 8 rows, then stop")
    ap.add_argument("--shardline", required=True)
    ap.add_argument("--experiment")
    ap.add_argument("--hardware-h100", default="h100-sxm")
    ap.add_argument("--hardware-rtx", default="rtx6000-pro")
    ap.add_argument("--hardware-cpu", default="cpu")
    a = ap.parse_args()
    if a.fit_h100:
        return fit_h100(a.shardline, a.fit_h100)
    lines, errors, ok = published(a.shardline, a.hardware_h100, "llama-3.1-70b", "fp8", H100_70B_FP8, "tp", [])
    print("| ISL/OSL | layout | published tok/s | predicted | error | predicted state |\n|---|---|---:|---:|---:|---|")
    print("\n".join(lines))
    print(f"\nH100 70B FP8: median |error| {statistics.median(errors) * 100:.1f}%, rankings right in {sum(ok)}/{len(ok)} rows\n")
    lines2, errors2, ok2 = published(a.shardline, a.hardware_rtx, "llama-3.3-70b", "int4", RTX_70B_FP4, "pp", [])
    print("| ISL/OSL | layout | published tok/s | predicted | error | predicted state |\n|---|---|---:|---:|---:|---|")
    print("\n".join(lines2))
    print(f"\nRTX PRO 6000 70B FP4: median |error| {statistics.median(errors2) * 100:.1f}%, ranking right: {all(ok2)}")
    allerr = errors + errors2
    print(f"All published rows: median |error| {statistics.median(allerr) * 100:.1f}%\n")
    if a.experiment:
        lines3, errors3, ranks = own(a.shardline, a.experiment, a.hardware_cpu)
        print("| layout | clients | measured out tok/s | predicted | error | TPOT p50 measured | predicted | TTFT p50 measured | predicted |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(lines3))
        print(f"\nOwn runs: median |error| {statistics.median(errors3) * 100:.1f}%, max {max(errors3) * 100:.1f}%")
        for c, m, p in ranks:
            print(f"c={c}: measured {' > '.join(m)}; predicted {' > '.join(p)}; winner {'right' if m[0] == p[0] else 'WRONG'}")


if __name__ == "__main__":
    sys.exit(main())
