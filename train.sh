#!/usr/bin/env bash
# Start GPT-2 training on every GPU of this machine, detached from the terminal, and take care of the RunPod pod
# when it ends: removed when the log dir is on a network volume, stopped when it is on the pod's own volume disk.
#
#   ./train.sh                              # resume from the newest checkpoint in log/ (or start fresh)
#   ./train.sh log/model_19072.pt 2         # continue that checkpoint for a second epoch
#   ./train.sh --keep-pod -- --batch-size 32 --hellaswag-every 0
#
# Environment:
#   TRAIN_CMD            replaces "torchrun --standalone --nproc_per_node=N train_gpt2.py" (for tests and custom
#                        launchers); it gets the same options appended, and the torch import check is skipped
#   PYTHON               the interpreter for the checks and fineweb.py (default: python on PATH)
#   RUNPOD_POD_ID        set by RunPod: the pod to stop or remove when training ends. RunPod also writes it, with
#                        RUNPOD_API_KEY and RUNPOD_VOLUME_ID, to /etc/rp_environment for login shells; when it is
#                        unset here, train.sh reads the RUNPOD_* lines of that file (as data: it never runs it)
#   RUNPOD_VOLUME_ID     set by RunPod when a network volume is attached (it is mounted at /workspace)
#   RUNPOD_API_KEY       set by RunPod: the key runpodctl uses
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT  seconds torchrun lets workers save after a stop signal before it kills them
#                        (torchrun's default is 30; train.sh sets 900, enough to write a 1.5B model's checkpoint;
#                        torch 2.12 and newer read it, older torchruns always wait 30 s)
# For tests only:
#   TRAIN_SH_RP_ENVIRONMENT  the file read instead of /etc/rp_environment
#   TRAIN_SH_WORKSPACE       the pod's persistent mount, instead of /workspace
#   TRAIN_SH_RETRY_DELAYS    seconds to wait before each new runpodctl try (default "15 30 60 120")

set -euo pipefail

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
HERE=$(dirname "$SCRIPT")
WORKSPACE=${TRAIN_SH_WORKSPACE:-/workspace}
RP_ENVIRONMENT=${TRAIN_SH_RP_ENVIRONMENT:-/etc/rp_environment}

usage() {
    cat <<EOF
usage: ./train.sh [options] [CHECKPOINT [EPOCHS]] [-- train_gpt2.py options]

First runs train_gpt2.py --preflight with the same options, attached (every part of the job once, at the real
shapes: a few steps, each eval, a checkpoint; the time and cost of the whole run); a failed preflight starts nothing.
Then runs torchrun train_gpt2.py in the background (it keeps going after you log out), writes everything to
LOG_DIR/train-<time>.log, prints how to follow it and returns. On a RunPod pod it then stops or removes the pod.

positional:
  CHECKPOINT       model_*.pt to continue from (--resume CHECKPOINT); 'auto' (the default) picks the
                   newest valid checkpoint in LOG_DIR, 'none' starts fresh
  EPOCHS           epochs the run spans, e.g. 2 for a second epoch (--epochs EPOCHS)

options:
  --nproc N        processes / GPUs (default: the GPUs nvidia-smi lists, 1 without one)
  --log-dir DIR    checkpoints and logs (default: log, or log/demo with --preset demo)
  --prep           run fineweb.py first when the data shards are missing
  --foreground     stay attached to the terminal (local runs, tests)
  --no-preflight   start training without running train_gpt2.py --preflight first
  --keep-pod       leave the RunPod pod running when training ends
  --no-pod-check   start even when runpodctl cannot reach the pod now (it is tried again at the end)
  -h, --help       this help

What happens to the RunPod pod (RUNPOD_POD_ID set, or found in /etc/rp_environment) when training ends:
  log dir on a network volume (under /workspace, RUNPOD_VOLUME_ID set)
      training finished, failed, or was stopped with kill   the pod is removed: the volume keeps the log and
                                                            checkpoints, and ./train.sh on a new pod continues
      removing fails                                        the pod is stopped instead
  log dir on the pod's volume disk (under /workspace, no network volume)
      training finished, failed, or was stopped with kill   the pod is stopped: removing it would delete
                                                            /workspace; start it again to get your files
      stopping fails                                        the pod is left running, and the log says so
  log dir outside /workspace (on the container disk, which stopping or removing the pod wipes)
      a detached launch is refused (unless --keep-pod); a --foreground run leaves the pod running
  Ctrl-C in a --foreground run                              the pod is left running: you are at the keyboard
  --keep-pod                                                the pod is left running
  not a RunPod pod                                          nothing
Before training starts, train.sh prints this plan for the run and checks that runpodctl can reach the pod; it
refuses a detached launch when runpodctl cannot (unless --keep-pod or --no-pod-check). At the end it checks that
the pod really stopped or went away, tries again for a few minutes if not, and writes every runpodctl answer to
the log. Works with runpodctl v2 (pod stop|delete ID) and v1 (stop|remove pod ID).

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
pod_check=1
log_dir=""
prep=0
preflight=1
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
        --no-pod-check) pod_check=0; shift ;;
        --prep) prep=1; shift ;;
        --no-preflight) preflight=0; shift ;;
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
# torchrun forwards a stop signal to its workers (each in its own session) and kills them after this many seconds:
# its default 30 s is too short to write a 1.5B model's checkpoint (18 GB with the optimizer state) to a volume.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-900}
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

