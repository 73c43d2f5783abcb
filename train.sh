#!/usr/bin/env bash
# usage: ./train.sh [options] [CHECKPOINT [EPOCHS]] [-- train_gpt2.py options]
#
# Trains GPT-2 on every GPU of this machine. First train_gpt2.py --preflight runs attached with the same options (a
# few steps of every part at the real shapes; the run's time and cost); a failed one starts nothing. Then training
# runs in the background (logging out does not stop it), logging to LOG_DIR/train-<time>.log, and train.sh shows it
# until its first optimizer step. A launch that ends sooner (refused options, already trained, ...) says why and exits
# non-zero; Ctrl-C then stops it. On a RunPod pod, pod.py stops or removes the pod when training ends, and leaves it
# when a launch you watched never stepped: pod.py plan says which at launch, python pod.py --help has the details.
#
#   CHECKPOINT       model_*.pt to continue (--resume); auto (default): the newest in LOG_DIR; none: start fresh
#   EPOCHS           epochs the run spans, e.g. 2 for a second epoch (--epochs)
#   --nproc N        processes / GPUs (default: the GPUs nvidia-smi lists, 1 without one)
#   --log-dir DIR    checkpoints and logs (default: train_gpt2.py's, log/ or log/demo/ with --preset demo)
#   --prep           make the data first (the default folder: fineweb.py --pretokenized, rerun to go on); train.sh
#                    returns at once, without waiting for the first step
#   --foreground     stay attached to the terminal (local runs); Ctrl-C then leaves the pod running
#   --no-preflight   start training without the preflight
#   --keep-pod       leave the RunPod pod running when training ends
#   --no-pod-check   start even when runpodctl cannot reach the pod now (it is tried again at the end)
#
#   ./train.sh                                  resume the run in log/ (or start it)
#   ./train.sh log/model_18794.pt 2             a second epoch from that checkpoint
#   ./train.sh --foreground -- --preset demo    the CPU demo, attached
#
# Environment: PYTHON runs all but torchrun (default: python on PATH); TRAIN_CMD replaces "torchrun --standalone
# --nproc_per_node=N train_gpt2.py" (tests, custom launchers; no torch check then); TORCH_ELASTIC_SHUTDOWN_TIMEOUT.
set -euo pipefail
SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
HERE=$(dirname "$SCRIPT")
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python)}
die() { echo "train.sh: $*" >&2; exit 2; }

positional=() log_opt=() extra=() pod_opts=() pod_check=() nproc="" foreground=0 prep=0 preflight=1
while (($#)); do
    case $1 in
        -h | --help) sed -n '2,/^set -e/{/^set -e/d; s/^# \{0,1\}//; p}' "$SCRIPT"; exit 0 ;;
        --nproc) (($# >= 2)) || die "--nproc needs a number"; nproc=$2; shift 2 ;;
        --nproc=*) nproc=${1#*=}; shift ;;
        --log-dir) (($# >= 2)) || die "--log-dir needs a folder"; log_opt=("$1" "$2"); shift 2 ;;
        --log-dir=*) log_opt=("$1"); shift ;;
        --foreground) foreground=1; pod_opts+=("$1"); shift ;;
        --keep-pod) pod_opts+=("$1"); shift ;;
        --no-pod-check) pod_check=("$1"); shift ;;
        --prep) prep=1; shift ;;
        --no-preflight) preflight=0; shift ;;
        --) shift; extra=("$@"); break ;;  # train_gpt2.py's, after train.sh's --log-dir (the last one wins)
        -*) die "unknown option $1 - see ./train.sh --help (train_gpt2.py options go after --)" ;;
        *) positional+=("$1"); shift ;;
    esac
