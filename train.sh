#!/usr/bin/env bash
# Start GPT-2 training on every GPU of this machine, detached from the terminal, and take care of the RunPod pod
# when it ends: removed when the run finished and its log dir is on a network volume, stopped otherwise.
#
#   ./train.sh                              # resume from the newest checkpoint in log/ (or start fresh)
#   ./train.sh log/model_19072.pt 2         # continue that checkpoint for a second epoch
#   ./train.sh --keep-pod -- --batch-size 32 --hellaswag-every 0
#
# Environment:
#   TRAIN_CMD            replaces "torchrun --standalone --nproc_per_node=N train_gpt2.py" (for tests and custom
#                        launchers); it gets the same options appended, and the torch import check is skipped
#   PYTHON               the interpreter for the checks and fineweb.py (default: python on PATH)
#   RUNPOD_POD_ID        set by RunPod: the pod to stop or remove when training ends
#   RUNPOD_VOLUME_ID     set by RunPod when a network volume is attached
#   RUNPOD_VOLUME_PATH   where that volume is mounted (default /workspace)

set -euo pipefail

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
HERE=$(dirname "$SCRIPT")

usage() {
    cat <<EOF
usage: ./train.sh [options] [CHECKPOINT [EPOCHS]] [-- train_gpt2.py options]

Runs torchrun train_gpt2.py in the background (it keeps going after you log out), writes everything to
LOG_DIR/train-<time>.log, prints how to follow it and returns. When training ends on a RunPod pod
(RUNPOD_POD_ID set), the pod is removed if training succeeded and LOG_DIR is on the network volume, and
stopped otherwise (a failed run, or checkpoints on the pod's own disk), so nothing is lost and nothing idles.

positional:
  CHECKPOINT       model_*.pt to continue from (--resume CHECKPOINT); 'auto' (the default) picks the
                   newest valid checkpoint in LOG_DIR, 'none' starts fresh
  EPOCHS           epochs the run spans, e.g. 2 for a second epoch (--epochs EPOCHS)

options:
  --nproc N        processes / GPUs (default: the GPUs nvidia-smi lists, 1 without one)
  --log-dir DIR    checkpoints and logs (default: log, or log/demo with --preset demo)
  --prep           run fineweb.py first when the data shards are missing
  --foreground     stay attached to the terminal (local runs, tests)
  --keep-pod       leave the RunPod pod running when training ends
  -h, --help       this help

examples:
  ./train.sh                              resume the run in log/ (or start it)
  ./train.sh log/model_19072.pt 2         a second epoch from that checkpoint
  ./train.sh --prep                       tokenize FineWeb-Edu first if edu_fineweb10B/ is empty
  ./train.sh --foreground -- --preset demo   the CPU demo, attached
EOF
}

die() {
    echo "train.sh: $*" >&2
    exit 2
}

# --- arguments ---

ORIG_ARGS=("$@")
positional=()
extra=()
nproc=""
foreground=0
keep_pod=0
log_dir=""
prep=0
detached_child=0  # 1 in the copy of train.sh that runs in the background
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --nproc) (($# >= 2)) || die "--nproc needs a number"; nproc=$2; shift 2 ;;
        --nproc=*) nproc=${1#*=}; shift ;;
        --log-dir) (($# >= 2)) || die "--log-dir needs a folder"; log_dir=$2; shift 2 ;;
        --log-dir=*) log_dir=${1#*=}; shift ;;
        --foreground) foreground=1; shift ;;
        --keep-pod) keep_pod=1; shift ;;
        --prep) prep=1; shift ;;
        --detached-child) detached_child=1; shift ;;  # internal: how train.sh restarts itself in the background
        --) shift; extra=("$@"); break ;;
        -*) die "unknown option $1 - see ./train.sh --help (train_gpt2.py options go after --)" ;;
        *) positional+=("$1"); shift ;;
    esac