# --- RunPod's variables and storage ---

# RunPod writes its variables to /etc/rp_environment as `export KEY="value"` lines and sources that file from
# ~/.bashrc, which `ssh pod ./train.sh`, cron or tmux scripts may never read. Take the RUNPOD_* ones from it, as
# data: the file is parsed here, never sourced, and variables already set are kept.
rp_environment_used=0
if [[ -z ${RUNPOD_POD_ID:-} && -r $RP_ENVIRONMENT ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line#"${line%%[![:space:]]*}"}
        line=${line#export }
        [[ $line =~ ^(RUNPOD_[A-Z0-9_]*)=(.*)$ ]] || continue
        key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
        [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]] && value=${BASH_REMATCH[1]}
        [[ -n ${!key+set} ]] || export "$key=$value"
    done <"$RP_ENVIRONMENT"
    [[ -n ${RUNPOD_POD_ID:-} ]] && rp_environment_used=1
fi
pod_id=${RUNPOD_POD_ID:-}

# Where the log dir really is (symlinks resolved): sets log_real, workspace_real and storage: network (under
# /workspace with a network volume attached), volume (under /workspace, the pod's own volume disk) or container.
locate_log_dir() {
    log_real=$(cd "$log_dir" 2>/dev/null && pwd -P) || log_real=$log_dir
    workspace_real=$(cd "$WORKSPACE" 2>/dev/null && pwd -P) || workspace_real=$WORKSPACE
    if [[ $log_real != "$workspace_real" && $log_real != "$workspace_real"/* ]]; then
        storage=container
    elif [[ -n ${RUNPOD_VOLUME_ID:-} ]]; then
        storage=network
    else
        storage=volume
    fi
}

# Who holds LOG_DIR/.lock, the lock of a live train_gpt2.py run there ("pid N on HOST"); nothing when it is free.
lock_holder() {
    "$PYTHON" - "$log_dir/.lock" 2>/dev/null <<'EOF' | sed -n 's/^held by: //p' | head -n 1 || true
import fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
except BlockingIOError:
    print("held by:", os.read(fd, 200).decode(errors="replace").strip() or "a run starting up")
except OSError:
    pass
EOF
}

# --- runpodctl, v2 or v1 ---

rp_gen=""  # 2 or 1: which runpodctl generation answers, found by the first call

# Run a pod command (get, stop or remove) in the current form, runpodctl pod get|stop|delete ID (v2), or in the v1
# form, runpodctl get|stop|remove pod ID, when runpodctl does not know the first. Sets rp_cmd and rp_out (stdout and
# stderr, the API key blanked out: v1 puts it into the URL of its network errors); returns runpodctl's exit code.
rp() {
    local verb=$1 rc=0
    local current=(pod "${verb/remove/delete}" "$pod_id") old=("$verb" pod "$pod_id")
    local limit=()
    command -v timeout >/dev/null 2>&1 && limit=(timeout 120)
    if [[ $rp_gen != 1 ]]; then
        rp_cmd="runpodctl ${current[*]}"
        rp_out=$("${limit[@]}" runpodctl "${current[@]}" 2>&1) || rc=$?
        if ((rc)) && grep -qi 'unknown command' <<<"$rp_out"; then rp_gen=1; else rp_gen=2; fi
    fi
    if [[ $rp_gen == 1 ]]; then
        rc=0
        rp_cmd="runpodctl ${old[*]}"
        rp_out=$("${limit[@]}" runpodctl "${old[@]}" 2>&1) || rc=$?
    fi
    [[ -z ${RUNPOD_API_KEY:-} ]] || rp_out=${rp_out//"$RUNPOD_API_KEY"/<RUNPOD_API_KEY>}
    return "$rc"
}

# The pod's status in runpodctl's last answer: v2 prints JSON ("desiredStatus": "RUNNING"), v1's get prints a table
# whose row for the pod starts with its id and ends with its status. Empty when the answer names none.
rp_status() {
    if [[ $rp_gen == 2 ]]; then
        sed -n 's/.*"desiredStatus": *"\([A-Z_]*\)".*/\1/p' <<<"$rp_out" | head -n 1
    else
        awk -v id="$pod_id" 'tolower($1) == tolower(id) && NF > 1 { print $NF; exit }' <<<"$rp_out"
    fi
}

# Whether runpodctl's last answer says the key is missing or refused: trying again will not help.
rp_key_error() {
    grep -qiE 'api key|status 40[13]|statuscode 40[13]|"myself":null' <<<"$rp_out"
}

# Whether runpodctl can see this pod with its key now; sets check_text and check_rc (runpodctl's exit code).
check_pod() {
    if ! command -v runpodctl >/dev/null 2>&1; then
        check_text="runpodctl cannot reach pod $pod_id: it is not on PATH"
        return 1
    fi
    local status
    check_rc=0
    rp get || check_rc=$?
    status=$(rp_status)
    if ((check_rc == 0)) && [[ -n $status ]]; then
        check_text="runpodctl (v$rp_gen) reaches pod $pod_id: its status is $status"
        return 0
    fi
    check_text="runpodctl cannot reach pod $pod_id: $rp_cmd exited with $check_rc"
    ((check_rc == 0)) && check_text+=", listing no pod $pod_id for its API key"
    return 1
}

# --- the pod decision ---

say() {  # a line to stdout and, in --foreground mode, to the log file
    if [[ -n ${tee_log:-} ]]; then
        printf '%s\n' "$*" | tee -a "$tee_log" || true  # after a hangup the terminal is gone; the log is what counts
    else
        printf '%s\n' "$*" || true
    fi
}

say_answer() {  # runpodctl's last answer, indented
    local line
    say "train.sh: $rp_cmd -> exit $1"
    while IFS= read -r line; do say "    $line"; done <<<"$rp_out"
}

# Sets pod_action (remove|stop|"") and pod_reason for how training ended: finished, failed (exit code $2),
# stopped (by a signal other than Ctrl-C) or ctrl-c.
plan_pod() {
    local outcome=$1 rc=${2:-0} how
    pod_action=""
    if [[ -z $pod_id ]]; then
        pod_reason="RUNPOD_POD_ID is not set (not a RunPod pod, or $RP_ENVIRONMENT has none) - no pod to stop or remove"
        return
    fi
    if ((keep_pod)); then
        pod_reason="--keep-pod: pod $pod_id is left running (it costs money until you stop it)"
        return
    fi
    case $outcome in
        ctrl-c) pod_reason="interrupted with Ctrl-C: you are at the keyboard, pod $pod_id is left running"; return ;;
        refused) pod_reason="training did not start: another run ($holder) has $log_dir - pod $pod_id is left running for it"; return ;;
        finished) how="training finished" ;;
        failed) how="training exited with code $rc" ;;
        stopped) how="training was stopped with SIG${stop_signal:-TERM}" ;;
    esac
    case $storage in
        network)
            pod_action=remove
            pod_reason="$how and $log_real is on the network volume - removing pod $pod_id: the volume keeps the log and checkpoints, and ./train.sh on a new pod with it continues"
            [[ $outcome == finished ]] || pod_reason+=" (a stopped pod would keep nothing more, and could find no free GPU when restarted)"
            ;;
        volume)
            pod_action=stop
            pod_reason="$how; $log_real is on the pod's volume disk (no network volume: RUNPOD_VOLUME_ID is not set), which removing pod $pod_id would delete - stopping it instead (start it again to get your files, then remove it)"
            ;;
        container)
            pod_reason="$how, but $log_real is outside $workspace_real, on the container disk, which stopping or removing pod $pod_id would wipe - it is left running: copy your files off, then stop it"
            ;;
    esac
}