done
((${#positional[@]} <= 2)) || die "too many arguments: ${positional[*]} - see ./train.sh --help"
checkpoint=${positional[0]:-auto} epochs=${positional[1]:-}
[[ -z $epochs || ($epochs =~ ^[0-9]*\.?[0-9]+$ && ! $epochs =~ ^[0.]+$) ]] ||
    die "EPOCHS must be a positive number, got '$epochs'"
[[ -z $nproc || $nproc =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive whole number, got '$nproc'"
[[ $checkpoint == auto || $checkpoint == none || -f $checkpoint ]] ||
    die "no checkpoint file $checkpoint - give a model_*.pt from the log dir, or 'auto'"

# --- the checks before any Python of this kit runs: Python 3.10+, torch 2.4+ ---
version=$("$PYTHON" -V 2>&1 | head -n 1) || version=""
[[ $version =~ ^Python\ 3\.([0-9]+) ]] && ((BASH_REMATCH[1] >= 10)) || die "$PYTHON is ${version:-not runnable};" \
    "this needs Python 3.10 or newer - in RunPod's images run python, not python3, or activate the venv"
torch_version=""
if [[ -z ${TRAIN_CMD:-} ]] || ((prep)); then
    torch_version=$("$PYTHON" -c "import torch, numpy, tiktoken; print(torch.__version__)" 2>&1) ||
        die "$PYTHON cannot import torch, numpy and tiktoken ($(tail -n1 <<<"$torch_version")) - activate the" \
            "venv (. .venv/bin/activate) or pip install -r requirements.txt"
    torch_version=$(tail -n1 <<<"$torch_version")
    [[ ! $torch_version =~ ^(0|1|2\.[0-3])\. ]] || die "$PYTHON has torch $torch_version; this kit needs torch" \
        "2.4 or newer - python common.py --install-torch installs one for this machine's GPUs (with no GPU:" \
        "pip install 'torch>=2.4')"
fi

# --- the commands, with the log dir, data dir and preset as train_gpt2.py resolves its options ---
paths=$("$PYTHON" "$HERE/train_gpt2.py" "${log_opt[@]}" "${extra[@]}" --print-paths) || exit 2
mapfile -t resolved <<<"$paths"
log_dir=${resolved[0]} data_dir=${resolved[1]} hella_file=${resolved[2]:-} preset=${resolved[3]:-}
[[ -n $nproc ]] || nproc=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || nproc=1
# a GPU machine whose torch cannot use its GPUs (or fewer than --nproc): one line, and nothing starts
[[ -n ${TRAIN_CMD:-} ]] ||
    "$PYTHON" "$HERE/common.py" --check-gpus "$nproc" --device "${resolved[4]:-auto}" --name train.sh || exit 2
launcher=(torchrun) && command -v torchrun >/dev/null || launcher=("$PYTHON" -m torch.distributed.run)
launcher+=(--standalone "--nproc_per_node=$nproc" "$HERE/train_gpt2.py")
[[ -z ${TRAIN_CMD:-} ]] || read -ra launcher <<<"$TRAIN_CMD"
cmd=("${launcher[@]}" "${log_opt[@]}" --resume "$checkpoint" ${epochs:+--epochs "$epochs"} "${extra[@]}")
prep_cmd=("$PYTHON" "$HERE/fineweb.py" --out "$data_dir")
[[ $preset != demo ]] || prep_cmd+=(--demo)  # the demo preset's data is fineweb.py --demo's
# the default data is downloaded tokenized (unless tokenizing began there), every time: a rerun finishes what stopped
pretokenized=0
[[ $data_dir != edu_fineweb10B || -e $data_dir/.fineweb_state.json ]] || { prep_cmd+=(--pretokenized); pretokenized=1; }
# torchrun passes a stop signal on to its workers and kills them after this many seconds (torch 2.12+; before, 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-900}

have_shards() { compgen -G "$data_dir/*_train_*.npy" >/dev/null || compgen -G "$data_dir/*_train_*.bin" >/dev/null; }
need_prep() { ((prep && pretokenized)) || ! have_shards; }
note_signals() { for s in INT TERM HUP; do trap "stop_signal=\${stop_signal:-$s}" "$s"; done; }
# Run a command, its output also appended to the log. tee ignores Ctrl-C, a hangup and kill: it must outlive the command.
logged() {
    "$@" 2>&1 | (trap '' INT HUP TERM; exec tee -a "$logfile")
    return "${PIPESTATUS[0]}"
}
quoted() { local s; printf -v s '%q ' "$@"; printf '%s' "${s% }"; }  # a command to copy, quoted for the shell
say() { logged printf '%s\n' "train.sh: $*" || true; }

if ! have_shards; then
    ((prep)) || die "no training shards in $data_dir/ - run python fineweb.py $(quoted "${prep_cmd[@]:2}") first (or" \
        "./train.sh --prep to run it here)"
    echo "train.sh: no training shards in $data_dir/ - $(quoted "${prep_cmd[@]}") runs first"
fi
[[ -z $hella_file || -f $hella_file ]] || echo "train.sh: notice: no HellaSwag data at $hella_file - train_gpt2.py" \
    "downloads it, or trains without HellaSwag evals if it cannot"
mkdir -p "$log_dir"
logfile="$log_dir/train-$(date +%Y%m%d-%H%M%S).log"
"$PYTHON" "$HERE/pod.py" plan --log-dir "$log_dir" --log "$logfile" "${pod_opts[@]}" "${pod_check[@]}" || exit $?
while IFS= read -r -d '' var; do export "$var"; done < <("$PYTHON" "$HERE/pod.py" env)  # RunPod's, for training
[[ -z ${TRAIN_CMD:-} && $torch_version =~ ^2\.([0-9]+)\. ]] && ((BASH_REMATCH[1] < 12)) && say "note: torchrun of" \
    "torch $torch_version kills the workers 30 s after a stop signal (a longer wait needs torch 2.12+): a checkpoint" \
    "that takes longer to write is lost, the one before it stays"

# --- the preflight, attached, so its screen is read before logging out. Its stderr goes to the log only (under
# torchrun a refusal's one line comes with a ChildFailedError banner): its train_gpt2.py: lines are shown, once. ---
run_preflight() { "${cmd[@]}" --preflight 2>"$err"; }
if ((preflight)) && ! have_shards; then
    echo "train.sh: no preflight: the shards are made first (--prep); train_gpt2.py checks them when it starts"
elif ((preflight)); then
    err=$(mktemp) rc=0 stop_signal=""
    say "preflight: $(quoted "${cmd[@]}") --preflight"
    note_signals  # Ctrl-C stops it, and nothing starts
    logged run_preflight || rc=$?
    trap - INT TERM HUP
    cat "$err" >>"$logfile"
    said=$(grep -a '^train_gpt2.py: ' "$err" | awk '!seen[$0]++') || true  # each rank says it
    [[ -z $said ]] || printf '%s\n' "$said" >&2
    [[ $rc == 0 || -n $said$stop_signal ]] || tail -n 30 "$err" >&2  # a bug, not a refusal: its traceback
    report="" && [[ $log_dir/preflight.json -nt $err ]] && report=" ($log_dir/preflight.json has it too)"
    rm -f "$err"
    [[ -z $stop_signal ]] || { echo "train.sh: the preflight was stopped by SIG$stop_signal: nothing started (its" \
        "output is in $logfile)" >&2; exit 130; }
    ((rc == 0)) || die "the preflight failed (exit code $rc): nothing started - fix what it says above$report"
fi
# metrics.jsonl's size now: the launch trained when a train event comes after it (pod.py's docstring)
since=$( (wc -c <"$log_dir/metrics.jsonl") 2>/dev/null || echo 0) shown=$(wc -c <"$logfile")
# pod.py run: the prep, training, then the pod's end
run=("$PYTHON" "$HERE/pod.py" run --log-dir "$log_dir" --log "$logfile" --since "$since" "${pod_opts[@]}")
if need_prep; then for arg in "${prep_cmd[@]}"; do run+=("--prep=$arg"); done; fi
((foreground)) && exec "${run[@]}" -- "${cmd[@]}"
((prep)) || run+=(--attended-by $$)  # pod.py wait, once this process becomes it; --prep returns at once (you leave)
# In its own session, so logging out does not reach it; `cmd &` would start it with SIGINT ignored, which a shell
# cannot trap: env sets INT, QUIT and HUP back to their defaults (the log says which signal stopped training).
setsid env --default-signal=INT,QUIT,HUP "${run[@]}" -- "${cmd[@]}" </dev/null >>"$logfile" 2>&1 &
((prep)) || exec "$PYTHON" "$HERE/pod.py" wait --log-dir "$log_dir" --since "$since" --pid $! --log "$logfile" \
    --log-offset "$shown" "${pod_opts[@]}"
echo "train.sh: training runs in the background (pid $!, stop it with: kill -- -$!), logging to $logfile"
echo "train.sh: follow it with: tail -f $(quoted "$logfile")"