done
((${#positional[@]} <= 2)) || die "too many arguments: ${positional[*]} - usage: ./train.sh [CHECKPOINT [EPOCHS]] [-- options]"
checkpoint=${positional[0]:-auto}
epochs=${positional[1]:-}
[[ -z $epochs || ($epochs =~ ^[0-9]*\.?[0-9]+$ && ! $epochs =~ ^[0.]+$) ]] || die "EPOCHS must be a positive number, got '$epochs'"
[[ -z $nproc || $nproc =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive whole number, got '$nproc'"
if [[ $checkpoint != auto && $checkpoint != none && ! -f $checkpoint ]]; then
    die "no checkpoint file $checkpoint - give a model_*.pt from the log dir, or 'auto'"
fi

# The value of a train_gpt2.py option among the extra options (the last one wins, as in argparse).
extra_value() {
    local name=$1 value="" i
    for ((i = 0; i < ${#extra[@]}; i++)); do
        case ${extra[i]} in
            "$name") value=${extra[i + 1]:-} ;;
            "$name"=*) value=${extra[i]#*=} ;;
        esac
    done
    printf '%s' "$value"
}

preset=$(extra_value --preset)
if [[ -n $(extra_value --log-dir) ]]; then
    [[ -z $log_dir ]] || die "give --log-dir once (before -- or after it, not both)"
    log_dir=$(extra_value --log-dir)
fi
if [[ -z $log_dir ]]; then
    log_dir=log
    [[ $preset == demo ]] && log_dir=log/demo
fi
data_dir=$(extra_value --data)
if [[ -z $data_dir ]]; then
    data_dir=edu_fineweb10B
    [[ $preset == demo ]] && data_dir=demo_shards
fi
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python)}

if [[ -z $nproc ]]; then
    nproc=1
    if command -v nvidia-smi >/dev/null 2>&1; then
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
        ((gpus > 0)) && nproc=$gpus
    fi
fi

if [[ -n ${TRAIN_CMD:-} ]]; then
    read -ra launcher <<<"$TRAIN_CMD"
elif command -v torchrun >/dev/null 2>&1; then
    launcher=(torchrun --standalone "--nproc_per_node=$nproc" "$HERE/train_gpt2.py")
else
    launcher=("$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$nproc" "$HERE/train_gpt2.py")
fi
train_args=(--log-dir "$log_dir" --resume "$checkpoint")
[[ -n $epochs ]] && train_args+=(--epochs "$epochs")
skip=0
for arg in "${extra[@]}"; do  # everything but --log-dir, which is passed above
    if ((skip)); then skip=0; continue; fi
    case $arg in
        --log-dir) skip=1 ;;
        --log-dir=*) ;;
        *) train_args+=("$arg") ;;
    esac
done
cmd=("${launcher[@]}" "${train_args[@]}")

have_shards() {
    compgen -G "$data_dir/*_train_*.npy" >/dev/null || compgen -G "$data_dir/*_train_*.bin" >/dev/null
}

prep_cmd=("$PYTHON" "$HERE/fineweb.py" --out "$data_dir")
prep_hint="python fineweb.py"
[[ $preset == demo ]] && prep_cmd+=(--demo) && prep_hint+=" --demo"
[[ $data_dir == edu_fineweb10B || $data_dir == demo_shards ]] || prep_hint+=" --out $data_dir"

# --- the pod decision ---

# Whether the log dir's real path is under the volume mount; sets log_real and mount_real.
log_dir_under_mount() {
    local mount=${RUNPOD_VOLUME_PATH:-/workspace}
    log_real=$(cd "$log_dir" 2>/dev/null && pwd -P) || log_real=$log_dir
    mount_real=$(cd "$mount" 2>/dev/null && pwd -P) || mount_real=$mount
    [[ $log_real == "$mount_real" || $log_real == "$mount_real"/* ]]
}

# Sets pod_action (remove|stop|"") and pod_reason for a run that ended with exit code $1.
plan_pod() {
    local rc=$1
    pod_action=""
    if [[ -z ${RUNPOD_POD_ID:-} ]]; then
        pod_reason="RUNPOD_POD_ID is not set (not a RunPod pod) - nothing to stop"
        return
    fi
    if ((keep_pod)); then
        pod_reason="--keep-pod: pod $RUNPOD_POD_ID is left running (it costs money until you stop it)"
        return
    fi
    if ((rc == 130)); then
        pod_reason="interrupted with Ctrl-C (exit 130): someone is at the keyboard, pod $RUNPOD_POD_ID is left running"
        return
    fi
    pod_action=stop
    if ((rc != 0)); then
        pod_reason="training exited with code $rc - stopping (not removing) pod $RUNPOD_POD_ID so its log can be read"
        return
    fi
    local on_volume=0
    log_dir_under_mount && on_volume=1
    if [[ -z ${RUNPOD_VOLUME_ID:-} ]]; then
        pod_reason="no network volume (RUNPOD_VOLUME_ID is not set): removing pod $RUNPOD_POD_ID would delete the checkpoints in $log_real - stopping it instead"
    elif ((!on_volume)); then
        pod_reason="log dir $log_real is not on the network volume at $mount_real: removing pod $RUNPOD_POD_ID would delete it - stopping it instead"
    else
        pod_action=remove
        pod_reason="training finished and $log_real is on the network volume - removing pod $RUNPOD_POD_ID"
    fi
}

say() {
    if [[ -n ${tee_log:-} ]]; then printf '%s\n' "$*" | tee -a "$tee_log"; else printf '%s\n' "$*"; fi
}

end_pod() {
    plan_pod "$1"
    say "train.sh: $pod_reason"
    [[ -n $pod_action ]] || return 0
    if ! command -v runpodctl >/dev/null 2>&1; then
        say "train.sh: runpodctl not found - $pod_action pod $RUNPOD_POD_ID yourself in the RunPod console"
        return 0
    fi
    say "train.sh: runpodctl $pod_action pod $RUNPOD_POD_ID"
    local out rc=0
    out=$(runpodctl "$pod_action" pod "$RUNPOD_POD_ID" 2>&1) || rc=$?
    [[ -n $out ]] && say "$out"
    ((rc == 0)) || say "train.sh: runpodctl $pod_action pod failed (exit $rc) - $pod_action it in the RunPod console"
}

# --- training, then the pod decision (runs detached unless --foreground) ---

# Run a command, its output also appended to the log file in --foreground mode; returns its exit code.
run_logged() {
    if [[ -n ${tee_log:-} ]]; then
        "$@" 2>&1 | tee -ia "$tee_log"
        return "${PIPESTATUS[0]}"
    fi
    "$@"
}

run_and_end() {
    local rc=0
    trap : INT TERM HUP  # training handles the signal (saves and exits); this script goes on to the pod decision
    export PYTHONUNBUFFERED=1  # live lines in the log file
    say "train.sh: $(date '+%Y-%m-%d %H:%M:%S') on ${HOSTNAME:-this machine}, log dir $log_dir"
    if ! have_shards; then
        say "train.sh: running ${prep_cmd[*]}"
        run_logged "${prep_cmd[@]}" || rc=$?
    fi
    if ((rc == 0)); then
        say "train.sh: running ${cmd[*]}"
        run_logged "${cmd[@]}" || rc=$?
    fi
    say "train.sh: $(date '+%Y-%m-%d %H:%M:%S') training ended with exit code $rc"
    end_pod "$rc"
    return "$rc"
}

if ((detached_child)); then
    run_and_end && exit 0 || exit $?
fi

# --- checks, with one line each ---

if ! have_shards; then
    if ((prep)); then
        echo "train.sh: no training shards in $data_dir/ - ${prep_cmd[*]} runs first"
    else
        die "no training shards in $data_dir/ - run $prep_hint first (or ./train.sh --prep to run it here)"
    fi
fi
hella_data=$(extra_value --hellaswag-data)
hella_every=$(extra_value --hellaswag-every)
if [[ $hella_every != 0 && ! ($preset == demo && -z $hella_every) ]]; then  # the demo preset hardly evaluates
    hella_data=${hella_data:-$HERE/hellaswag/hellaswag_val.jsonl}  # where hellaswag.py keeps it
    [[ -f $hella_data ]] || echo "train.sh: notice: no HellaSwag data at $hella_data - train_gpt2.py downloads it, or trains without HellaSwag evals if it cannot"
fi
if [[ -z ${TRAIN_CMD:-} ]] || ((prep)); then
    if ! err=$("$PYTHON" -c "import torch, numpy, tiktoken" 2>&1); then
        die "$PYTHON cannot import torch, numpy and tiktoken ($(tail -n1 <<<"$err")) - activate the venv (. .venv/bin/activate) or pip install -r requirements.txt"
    fi
fi
mkdir -p "$log_dir"
if [[ -n ${RUNPOD_POD_ID:-} ]]; then
    plan_pod 0
    echo "train.sh: when training ends: $pod_reason${pod_action:+ (a failed run stops it)}"
    if ! ((keep_pod)) && ! log_dir_under_mount; then
        echo "train.sh: warning: $log_real is outside $mount_real - even a stopped pod loses its container disk; clone the repo into /workspace"
    fi
    ((keep_pod)) || command -v runpodctl >/dev/null 2>&1 || echo "train.sh: warning: runpodctl not found - the pod will be left running when training ends"
fi

logfile="$log_dir/train-$(date +%Y%m%d-%H%M%S).log"
if ((foreground)); then
    tee_log=$logfile
    say "train.sh: logging to $logfile"
    run_and_end && exit 0 || exit $?
fi
detach=(nohup)
command -v setsid >/dev/null 2>&1 && detach=(setsid nohup)  # its own session: logging out does not reach it
"${detach[@]}" "$SCRIPT" --detached-child "${ORIG_ARGS[@]}" </dev/null >>"$logfile" 2>&1 &
pid=$!
stop_hint="kill -- -$pid"  # the whole process group: training saves a checkpoint, then the pod decision runs
[[ ${detach[0]} == setsid ]] || stop_hint="kill $pid, then the python processes"
echo "train.sh: training runs in the background (pid $pid, stop it with: $stop_hint), logging to $logfile"
echo "train.sh: follow it with: tail -f $logfile"