# Stop or remove the pod until runpodctl's answer and then the pod's status say it happened, waiting longer before
# each new try; returns 1 when that never happened. Logs every answer.
pod_do() {
    local action=$1 tries=0 rc done delays done_word=removed
    [[ $action == stop ]] && done_word=stopped
    read -ra delays <<<"${TRAIN_SH_RETRY_DELAYS-15 30 60 120}"
    while :; do
        tries=$((tries + 1))
        rc=0
        rp "$action" || rc=$?
        say_answer "$rc"
        done=0
        if ((rc == 0)); then
            case $rp_gen/$action in
                1/stop) grep -qF "pod \"$pod_id\" stopped" <<<"$rp_out" && done=1 ;;  # else "stop failed; status is ..."
                1/remove) grep -qF "pod \"$pod_id\" removed" <<<"$rp_out" && done=1 ;;
                2/stop) [[ $(rp_status) == EXITED ]] && done=1 ;;
                2/remove) grep -qE '"deleted": *true' <<<"$rp_out" && done=1 ;;
            esac
        fi
        if ((done)); then
            confirm_pod "$action" && return 0
        elif rp_key_error; then
            say "train.sh: runpodctl's API key is missing or refused - trying again will not help"
            return 1
        fi
        ((tries <= ${#delays[@]})) || break
        say "train.sh: pod $pod_id is not $done_word (try $tries) - trying again in ${delays[tries - 1]} s"
        sleep "${delays[tries - 1]}"
    done
    say "train.sh: pod $pod_id is not $done_word after $tries tries"
    return 1
}

# After runpodctl said it stopped or removed the pod: whether the pod's status agrees. When runpodctl cannot read
# the status now, its answer stands.
confirm_pod() {
    local action=$1 rc=0 status gone=0 done_word=removed
    [[ $action == stop ]] && done_word=stopped
    rp get || rc=$?
    say_answer "$rc"
    status=$(rp_status)
    if [[ $action == remove ]]; then
        [[ $status == TERMINATED ]] && gone=1
        [[ -z $status && ($rc == 0 || $rp_out == *"status 404"*) ]] && gone=1  # v1: no row for it; v2: 404
        if ((gone)); then say "train.sh: done: pod $pod_id is removed"; return 0; fi
    elif [[ $status == EXITED ]]; then
        say "train.sh: done: pod $pod_id is stopped"
        return 0
    fi
    if [[ -n $status ]]; then
        say "train.sh: runpodctl answered as if it worked, but pod $pod_id is $status"
        return 1
    fi
    say "train.sh: done, going by runpodctl's answer: pod $pod_id is $done_word (its status could not be read)"
}

end_pod() {
    plan_pod "$@"
    say "train.sh: $pod_reason"
    [[ -n $pod_action ]] || return 0
    if ! command -v runpodctl >/dev/null 2>&1; then
        say "train.sh: runpodctl not found - $pod_action pod $pod_id yourself in the RunPod console"
        return 0
    fi
    pod_do "$pod_action" && return 0
    if [[ $pod_action == remove ]]; then
        say "train.sh: removing pod $pod_id failed - stopping it instead, so its GPUs stop costing (remove it later in the RunPod console)"
        pod_do stop && return 0
    else
        say "train.sh: not removing pod $pod_id instead: that would delete $log_real"
    fi
    say "train.sh: pod $pod_id may still be running and costing money - stop or remove it in the RunPod console"
}

# --- training, then the pod decision (runs detached unless --foreground) ---

# Run a command, its output also appended to the log file in --foreground mode; returns its exit code.
# tee ignores Ctrl-C, a hangup and kill: it must outlive training's last lines (a dropped SSH closes the terminal,
# not the log file; training then saves a checkpoint and says so, and tee writes that to the log).
run_logged() {
    if [[ -n ${tee_log:-} ]]; then
        "$@" 2>&1 | (trap '' INT HUP TERM; exec tee -a "$tee_log")
        return "${PIPESTATUS[0]}"
    fi
    "$@"
}

run_and_end() {
    local rc=0 outcome
    # Training gets the signals too and handles them (it saves a checkpoint and exits); this script notes which one
    # came and goes on to the pod decision. Ctrl-C is told apart by its signal, not by the exit code: torchrun
    # answers it by forwarding SIGINT to the workers and exiting with 1.
    stop_signal=""
    trap 'stop_signal=${stop_signal:-INT}' INT
    trap 'stop_signal=${stop_signal:-TERM}' TERM
    trap 'stop_signal=${stop_signal:-HUP}' HUP
    export PYTHONUNBUFFERED=1  # live lines in the log file
    locate_log_dir
    say "train.sh: $(date '+%Y-%m-%d %H:%M:%S') on ${HOSTNAME:-this machine}, log dir $log_dir"
    if ! have_shards; then
        say "train.sh: running ${prep_cmd[*]}"
        run_logged "${prep_cmd[@]}" || rc=$?
    fi
    if ((rc == 0)) && [[ -z $stop_signal ]]; then
        say "train.sh: running ${cmd[*]}"
        run_logged "${cmd[@]}" || rc=$?
    fi
    holder=""
    ((rc == 0)) || [[ -n $stop_signal ]] || holder=$(lock_holder)
    if [[ $stop_signal == INT ]] && ((!detached_child)); then
        outcome=ctrl-c
    elif [[ -n $stop_signal ]]; then
        outcome=stopped
    elif [[ -n $holder ]]; then
        outcome=refused  # another run took the log dir: its refusal to start is no outcome of training
    elif ((rc)); then
        outcome=failed
    else
        outcome=finished
    fi
    say "train.sh: $(date '+%Y-%m-%d %H:%M:%S') training ended with exit code $rc${stop_signal:+ after SIG$stop_signal}"
    end_pod "$outcome" "$rc"
    return "$rc"
}

# The preflight, attached. Its screen (stdout) goes to the terminal and the log. Its stderr goes to the log only: when
# it refuses, torchrun adds a long ChildFailedError banner (or a SignalException after Ctrl-C) to the one line that
# says why; that line, and train_gpt2.py's other notices, are shown on the terminal. Ctrl-C stops it, nothing starts.
preflight_pipe() {
    "${cmd[@]}" --preflight 2>"$1" | (trap '' INT HUP TERM; exec tee -a "$logfile")
    return "${PIPESTATUS[0]}"
}

run_preflight() {
    local err rc=0 said report=""
    err=$(mktemp)
    pf_signal=""
    trap 'pf_signal=${pf_signal:-INT}' INT
    trap 'pf_signal=${pf_signal:-TERM}' TERM
    trap 'pf_signal=${pf_signal:-HUP}' HUP
    preflight_pipe "$err" || rc=$?
    trap - INT TERM HUP
    cat "$err" >>"$logfile"
    said=$(grep -a '^train_gpt2.py: ' "$err" | awk '!seen[$0]++') || true  # each rank says it: once
    [[ -z $said ]] || printf '%s\n' "$said" >&2
    if ((rc)) && [[ -z $said && -z $pf_signal ]]; then tail -n 30 "$err" >&2; fi  # a bug, not a refusal: its traceback
    [[ $log_dir/preflight.json -nt $err ]] && report=" ($log_dir/preflight.json has it too)"  # this preflight's
    rm -f "$err"
    if [[ -n $pf_signal ]]; then
        echo "train.sh: the preflight was stopped by SIG$pf_signal: nothing started (its output is in $logfile)" >&2
        exit 130
    fi
    ((rc == 0)) && return 0
    die "the preflight failed (exit code $rc): nothing started - fix what it says above$report, or start with --no-preflight"
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
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    version=$("$PYTHON" -V 2>&1 | head -n 1) || version="not runnable"
    die "$PYTHON is ${version:-not runnable}; this needs Python 3.11 or newer - in RunPod's images run python (3.12, with torch), not python3, or activate the venv (. .venv/bin/activate)"
fi
torch_version=""
if [[ -z ${TRAIN_CMD:-} ]] || ((prep)); then
    if ! torch_version=$("$PYTHON" -c "import torch, numpy, tiktoken; print(torch.__version__)" 2>&1); then
        die "$PYTHON cannot import torch, numpy and tiktoken ($(tail -n1 <<<"$torch_version")) - activate the venv (. .venv/bin/activate) or pip install -r requirements.txt"
    fi
    torch_version=$(tail -n1 <<<"$torch_version")
    if [[ $torch_version =~ ^([0-9]+)\.([0-9]+) ]] && ((BASH_REMATCH[1] < 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] < 4))); then
        die "$PYTHON has torch $torch_version; this kit needs torch 2.4 or newer - use a RunPod image with torch 2.4+ (see the README's setup), or pip install 'torch>=2.4'"
    fi
fi
mkdir -p "$log_dir"
holder=$(lock_holder)
if [[ -n $holder ]]; then  # before the preflight and the pod plan: this launch changes nothing, the pod included
    newest_log=$(ls -t "$log_dir"/train-*.log 2>/dev/null | head -n 1) || true
    die "a training run is already going in $log_dir ($holder) - follow it with: tail -f ${newest_log:-$log_dir/train-*.log}; or start this one with another --log-dir"
fi

# --- the plan for the pod, and whether runpodctl can carry it out ---

plan=()
note() {  # a line of the plan: printed now, and written to the log once the run starts
    plan+=("$*")
    echo "$*"
}
locate_log_dir
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT came with torch 2.12 (pytorch/pytorch#172596); before it, torchrun's wait is 30 s.
if [[ -z ${TRAIN_CMD:-} && $torch_version =~ ^([0-9]+)\.([0-9]+) ]] && ((BASH_REMATCH[1] == 2 && BASH_REMATCH[2] < 12)); then
    note "train.sh: note: torchrun of torch $torch_version kills the workers 30 s after a stop signal (a longer wait needs torch 2.12+): a checkpoint that takes longer to write is lost, the one before it stays"
fi
if [[ -z $pod_id ]]; then
    plan_pod finished
    note "train.sh: $pod_reason"
elif ((keep_pod)); then
    note "train.sh: --keep-pod: pod $pod_id is left running whatever happens (it costs money until you stop it)"
else
    ((rp_environment_used)) && note "train.sh: RUNPOD_POD_ID and the other RUNPOD_* variables read from $RP_ENVIRONMENT"
    case $storage in
        network)
            note "train.sh: log dir $log_real is on the network volume ${RUNPOD_VOLUME_ID}. When training ends:"
            note "train.sh:   finished, failed or stopped with kill: pod $pod_id is removed (the volume keeps the log and checkpoints); if removing fails, it is stopped"
            ;;
        volume)
            note "train.sh: log dir $log_real is on the pod's volume disk (no network volume is attached). When training ends:"
            note "train.sh:   finished, failed or stopped with kill: pod $pod_id is stopped (removing it would delete $workspace_real); if stopping fails, it is left running"
            ;;
        container)
            ((foreground)) || die "log dir $log_real is outside $workspace_real, on the container disk, which stopping or removing pod $pod_id wipes: clone the repo into $workspace_real (or use --log-dir there), or start with --keep-pod"
            note "train.sh: log dir $log_real is outside $workspace_real, on the container disk. When training ends:"
            note "train.sh:   finished, failed or stopped with kill: pod $pod_id is left running (stopping or removing it would wipe the log dir)"
            ;;
    esac
    ((foreground)) && note "train.sh:   Ctrl-C: pod $pod_id is left running"
    if ((!pod_check)); then
        note "train.sh: --no-pod-check: runpodctl is not tried now; it is at the end"
    elif check_pod; then
        note "train.sh: $check_text"
    else
        if command -v runpodctl >/dev/null 2>&1; then
            note "train.sh: $rp_cmd -> exit $check_rc"
            while IFS= read -r line; do note "    $line"; done <<<"$rp_out"
        fi
        ((foreground)) || die "$check_text, so the pod could not be stopped or removed when training ends - make 'runpodctl pod get $pod_id' work (runpodctl on PATH, RUNPOD_API_KEY, network), or start with --keep-pod or --no-pod-check"
        note "train.sh: warning: $check_text - the pod may be left running when training ends"
    fi
