#!/usr/bin/env bash
# One GPU check of issue 12, in one go (about 4 minutes on one H100/H200; every step has a
# timeout, 10 minutes in all at worst), the slowest steps last so a cut-short run still reports:
#   1. the CUDA tests (pytest -m cuda torch_impl)
#   2. the seed protocol (100 retrieval + 100 ranking epochs + evaluation) on cuda in fp32 (the
#      default: CUDA graphs on), eager (--no-cuda-graphs), in bf16, then with --compile
#      (compilation counted in its time)
#   3. the same protocol on this machine's CPU, with 10 + 10 epochs; its fit times are scaled
#      by 10 for the ratio (epochs cost the same; the evaluation is not scaled)
#   4. python -m benchmarks.gpu_step: the steady-state retrieval step at batch 2,048 (eager,
#      CUDA graph, bf16 graph, compiled, compiled graph) against its kernel floors
# and prints one table: wall time of each stage, top-100, ranking accuracy, nDCG@10 (from
# results.json of each `twostage run`). Without a CUDA device it runs nothing heavy and exits 2.
#
#   benchmarks/device_check.sh            # data: TWOSTAGE_DATA_DIR, else ../shared/data/ml-100k
#   OUT=dir benchmarks/device_check.sh    # run folders and logs under dir (default: a temp dir)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "device_check: no CUDA device visible to torch on this machine; nothing run." >&2
    echo "Run it on a GPU machine (the CUDA tests skip here and the GPU figures are unmeasured)." >&2
    exit 2
fi

DATA=${TWOSTAGE_DATA_DIR:-}
for candidate in "$DATA" ../shared/data/ml-100k shared/data/ml-100k "${TWOSTAGE_CACHE:-$HOME/.cache/twostage}/ml-100k"; do
    if [ -n "$candidate" ] && [ -f "$candidate/u.data" ]; then DATA=$candidate; break; fi
done
if [ -z "$DATA" ] || [ ! -f "$DATA/u.data" ]; then
    echo "device_check: no ml-100k folder (set TWOSTAGE_DATA_DIR to a folder with u.data)" >&2
    exit 2
fi
export TWOSTAGE_DATA_DIR=$DATA
OUT=${OUT:-$(mktemp -d -t device_check.XXXXXX)}
mkdir -p "$OUT"
echo "device_check: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)'); data $DATA; output $OUT"

start=$(date +%s.%N)
timeout 120 "$PY" -m pytest -q -m cuda torch_impl -p no:cacheprovider > "$OUT/pytest_cuda.log" 2>&1
echo "pytest_rc=$?" >> "$OUT/pytest_cuda.log"
echo "pytest_seconds=$("$PY" -c "import time; print(round(time.time() - $start, 1))")" >> "$OUT/pytest_cuda.log"

run() {  # name, timeout, then twostage run flags
    local name=$1 limit=$2; shift 2
    local t0; t0=$(date +%s.%N)
    timeout "$limit" "$PY" -m twostage run --backend torch --out "$OUT/$name" --quiet "$@" \
        > "$OUT/$name.log" 2>&1
    echo "rc=$? wall_s=$("$PY" -c "import time; print(round(time.time() - $t0, 1))")" >> "$OUT/$name.log"
}
run cuda_fp32     60 --device cuda
run cuda_eager    80 --device cuda --no-cuda-graphs
run cuda_bf16     60 --device cuda --precision bf16
run cpu_fp32_10ep 80 --device cpu --retrieval-epochs 10 --ranking-epochs 10
step() {  # name, timeout, then benchmarks.gpu_step flags
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$PY" -m benchmarks.gpu_step --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
    echo "rc=$?" >> "$OUT/$name.log"
}
step gpu_step 120 --kinds eager graphs graphs-bf16
run cuda_compile 150 --device cuda --compile
step gpu_step_compile 150 --kinds compile graphs-compile

"$PY" - "$OUT" <<'PYEOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
log = (out / "pytest_cuda.log").read_text()
summary = [l for l in log.splitlines() if re.search(r"\b(passed|failed|error|skipped)\b", l)]
seconds = (re.findall(r"pytest_seconds=(\S+)", log) or ["?"])[-1]
print(f"\npytest -m cuda torch_impl: {summary[-1] if summary else 'no summary'}  "
      f"({seconds} s; log {out / 'pytest_cuda.log'})")
rows = [("cuda_fp32", 1), ("cuda_eager", 1), ("cuda_bf16", 1), ("cuda_compile", 1),
        ("cpu_fp32_10ep", 10)]
head = f"{'run':<16}{'setup s':>8}{'retrieval s':>12}{'ranking s':>11}{'eval s':>8}{'total s':>9}" \
       f"{'top-100':>9}{'rank acc':>10}{'nDCG@10':>9}{'CPU/this':>10}{'process s':>11}"
print(head); print("-" * len(head))
cpu_total = None
results = {}
for name, scale in rows:
    path = out / name / "results.json"
    if not path.is_file():
        tail = (out / f"{name}.log").read_text().strip().splitlines()[-3:]
        results[name] = "FAILED: " + " | ".join(tail)
        continue
    r = json.loads(path.read_text())["torch"]
    t = r["timings_s"]
    fit_r, fit_k = t["retrieval_fit"] * scale, t["ranking_fit"] * scale
    total = t.get("setup", 0.0) + fit_r + fit_k + t["evaluation"]
    wall = (re.findall(r"wall_s=(\S+)", (out / f"{name}.log").read_text()) or ["?"])[-1]
    results[name] = (r, t.get("setup", 0.0), fit_r, fit_k, t["evaluation"], total, wall)
    if name.startswith("cpu"):
        cpu_total = total
for name, value in results.items():
    if isinstance(value, str):
        print(f"{name:<16}{value}")
        continue
    r, setup, fit_r, fit_k, ev, total, wall = value
    ratio = f"{cpu_total / total:.1f}x" if cpu_total else "-"
    label = name + (" *" if name.startswith("cpu") else "")
    print(f"{label:<16}{setup:>8.1f}{fit_r:>12.1f}{fit_k:>11.1f}{ev:>8.1f}{total:>9.1f}"
          f"{r['retrieval']['top_k_accuracy']['100']:>9.4f}{r['ranking']['binary_accuracy']:>10.4f}"
          f"{r['two_stage']['ndcg@10_reranked']:>9.4f}{ratio:>10}{wall:>11}")
print("* CPU: 10 + 10 epochs; its fit times x10 for the 100 + 100 protocol (evaluation as "
      "measured); its quality figures are those of 10 + 10 epochs, not comparable.")
print("total s: setup (imports, device start-up, models) + fit + evaluation (timings_s of "
      "results.json); process s: the whole `twostage run` process (also Python start-up, "
      "data, baselines, writing the run folder).")
print("Targets (issue 12): fp32 total <= 10 s, top-100 >= 0.27, ranking accuracy >= 0.69.")
for name in ("gpu_step", "gpu_step_compile"):
    lines = (out / f"{name}.log").read_text().splitlines() if (out / f"{name}.log").is_file() else []
    start = next((i for i, l in enumerate(lines) if l.startswith("retrieval step at batch")), None)
    print(f"\n{name}:", *(lines[start:] if start is not None else ["FAILED: "] + lines[-5:]),
          sep="\n")
PYEOF
