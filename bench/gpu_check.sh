#!/usr/bin/env bash
# The GPU check: every CUDA path of both recipes once, in about eight minutes on one H100 or H200, with no network
# and no `datasets`, and the figures the README's results need in one table. On synthetic data made in a temporary
# folder (100M-token shards of random GPT-2 ids, HellaSwag-shaped examples):
#   train_gpt2.py --preflight, d12 at 64 x 1024, compiled, bf16, --recipe classic and modern (every check)
#   bench_train.py        tok/s, MFU, peak memory, compile on and off, both recipes
#   bench_loss.py         the chunked cross-entropy against plain F.cross_entropy: memory and time, eager and compiled
#   bench_infer.py        sampling with the KV cache in bf16, 4 x 256 new tokens
#   bench_hellaswag.py    scoring speed, 10,042 examples
#   bench_checkpoint.py   save and load of a d12 checkpoint with its AdamW state, from and to the GPU
#   bench_resume.py       N steps in one run against N/2 + N/2 with a resume in between
# Each part has its own time limit and log; a part that fails or times out is shown as such and the rest go on.
#
#   bench/gpu_check.sh                 # on the GPU (run it from the repo's venv)
#   bench/gpu_check.sh --cpu-smoke     # tiny shapes on the CPU, no compile: checks this script (the tests run it)
#
# Environment: PYTHON (default python), GPU_CHECK_LOGS (where the logs and the table go; default a temp folder),
# GPU_CHECK_PARTS (only these parts, e.g. "bench_loss bench_resume": to redo what a first try did not finish).
# bench/gpu_report.py makes the table again from a copy of the logs.
set -uo pipefail

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
logs=${GPU_CHECK_LOGS:-$work/logs}
mkdir -p "$logs"

if ((smoke)); then
    shard_tokens=20000 train_shards=1 examples=8
    model=(--n-layer 2 --n-head 2 --n-embd 32 --seq-len 64 --batch-size 4 --total-batch-size 512 --device cpu
           --no-compile --preflight-steps 2 --val-steps 1)
    small=(--model-dims 2,2,32 --batch-size 2 --seq-len 32 --device cpu)
    train_bench=("${small[@]}" --steps 2 --warmup 1)
    loss_bench=("${small[@]}" --steps 1 --warmup 1)
    infer_bench=(--max-new-tokens 2 --num-samples 2 --device cpu)
    hellaswag_bench=(--examples 8 --baseline-examples 4 --device cpu)
    resume=(--steps 2 -- --n-layer 2 --n-head 2 --n-embd 32 --seq-len 64 --batch-size 4 --total-batch-size 256
            --device cpu)
    checkpoint_bench=(--model-dims 2,2,32 --repeat 1)
    limit=300
else
    shard_tokens=100000000 train_shards=1 examples=256
    model=(--model d12 --batch-size 64 --seq-len 1024 --total-batch-size 524288 --device cuda --compile
           --preflight-steps 4 --val-steps 5)
    train_bench=(--model d12 --batch-size 64 --seq-len 1024 --device cuda --steps 10)
    loss_bench=(--model d12 --batch-size 64 --seq-len 1024 --device cuda)
    infer_bench=(--model d12 --max-new-tokens 256 --num-samples 4 --device cuda)
    hellaswag_bench=(--model d12 --device cuda)
    resume=(--steps 8 -- --model d12 --batch-size 16 --seq-len 1024 --total-batch-size 16384 --device cuda
            --no-compile)
    checkpoint_bench=(--device cuda --repeat 2)
    limit=150
fi

# part NAME SECONDS COMMAND...: run it under a time limit, its output to the terminal and NAME.txt, its status to NAME.rc
part() {
    local name=$1 seconds=$2
    shift 2
    [[ -z ${GPU_CHECK_PARTS:-} || " $GPU_CHECK_PARTS " == *" $name "* ]] || return 0
    echo "gpu_check: $name: $*"
    timeout -k 10 "$seconds" "$@" 2>&1 | tee "$logs/$name.txt"
    echo "${PIPESTATUS[0]}" >"$logs/$name.rc"
}

cd "$ROOT"
"$PYTHON" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
              'torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee "$logs/machine.txt"
echo "gpu_check: synthetic shards and HellaSwag examples in $work"
"$PYTHON" bench/gpu_report.py data "$work" "$shard_tokens" "$train_shards" "$examples" || exit 1
# recipe_parts RECIPE: its preflight (every check, at the real shapes) and its training speed
recipe_parts() {
    part "preflight_$1" $((limit + 30)) "$PYTHON" train_gpt2.py --preflight --recipe "$1" "${model[@]}" \
        --data "$work/shards" --log-dir "$work/log-$1" --resume none --hellaswag-data "$work/hellaswag.jsonl" \
        --hellaswag-every 250 --sample-every 250 --eval-every 250
    cp "$work/log-$1/preflight.json" "$logs/preflight_$1.json" 2>/dev/null
    part "bench_train_$1" "$limit" "$PYTHON" bench/bench_train.py --recipe "$1" "${train_bench[@]}"
}

recipe_parts classic
part bench_infer 60 "$PYTHON" bench/bench_infer.py "${infer_bench[@]}"
part bench_hellaswag 90 "$PYTHON" bench/bench_hellaswag.py "${hellaswag_bench[@]}"
part bench_checkpoint 90 "$PYTHON" bench/bench_checkpoint.py --dir "$work" "${checkpoint_bench[@]}"
part bench_resume "$limit" "$PYTHON" bench/bench_resume.py --data "$work/shards" "${resume[@]}"
recipe_parts modern
part bench_loss "$limit" "$PYTHON" bench/bench_loss.py "${loss_bench[@]}"

echo
"$PYTHON" bench/gpu_report.py table "$logs" | tee "$logs/table.md"