fi

logfile="$log_dir/train-$(date +%Y%m%d-%H%M%S).log"
printf '%s\n' "${plan[@]}" >>"$logfile"

# --- the preflight: the same command with --preflight, attached, so its screen is read before logging out ---

if ((preflight)) && ! have_shards; then
    echo "train.sh: no preflight: the shards are made first (--prep); train_gpt2.py checks them when it starts"
elif ((preflight)); then
    tee_log=$logfile say "train.sh: preflight: ${cmd[*]} --preflight"
    run_preflight
fi
if ((foreground)); then
    tee_log=$logfile
    say "train.sh: logging to $logfile"
    run_and_end && exit 0 || exit $?
fi
# In its own session, so logging out does not reach it. Not through nohup or a plain `&`, which would start it with
# SIGHUP, or SIGINT, ignored: a shell cannot trap a signal ignored at its start, and the log should say which signal
# stopped training (`kill -INT -- -PID` too).
"$PYTHON" -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_DFL)
os.setsid()
os.execv(sys.argv[1], sys.argv[1:])' "$SCRIPT" --detached-child "${ORIG_ARGS[@]}" </dev/null >>"$logfile" 2>&1 &
pid=$!
stop_hint="kill -- -$pid"  # train.sh and torchrun; torchrun passes the signal on to its workers, which save and exit
echo "train.sh: training runs in the background (pid $pid, stop it with: $stop_hint), logging to $logfile"
echo "train.sh: follow it with: tail -f $logfile"
