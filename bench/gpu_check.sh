#!/usr/bin/env bash
# The GPU check: on one H100 in under ten minutes, with no network and no `datasets`, the figures the README's
# results section needs. Makes real-size synthetic shards (100M-token shards of random GPT-2 ids) and HellaSwag-shaped
# examples in a temporary folder, runs train_gpt2.py --preflight for d12 at 64 x 1024 with torch.compile, then
# bench/bench_train.py with compile on and off, and prints one table.
#
#   bench/gpu_check.sh                 # on the GPU (run it from the repo's venv)
#   bench/gpu_check.sh --cpu-smoke     # tiny shapes on the CPU, no compile: checks this script (the tests run it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
smoke=0
case ${1:-} in
    --cpu-smoke) smoke=1 ;;
    "") ;;
    *) echo "usage: bench/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ((smoke)); then
    shard_tokens=20000 train_shards=1 examples=8
    model=(--n-layer 2 --n-head 2 --n-embd 32 --seq-len 64 --batch-size 4 --total-batch-size 512 --device cpu
           --no-compile --preflight-steps 2 --val-steps 1)
    bench=(--model-dims 2,2,32 --batch-size 4 --seq-len 64 --steps 2 --warmup 1 --device cpu)
    modes=(--no-compile)
else
    shard_tokens=100000000 train_shards=2 examples=256
    model=(--model d12 --batch-size 64 --seq-len 1024 --total-batch-size 524288 --device cuda --compile)
    bench=(--model d12 --batch-size 64 --seq-len 1024 --device cuda)
    modes=(--compile --no-compile)
fi

echo "gpu_check: synthetic shards and HellaSwag examples in $work"
"$PYTHON" - "$work" "$shard_tokens" "$train_shards" "$examples" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
sys.path.insert(0, "bench")
import fineweb
from bench_hellaswag import synthetic_examples
work, n, shards, examples = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
(work / "shards").mkdir()
rng = np.random.default_rng(0)
for i in range(shards + 1):
    fineweb.write_shard(work / "shards" / fineweb.shard_name(i), rng.integers(0, 50257, n, dtype=np.uint16))
(work / "hellaswag.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in synthetic_examples(examples)))
PY

cd "$ROOT"
echo "gpu_check: train_gpt2.py --preflight ${model[*]}"
"$PYTHON" train_gpt2.py --preflight "${model[@]}" --data "$work/shards" --log-dir "$work/log" --resume none \
    --hellaswag-data "$work/hellaswag.jsonl" --hellaswag-every 250 --sample-every 250 --eval-every 250
for mode in "${modes[@]}"; do
    echo "gpu_check: bench/bench_train.py ${bench[*]} $mode"
    "$PYTHON" bench/bench_train.py "${bench[@]}" "$mode" | tee -a "$work/bench.txt"
done

"$PYTHON" - "$work" <<'PY'
import json, re, sys
from pathlib import Path
import torch
work = Path(sys.argv[1])
pf = json.loads((work / "log" / "preflight.json").read_text())
f = pf["figures"]
num = lambda v, fmt: "-" if v is None else fmt.format(v)  # noqa: E731
print(f"\n| what | result ({f['device_name']}, torch {torch.__version__}) |\n|---|---|")
print(f"| preflight, d12 64 x 1024, compile | {'passed' if pf['passed'] else 'FAILED'}: "
      + ", ".join(f"{c['name']} {c['status']}" for c in pf["checks"]) + " |")
print(f"| training step (preflight, real batches) | {num(f.get('tok_per_s'), '{:,.0f}')} tok/s, MFU "
      f"{num(f.get('mfu'), '{:.1%}')}, {num(f.get('step_s'), '{:.3f}')} s/step, compile {num(f.get('compile_s'), '{:.0f}')} s |")
print(f"| peak memory | {num(f.get('peak_memory_gb'), '{:.1f}')} GB allocated, {num(f.get('reserved_gb'), '{:.1f}')} "
      f"GB reserved of {num(f.get('device_memory_gb'), '{:.1f}')} GB |")
print(f"| checkpoint save | {num(f.get('checkpoint_save_s'), '{:.1f}')} s for {num(f.get('checkpoint_gb'), '{:.2f}')} GB |")
print(f"| HellaSwag scoring | {num(f.get('hellaswag_examples_per_s'), '{:,.0f}')} examples/s |")
print(f"| loader wait | {num(f.get('loader_wait_ms_per_step'), '{:.1f}')} ms/step |")
for line in (work / "bench.txt").read_text().splitlines():
    m = re.match(r"compile (on|off) \|\s*([\d.]+) ms/step \|\s*([\d,]+) tok/s \| mfu (\S+)", line)
    if m:
        print(f"| bench_train.py, compile {m[1]} | {m[3]} tok/s, MFU {m[4]}, {m[2]} ms/step |")
PY
