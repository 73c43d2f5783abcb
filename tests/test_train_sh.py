"""train.sh: arguments, checks, detaching, and what happens to the RunPod pod when training ends.

Stand-in `nvidia-smi` and `torchrun` executables in a temporary bin dir record their arguments; a stand-in trainer
(TRAIN_CMD) succeeds or fails at once, so the pod decisions take milliseconds. `runpodctl` is tests/stand_ins/runpodctl,
which answers like runpodctl v2 or v1 (see its header) from a state folder holding the pod's status and the account's
API key. Two tests run the real torchrun: Ctrl-C in a foreground demo run, and the printed kill command reaching every
worker of a detached run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SH = ROOT / "train.sh"
STAND_IN_RUNPODCTL = ROOT / "tests" / "stand_ins" / "runpodctl"
POD = "pod-abc123"
KEY = "rpa_TESTKEY0123456789"
ON_POD = {"RUNPOD_POD_ID": POD, "RUNPOD_API_KEY": KEY}  # a pod without a network volume
ON_VOLUME = {**ON_POD, "RUNPOD_VOLUME_ID": "vol-1"}  # a pod with a network volume at /workspace

TRAINER = r"""#!/usr/bin/env bash
# stand-in trainer: records its arguments, environment and session, prints a line, optionally waits for a file, exits;
# as a preflight (--preflight among its arguments) it records them elsewhere and exits with PREFLIGHT_EXIT at once
if [[ " $* " == *" --preflight "* ]]; then
    printf '%s\n' "$@" > "$CALLS/preflight.args"
    echo "stand-in preflight: screen"
    exit "${PREFLIGHT_EXIT:-0}"
fi
trap 'echo "stand-in trainer: checkpoint saved after SIGTERM"; exit 143' TERM
printf '%s\n' "$@" > "$CALLS/trainer.args"
env | grep -E '^(RUNPOD_|TORCH_ELASTIC_SHUTDOWN_TIMEOUT=|PATH=)' > "$CALLS/trainer.env"
ps -o sid= -p $$ | tr -d ' ' > "$CALLS/trainer.sid"
echo "stand-in trainer: step 1 loss 10.9"
if [[ -n ${WAIT_FOR:-} ]]; then
    for _ in $(seq 400); do [[ -e $WAIT_FOR ]] && break; sleep 0.05; done
fi
echo "stand-in trainer: done"
exit "${TRAINER_EXIT:-0}"
"""
NVIDIA_SMI = r"""#!/usr/bin/env bash
for i in $(seq 0 $((${FAKE_GPUS:-8} - 1))); do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000$i)"; done
"""


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def rig(tmp_path: Path) -> SimpleNamespace:
    """A bin dir of stand-ins, a data dir holding (empty) shard files, a /workspace stand-in with the log dir in it,
    and the RunPod account runpodctl sees: pod POD running, API key KEY."""
    bin_dir, calls, data, volume, runpod = (tmp_path / d for d in ("bin", "calls", "data", "workspace", "runpod"))
    for d in (bin_dir, calls, data, volume, runpod / "pods"):
        d.mkdir(parents=True)
    trainer = write_exe(bin_dir / "trainer", TRAINER)
    (bin_dir / "runpodctl").symlink_to(STAND_IN_RUNPODCTL)
    (runpod / "pods" / POD).write_text("RUNNING\n")
    (runpod / "api_key").write_text(KEY)
    (data / "edufineweb_val_000000.npy").touch()
    (data / "edufineweb_train_000001.npy").touch()
    return SimpleNamespace(root=tmp_path, bin=bin_dir, calls=calls, data=data, volume=volume, log=volume / "log",
                           trainer=trainer, runpod=runpod, rp_environment=tmp_path / "rp_environment")


def rig_env(rig: SimpleNamespace, trainer: bool = True, **env: str) -> dict[str, str]:
    """The environment for train.sh in the rig: no RunPod variables unless given, no real /etc/rp_environment,
    runpodctl retries without waiting."""
    drop = ("RUNPOD_", "RUNPODCTL_", "TRAIN_SH_", "TORCH_ELASTIC_")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "TRAIN_CMD"}
    full_env.update(PATH=f"{rig.bin}:{Path(sys.executable).parent}:{os.environ['PATH']}", CALLS=str(rig.calls),
                    RUNPODCTL_STATE=str(rig.runpod), TRAIN_SH_WORKSPACE=str(rig.volume),
                    TRAIN_SH_RP_ENVIRONMENT=str(rig.rp_environment), TRAIN_SH_RETRY_DELAYS="0 0")
    if trainer:
        full_env["TRAIN_CMD"] = str(rig.trainer)
    full_env.update(env)
    return full_env


def train_sh(rig: SimpleNamespace, *args: str, trainer: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run train.sh in the rig; keyword arguments set environment variables."""
    return subprocess.run([str(TRAIN_SH), *args], cwd=rig.root, env=rig_env(rig, trainer, **env),
                          capture_output=True, text=True, timeout=60)


def foreground(rig: SimpleNamespace, *args: str, **env: str) -> subprocess.CompletedProcess:
    return train_sh(rig, "--foreground", "--log-dir", str(rig.log), *args, "--", "--data", str(rig.data), **env)


def runpodctl_calls(rig: SimpleNamespace) -> list[str]:
    path = rig.calls / "runpodctl"
    return path.read_text().splitlines() if path.exists() else []


def pod_status(rig: SimpleNamespace) -> str:
    path = rig.runpod / "pods" / POD
    return path.read_text().strip() if path.exists() else "removed"


def trainer_args(rig: SimpleNamespace) -> list[str]:
    return (rig.calls / "trainer.args").read_text().splitlines()


def trainer_env(rig: SimpleNamespace) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (rig.calls / "trainer.env").read_text().splitlines())


def train_log(log_dir: Path) -> str:
    logs = sorted(log_dir.glob("train-*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("train.sh: ")
    return lines[0]


# --- what happens to the pod when training ends ---

def test_finished_run_with_log_dir_on_the_network_volume_removes_the_pod(rig):
    r = foreground(rig, **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert runpodctl_calls(rig) == [f"pod get {POD}", f"pod delete {POD}", f"pod get {POD}"]
    assert pod_status(rig) == "removed"
    log = train_log(rig.log)
    assert "stand-in trainer: done" in log and f"removing pod {POD}" in log and f"done: pod {POD} is removed" in log
    assert '"deleted": true' in log  # runpodctl's answer is in the log


def test_failed_run_on_the_network_volume_removes_the_pod_and_says_why(rig):
    r = foreground(rig, TRAINER_EXIT="1", **ON_VOLUME)
    assert r.returncode == 1
    assert pod_status(rig) == "removed"
    log = train_log(rig.log)
    assert "training exited with code 1" in log and "a stopped pod would keep nothing more" in log


@pytest.mark.parametrize("code", ["0", "1"])
def test_run_on_the_pods_own_volume_disk_stops_the_pod_and_never_removes_it(rig, code):
    r = foreground(rig, TRAINER_EXIT=code, **ON_POD)
    assert r.returncode == int(code)
    assert pod_status(rig) == "EXITED"
    assert runpodctl_calls(rig) == [f"pod get {POD}", f"pod stop {POD}", f"pod get {POD}"]
    log = train_log(rig.log)
    assert "RUNPOD_VOLUME_ID is not set" in log and "stopping it instead" in log
    assert f"done: pod {POD} is stopped" in log


def test_without_a_pod_id_runpodctl_is_never_called(rig):
    for code in ("0", "1"):
        r = foreground(rig, RUNPOD_VOLUME_ID="vol-1", TRAINER_EXIT=code)
        assert r.returncode == int(code)
    assert runpodctl_calls(rig) == []
    assert "RUNPOD_POD_ID is not set" in r.stdout


def test_keep_pod_leaves_the_pod_running_and_skips_runpodctl(rig):
    for code in ("0", "1"):
        r = foreground(rig, "--keep-pod", TRAINER_EXIT=code, **ON_VOLUME)
        assert r.returncode == int(code)
    assert runpodctl_calls(rig) == [] and pod_status(rig) == "RUNNING"
    assert "--keep-pod" in r.stdout


@pytest.mark.parametrize("where", ["outside the workspace", "symlinked out of the workspace"])
def test_log_dir_off_the_volume_refuses_a_detached_launch_and_keeps_a_foreground_pod(rig, where):
    if where == "outside the workspace":
        rig.log = rig.root / "container-disk" / "log"
    else:
        (rig.root / "container-disk").mkdir()
        (rig.volume / "log").symlink_to(rig.root / "container-disk")
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), **ON_VOLUME)
    assert "outside" in one_line_error(r) and "--keep-pod" in r.stderr
    assert not (rig.calls / "trainer.args").exists() and not list(rig.log.glob("train-*.log"))

    r = foreground(rig, **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert pod_status(rig) == "RUNNING" and "it is left running: copy your files off" in train_log(rig.log)


def test_detached_launch_off_the_volume_starts_with_keep_pod(rig):
    rig.log = rig.root / "container-disk" / "log"
    r = train_sh(rig, "--keep-pod", "--log-dir", str(rig.log), "--", "--data", str(rig.data), **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert "training runs in the background" in r.stdout


# --- runpodctl v2 and v1, and answers that are not what they seem ---

def test_runpodctl_v1_gets_the_old_command_forms(rig):
    r = foreground(rig, RUNPODCTL_VERSION="1", **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert runpodctl_calls(rig) == [f"pod get {POD}", f"get pod {POD}", f"remove pod {POD}", f"get pod {POD}"]
    assert pod_status(rig) == "removed"
    assert f'pod "{POD}" removed' in train_log(rig.log)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_stop_the_api_ignored_is_caught_and_tried_again(rig, version):
    # v1 prints `stop failed; status is RUNNING` and exits 0; v2 exits 0 with the pod still RUNNING in its JSON
    r = foreground(rig, RUNPODCTL_VERSION=version, RUNPODCTL_STOP_IGNORED="1", **ON_POD)
    assert r.returncode == 0, r.stderr
    stop = f"stop pod {POD}" if version == "1" else f"pod stop {POD}"
    assert runpodctl_calls(rig).count(stop) == 2
    assert pod_status(rig) == "EXITED"
    log = train_log(rig.log)
    assert "try 1" in log and f"done: pod {POD} is stopped" in log
    if version == "1":
        assert "stop failed; status is RUNNING" in log


def test_a_pod_that_says_stopped_but_still_runs_is_not_taken_as_stopped(rig):
    # runpodctl's answer claims success, but pod get still shows it RUNNING: only the status counts
    (rig.bin / "runpodctl").unlink()
    write_exe(rig.bin / "runpodctl", f"""#!/usr/bin/env bash
if [[ $2 == stop ]]; then
    printf '%s\\n' "$*" >> "$CALLS/runpodctl"
    printf '{{\\n  "desiredStatus": "EXITED",\\n  "id": "{POD}"\\n}}\\n'
    exit 0
fi
exec "{STAND_IN_RUNPODCTL}" "$@"
""")
    r = foreground(rig, **ON_POD)
    assert r.returncode == 0
    log = train_log(rig.log)
    assert f"pod {POD} is RUNNING" in log and f"pod {POD} may still be running" in log
    assert runpodctl_calls(rig).count(f"pod stop {POD}") == 3  # the first try and two more


def test_removing_that_keeps_failing_stops_the_pod_instead(rig):
    r = foreground(rig, RUNPODCTL_DELETE_FAILS="1", **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert runpodctl_calls(rig).count(f"pod delete {POD}") == 3
    assert pod_status(rig) == "EXITED"
    log = train_log(rig.log)
    assert "Something went wrong" in log and "stopping it instead" in log and f"done: pod {POD} is stopped" in log


def test_a_network_outage_at_the_end_is_waited_out(rig):
    # calls 1-3 fail: the launch check (a warning in --foreground), then the first two removal tries
    r = foreground(rig, RUNPODCTL_NETWORK_DOWN="3", **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert "warning: runpodctl cannot reach pod" in r.stdout
    assert pod_status(rig) == "removed"
    log = train_log(rig.log)
    assert "no such host" in log and "try 2" in log and f"done: pod {POD} is removed" in log


def test_when_nothing_works_the_log_says_the_pod_may_still_be_billing(rig):
    r = foreground(rig, RUNPODCTL_NETWORK_DOWN="always", **ON_VOLUME)
    assert r.returncode == 0  # training's exit code, whatever happened to the pod
    calls = runpodctl_calls(rig)
    assert calls.count(f"pod delete {POD}") == 3 and calls.count(f"pod stop {POD}") == 3
    assert pod_status(rig) == "RUNNING"
    assert "may still be running and costing money" in train_log(rig.log)


def test_a_missing_api_key_is_not_retried(rig):
    r = foreground(rig, RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1")
    assert r.returncode == 0
    assert runpodctl_calls(rig) == [f"pod get {POD}", f"pod delete {POD}", f"pod stop {POD}"]
    assert "api key not configured" in train_log(rig.log)


def test_the_api_key_never_reaches_the_log(rig):
    # runpodctl v1 puts the key into the URL of its network errors
    r = foreground(rig, RUNPODCTL_VERSION="1", RUNPODCTL_NETWORK_DOWN="always", **ON_VOLUME)
    log = train_log(rig.log)
    assert "api_key=<RUNPOD_API_KEY>" in log
    assert KEY not in log and KEY not in r.stdout


# --- the check and the plan at launch ---

def start_detached(rig: SimpleNamespace, go: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    r = train_sh(rig, *args, "--log-dir", str(rig.log), "--", "--data", str(rig.data), WAIT_FOR=str(go),
                 **(env or ON_VOLUME))
    assert r.returncode == 0, r.stderr
    log_path = Path(r.stdout.split("tail -f ")[1].split()[0])
    assert log_path.parent == rig.log and log_path.name.startswith("train-")
    sid = rig.calls / "trainer.sid"
    wait_until(lambda: sid.exists() and sid.read_text().strip(), log_path)
    return r, log_path


def wait_until(condition, log_path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, log_path.read_text() if log_path.exists() else log_path
        time.sleep(0.02)


def test_launch_prints_the_plan_and_the_check_and_logs_them(rig):
    r, log_path = start_detached(rig, rig.root / "go")
    assert f"pod {POD} is removed (the volume keeps" in r.stdout and "if removing fails, it is stopped" in r.stdout
    assert f"runpodctl (v2) reaches pod {POD}: its status is RUNNING" in r.stdout
    plan = [line for line in r.stdout.splitlines()[:-2] if "notice:" not in line]  # less the launch lines
    assert log_path.read_text().startswith("\n".join(plan) + "\n")
    (rig.root / "go").touch()


@pytest.mark.parametrize("failure", ["no key", "wrong key", "network down", "v1 wrong key", "v1 pod not in account",
                                     "no runpodctl"])
def test_a_detached_launch_is_refused_when_runpodctl_cannot_reach_the_pod(rig, failure):
    env = dict(ON_VOLUME)
    if failure == "no key":
        del env["RUNPOD_API_KEY"]
    elif failure in ("wrong key", "v1 wrong key"):
        env["RUNPOD_API_KEY"] = "rpa_REVOKED"
    elif failure == "network down":
        env["RUNPODCTL_NETWORK_DOWN"] = "always"
    elif failure == "v1 pod not in account":
        env["RUNPOD_POD_ID"] = "pod-someone-else"
    elif failure == "no runpodctl":
        (rig.bin / "runpodctl").unlink()
        env["PATH"] = f"{rig.bin}:{Path(sys.executable).parent}:/usr/bin:/bin"
    if failure.startswith("v1"):
        env["RUNPODCTL_VERSION"] = "1"
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), **env)
    error = one_line_error(r)
    assert "cannot reach pod" in error and "--no-pod-check" in error
    assert not (rig.calls / "trainer.args").exists() and not list(rig.log.glob("train-*.log"))
    if failure != "no runpodctl":
        assert "    " in r.stdout  # runpodctl's answer, indented, above the error
    # the way out the message names
    r = train_sh(rig, "--no-pod-check", "--log-dir", str(rig.log), "--", "--data", str(rig.data), **env)
    assert r.returncode == 0, r.stderr
    assert "training runs in the background" in r.stdout


# --- RunPod's variables from /etc/rp_environment ---

def test_runpod_variables_are_read_from_rp_environment_as_data(rig):
    pwned = rig.root / "pwned"
    rig.rp_environment.write_text(f"""export PATH="/nowhere"
export RUNPOD_POD_ID="{POD}"
export RUNPOD_API_KEY="{KEY}"
  export RUNPOD_VOLUME_ID="vol-1"
export RUNPOD_CPU_COUNT="16"
export RUNPOD_PUBLIC_NOTE="$(touch {pwned})"
RUNPOD_GPU_COUNT='8'
touch {pwned}
""")
    r = foreground(rig)
    assert r.returncode == 0, r.stderr
    assert not pwned.exists()  # nothing in the file ran
    assert pod_status(rig) == "removed"  # it knew the pod, the key and the network volume
    env = trainer_env(rig)
    assert env["RUNPOD_CPU_COUNT"] == "16" and env["RUNPOD_GPU_COUNT"] == "8"
    assert env["RUNPOD_PUBLIC_NOTE"] == f"$(touch {pwned})"
    assert env["PATH"] != "/nowhere"  # only RUNPOD_* variables are taken
    assert "read from" in r.stdout


def test_rp_environment_is_ignored_when_the_shell_has_the_pod_id(rig):
    rig.rp_environment.write_text(f'export RUNPOD_POD_ID="pod-other"\nexport RUNPOD_API_KEY="{KEY}"\n')
    r = foreground(rig, **ON_POD)
    assert r.returncode == 0, r.stderr
    assert all(POD in call for call in runpodctl_calls(rig)) and pod_status(rig) == "EXITED"


# --- stopping a run ---

def test_ctrl_c_in_a_foreground_run_under_torchrun_leaves_the_pod_running(rig, demo_shards):
    """The real torchrun: Ctrl-C makes the terminal send SIGINT to the foreground process group; torchrun passes it
    to the worker (in its own session), which saves a checkpoint, and then exits with 1, not 130."""
    cmd = [str(TRAIN_SH), "--foreground", "--no-preflight", "--nproc", "1", "--log-dir", str(rig.log), "--", "--preset",
           "demo",
           "--data", str(demo_shards), "--hellaswag-every", "0", "--sample-every", "0", "--eval-every", "0"]
    proc = subprocess.Popen(cmd, cwd=rig.root, env=rig_env(rig, trainer=False, **ON_VOLUME), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: list(rig.log.glob("train-*.log")) and " | loss " in train_log(rig.log), rig.log, 120)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = train_log(rig.log)
    assert proc.returncode == 1, out[-3000:]
    assert "training ended with exit code 1 after SIGINT" in log and "interrupted with Ctrl-C" in log
    assert "closing signal SIGINT" in log and list(rig.log.glob("model_*.pt"))  # passed on; the worker saved
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"


WORKER = r"""
import os, signal, sys, time
from pathlib import Path
calls = Path(os.environ["CALLS"])
rank = os.environ["RANK"]
def save(signum, frame):
    time.sleep(0.5)  # a checkpoint being written
    (calls / f"worker{rank}.saved").write_text(os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, save)
(calls / f"worker{rank}.ready").touch()
while True:
    time.sleep(0.05)
"""


def test_the_printed_kill_reaches_every_torchrun_worker_and_then_the_pod_decision_runs(rig):
    worker = rig.root / "worker.py"
    worker.write_text(WORKER)
    torchrun = Path(sys.executable).parent / "torchrun"
    r = train_sh(rig, "--no-preflight", "--log-dir", str(rig.log), "--", "--data", str(rig.data), trainer=False,
                 TRAIN_CMD=f"{torchrun} --standalone --nproc_per_node=2 {worker}", **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    log_path = Path(r.stdout.split("tail -f ")[1].split()[0])
    wait_until(lambda: all((rig.calls / f"worker{i}.ready").exists() for i in (0, 1)), log_path, 60)
    kill = r.stdout.split("stop it with: ")[1].split(")")[0]
    assert kill.startswith("kill -- -")
    subprocess.run(kill.split(), check=True)
    wait_until(lambda: pod_status(rig) == "removed", log_path, 60)
    for i in (0, 1):  # each worker got SIGTERM and had the time to save, under train.sh's shutdown timeout
        assert (rig.calls / f"worker{i}.saved").read_text() == "900"
    log = log_path.read_text()
    assert "after SIGTERM" in log and "training was stopped with SIGTERM" in log


@pytest.mark.parametrize("torch_version", ["2.8.0+cu128", "2.13.0+cpu"])
def test_a_torch_older_than_2_12_gets_a_note_that_its_torchrun_waits_only_30_s(rig, torch_version):
    write_exe(rig.bin / "torchrun", TRAINER)
    python = write_exe(rig.bin / "stand-in-python", f"""#!/usr/bin/env bash
[[ $1 == -c && $2 == *torch.__version__* ]] && {{ echo "{torch_version}"; exit 0; }}
exit 0
""")
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data), trainer=False,
                 PYTHON=str(python))
    assert r.returncode == 0, r.stderr
    noted = f"torchrun of torch {torch_version} kills the workers 30 s after a stop signal"
    assert (noted in r.stdout and noted in train_log(rig.log)) == torch_version.startswith("2.8")


def test_the_shutdown_timeout_is_generous_unless_set(rig):
    foreground(rig)
    assert trainer_env(rig)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "900"
    foreground(rig, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="60")
    assert trainer_env(rig)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "60"


# --- detaching ---

@pytest.mark.parametrize("version", ["2", "1"])
def test_detached_run_returns_at_once_and_logs_training_and_the_pod_decision(rig, version):
    go = rig.root / "go"
    r, log_path = start_detached(rig, go, RUNPODCTL_VERSION=version, **ON_VOLUME)
    assert not go.exists() and "stand-in trainer: done" not in log_path.read_text()  # returned while training runs
    assert int((rig.calls / "trainer.sid").read_text()) != os.getsid(0)  # its own session: logging out won't end it
    check = [f"pod get {POD}"] if version == "2" else [f"pod get {POD}", f"get pod {POD}"]
    assert runpodctl_calls(rig) == check  # the launch check
    go.touch()
    wait_until(lambda: f"done: pod {POD} is removed" in log_path.read_text(), log_path)
    end = [f"pod delete {POD}", f"pod get {POD}"] if version == "2" else [f"pod delete {POD}", f"remove pod {POD}",
                                                                           f"get pod {POD}"]
    assert runpodctl_calls(rig) == check + end  # the background run finds the CLI's generation again
    log = log_path.read_text()
    ended = log.index("training ended with exit code 0")
    assert log.index("stand-in trainer: done") < ended < log.index("removing pod")


def test_killing_the_detached_run_as_printed_lets_training_save_and_ends_the_pod(rig):
    r, log_path = start_detached(rig, rig.root / "never", **ON_POD)
    kill = r.stdout.split("stop it with: ")[1].split(")")[0]
    assert kill.startswith("kill -- -")
    subprocess.run(kill.split(), check=True)
    wait_until(lambda: pod_status(rig) == "EXITED", log_path)
    log = log_path.read_text()
    assert "checkpoint saved after SIGTERM" in log and "exit code 143 after SIGTERM" in log


# --- the preflight ---

def test_the_preflight_runs_attached_with_the_runs_options_before_training_is_detached(rig):
    go = rig.root / "go"
    r, log_path = start_detached(rig, go, **ON_VOLUME)
    assert "stand-in preflight: screen" in r.stdout  # on the terminal, before train.sh returns
    preflight = (rig.calls / "preflight.args").read_text().splitlines()
    assert preflight == trainer_args(rig) + ["--preflight"]
    assert "stand-in preflight: screen" in log_path.read_text()
    go.touch()


def test_a_failed_preflight_starts_nothing_and_says_so_in_one_line(rig):
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), PREFLIGHT_EXIT="1", **ON_VOLUME)
    assert "the preflight failed (exit code 1)" in one_line_error(r) and "--no-preflight" in r.stderr
    assert "stand-in preflight: screen" in r.stdout
    assert not (rig.calls / "trainer.args").exists() and runpodctl_calls(rig) == [f"pod get {POD}"]


def test_no_preflight_skips_it(rig):
    r = foreground(rig, "--no-preflight")
    assert r.returncode == 0 and not (rig.calls / "preflight.args").exists()
    assert (rig.calls / "trainer.args").exists()


# --- the launch command ---

def test_nproc_defaults_to_the_gpus_nvidia_smi_lists(rig):
    write_exe(rig.bin / "nvidia-smi", NVIDIA_SMI)
    write_exe(rig.bin / "torchrun", TRAINER)  # records the launcher's arguments
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data),
                 trainer=False, FAKE_GPUS="8")
    assert r.returncode == 0, r.stderr
    args = trainer_args(rig)
    assert args[:3] == ["--standalone", "--nproc_per_node=8", str(ROOT / "train_gpt2.py")]
    r = train_sh(rig, "--foreground", "--nproc", "2", "--log-dir", str(rig.log), "--", "--data", str(rig.data),
                 trainer=False, FAKE_GPUS="8")
    assert r.returncode == 0 and "--nproc_per_node=2" in trainer_args(rig)


def test_nproc_is_1_without_nvidia_smi(rig):
    if shutil.which("nvidia-smi"):
        pytest.skip("a real nvidia-smi is on PATH")
    write_exe(rig.bin / "torchrun", TRAINER)
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data), trainer=False)
    assert r.returncode == 0, r.stderr
    assert "--nproc_per_node=1" in trainer_args(rig)


def test_without_torchrun_on_path_it_launches_through_python_m_torch_distributed_run(rig):
    if shutil.which("torchrun", path="/usr/bin:/bin"):
        pytest.skip("a torchrun outside the venv is on PATH")
    python = write_exe(rig.bin / "stand-in-python", '#!/usr/bin/env bash\n[[ $1 == -c ]] || exec "$TRAINER" "$@"\n')
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data), trainer=False,
                 PATH=f"{rig.bin}:/usr/bin:/bin", PYTHON=str(python), TRAINER=str(rig.trainer))
    assert r.returncode == 0, r.stdout + r.stderr
    assert trainer_args(rig)[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]


def test_checkpoint_and_epochs_become_resume_and_epochs(rig):
    ckpt = rig.log / "model_19072.pt"
    ckpt.parent.mkdir()
    ckpt.touch()
    r = foreground(rig, str(ckpt), "2")
    assert r.returncode == 0, r.stderr
    assert trainer_args(rig) == ["--log-dir", str(rig.log), "--resume", str(ckpt), "--epochs", "2",
                                 "--data", str(rig.data)]


def test_without_a_checkpoint_training_resumes_automatically(rig):
    r = foreground(rig)
    assert r.returncode == 0, r.stderr
    assert trainer_args(rig) == ["--log-dir", str(rig.log), "--resume", "auto", "--data", str(rig.data)]


def test_log_dir_after_the_separator_is_used_once(rig):
    r = train_sh(rig, "--foreground", "--", "--log-dir", str(rig.log), "--data", str(rig.data), "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    assert trainer_args(rig) == ["--log-dir", str(rig.log), "--resume", "auto", "--data", str(rig.data),
                                 "--lr", "1e-3"]
    assert "stand-in trainer: done" in train_log(rig.log)


# --- checks before starting ---

def test_help_says_what_happens_to_the_pod_in_each_outcome(rig):
    r = train_sh(rig, "--help")
    assert r.returncode == 0
    text = r.stdout[r.stdout.index("What happens to the RunPod pod"):]
    for outcome, fate in [("network volume", "the pod is removed"), ("volume disk", "the pod is stopped"),
                          ("outside /workspace", "a detached launch is refused"),
                          ("Ctrl-C", "left running"), ("--keep-pod", "left running"),
                          ("removing fails", "stopped instead"), ("stopping fails", "left running")]:
        line = next(line for line in text.splitlines() if outcome in line)
        assert fate in text[text.index(line):text.index(line) + 400], outcome
    assert "--no-pod-check" in text and "runpodctl v2" in text and "v1" in text


def test_missing_shards_is_one_clear_line_and_nothing_starts(rig):
    empty = rig.root / "empty"
    empty.mkdir()
    r = train_sh(rig, "--foreground", "--", "--data", str(empty))
    assert "python fineweb.py" in one_line_error(r) and str(empty) in r.stderr
    assert not (rig.calls / "trainer.args").exists()


def test_prep_runs_fineweb_into_the_data_dir_before_training(rig):
    empty = rig.root / "empty"
    empty.mkdir()
    python = write_exe(rig.bin / "stand-in-python", r"""#!/usr/bin/env bash
# stand-in interpreter: the version and import checks pass; fineweb.py records its arguments and writes a train shard
[[ $1 == -c ]] && exit 0
printf '%s\n' "${@:2}" > "$CALLS/fineweb.args"
echo "stand-in fineweb.py: wrote 1 shard"
touch "$3/edufineweb_train_000001.npy"
""")
    r = train_sh(rig, "--foreground", "--prep", "--log-dir", str(rig.log), "--", "--preset", "demo", "--data",
                 str(empty), PYTHON=str(python))
    assert r.returncode == 0, r.stderr
    assert (rig.calls / "fineweb.args").read_text().splitlines() == ["--out", str(empty), "--demo"]
    log = train_log(rig.log)
    assert log.index("stand-in fineweb.py: wrote 1 shard") < log.index("stand-in trainer: done")


def test_missing_checkpoint_file_and_bad_epochs_are_one_line(rig):
    assert "no checkpoint file" in one_line_error(foreground(rig, str(rig.root / "model_00001.pt")))
    assert "EPOCHS" in one_line_error(foreground(rig, "auto", "two"))
    assert "unknown option" in one_line_error(train_sh(rig, "--epochs", "2"))


def test_python_older_than_3_11_is_one_line_naming_python(rig):
    python = write_exe(rig.bin / "python3.10", r"""#!/usr/bin/env bash
# stand-in for the Python 3.10 that python3 is in RunPod's ubuntu2204 images
[[ $1 == -V ]] && { echo "Python 3.10.12"; exit 0; }
[[ $1 == -c && $2 == *version_info* ]] && exit 1
exit 0
""")
    error = one_line_error(foreground(rig, PYTHON=str(python)))
    assert "Python 3.10.12" in error and "3.11" in error and "run python" in error
    assert not (rig.calls / "trainer.args").exists()


def test_python_without_torch_is_one_line_about_the_venv(rig):
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("no system python without torch")
    r = train_sh(rig, "--foreground", "--", "--data", str(rig.data), trainer=False, PYTHON=bare)
    assert "venv" in one_line_error(r)


@pytest.mark.parametrize("torch_version", ["2.3.1+cu121", "1.13.1"])
def test_a_torch_older_than_the_floor_is_refused_in_one_line(rig, torch_version):
    python = write_exe(rig.bin / "old-torch-python", f"""#!/usr/bin/env bash
[[ $1 == -c && $2 == *torch.__version__* ]] && {{ echo "{torch_version}"; exit 0; }}
exec {sys.executable} "$@"
""")
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data), trainer=False,
                 PYTHON=str(python))
    line = one_line_error(r)
    assert f"torch {torch_version}" in line and "2.4 or newer" in line
    assert not (rig.calls / "trainer.args").exists()


def test_missing_hellaswag_data_is_a_notice_and_training_goes_on(rig):
    r = foreground(rig)
    assert r.returncode == 0
    assert "notice: no HellaSwag data" in r.stdout
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data),
                 "--hellaswag-every", "0")
    assert "HellaSwag" not in r.stdout


# --- the real thing ---

def test_foreground_demo_run_end_to_end(tmp_path, demo_shards):
    log_dir = tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "TRAIN_SH_")) and k != "TRAIN_CMD"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["TRAIN_SH_RP_ENVIRONMENT"] = str(tmp_path / "no-rp_environment")
    r = subprocess.run([str(TRAIN_SH), "--foreground", "--nproc", "1", "--log-dir", str(log_dir), "--",
                        "--preset", "demo", "--data", str(demo_shards), "--max-steps", "2", "--n-layer", "2",
                        "--n-head", "2", "--n-embd", "64", "--batch-size", "4", "--seq-len", "64",
                        "--total-batch-size", "256", "--eval-every", "1", "--val-steps", "1",
                        "--hellaswag-every", "0", "--sample-every", "0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list(log_dir.glob("model_*.pt"))
    events = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "train" for e in events) == 2 and any(e["event"] == "val" for e in events)
    log = train_log(log_dir)
    assert "training ended with exit code 0" in log and log.index("preflight passed") < log.index("train.sh: running")
    assert json.loads((log_dir / "preflight.json").read_text())["passed"]


# --- seams: the log-dir lock, stop signals and the preflight, each against the pod decision ---

def hold_log_dir(log_dir: Path) -> subprocess.Popen:
    """Another training run's hold on log_dir: a process that takes train_gpt2.py's log-dir lock and keeps it."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, checkpoints; checkpoints.lock_log_dir(sys.argv[1]); "
                               "print('locked', flush=True); sys.stdin.read()", str(log_dir)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_launch_on_a_log_dir_with_a_live_run_changes_nothing_and_leaves_the_pod(rig):
    holder = hold_log_dir(rig.log)
    try:
        r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), **ON_VOLUME)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    line = one_line_error(r)
    assert "already going" in line and f"pid {holder.pid}" in line and "tail -f" in line
    assert not (rig.calls / "preflight.args").exists() and not (rig.calls / "trainer.args").exists()
    assert runpodctl_calls(rig) == [] and pod_status(rig) == "RUNNING"


LATE_LOCKER = r"""#!/usr/bin/env bash
# stand-in trainer: another run takes the log dir just before this one starts (it keeps the lock), so this one fails
(cd "$ROOT" && exec python -c 'import sys, time, checkpoints
checkpoints.lock_log_dir(sys.argv[1]); print("locked", flush=True)
time.sleep(60)' "$LOG") > "$CALLS/holder.out" 2>&1 </dev/null &
echo $! > "$CALLS/holder.pid"
for _ in $(seq 400); do grep -q locked "$CALLS/holder.out" 2>/dev/null && break; sleep 0.05; done
echo "train_gpt2.py: $LOG/ is in use by another training run" >&2
exit 1
"""


def test_a_run_refused_because_another_took_the_log_dir_leaves_the_pod_running(rig):
    locker = write_exe(rig.bin / "late-locker", LATE_LOCKER)
    try:
        r = foreground(rig, "--no-preflight", TRAIN_CMD=str(locker), ROOT=str(ROOT), LOG=str(rig.log), **ON_VOLUME)
        holder = int((rig.calls / "holder.pid").read_text())
    finally:
        pid = rig.calls / "holder.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGKILL)
    assert r.returncode == 1
    log = train_log(rig.log)
    assert f"another run (pid {holder} on" in log and "left running for it" in log
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"


def start_foreground_demo(rig: SimpleNamespace, demo_shards: Path, *args: str, train: tuple[str, ...] = (),
                          **env: str) -> subprocess.Popen:
    """train.sh --foreground of the demo under the real torchrun, in its own process group (as a terminal runs it)."""
    cmd = [str(TRAIN_SH), "--foreground", "--nproc", "1", "--log-dir", str(rig.log), *args, "--", "--preset", "demo",
           "--data", str(demo_shards), "--hellaswag-every", "0", "--sample-every", "0", "--eval-every", "0", *train]
    return subprocess.Popen(cmd, cwd=rig.root, env=rig_env(rig, trainer=False, **env), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_hangup_or_kill_of_a_foreground_runs_group_still_saves_and_logs_it(rig, demo_shards, sig):
    """A dropped SSH (SIGHUP) or `kill -- -PID` (SIGTERM) reaches train.sh, torchrun and tee: tee must live on so that
    training's output has somewhere to go while it saves."""
    proc = start_foreground_demo(rig, demo_shards, "--no-preflight", **ON_VOLUME)
    try:
        wait_until(lambda: list(rig.log.glob("train-*.log")) and " | loss " in train_log(rig.log), rig.log, 120)
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log, name = train_log(rig.log), sig.name
    assert f"{name} - finishing this step, then saving a checkpoint" in log and "BrokenPipeError" not in log + out
    saved = list(rig.log.glob("model_*.pt"))
    assert saved and f"saved {saved[0]}" in log
    stop, end = [json.loads(line) for line in (rig.log / "metrics.jsonl").read_text().splitlines()][-2:]
    assert stop["event"] == "stop" and stop["signal"] == name
    assert end["event"] == "end" and end["status"] == "interrupted"
    assert f"after {name}" in log and f"training was stopped with {name}" in log and pod_status(rig) == "removed"


def test_ctrl_c_in_train_shs_preflight_stops_it_in_one_line_and_starts_nothing(rig, demo_shards):
    proc = start_foreground_demo(rig, demo_shards, train=("--preflight-steps", "100000"), **ON_VOLUME)
    try:
        wait_until(lambda: list(rig.log.glob("train-*.log")) and "config:" in train_log(rig.log), rig.log, 120)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    assert "train.sh: the preflight was stopped by SIGINT: nothing started" in out
    assert "train_gpt2.py: preflight stopped by SIGINT - nothing was started" in out
    assert not any(word in out for word in ("Traceback", "SignalException", "ChildFailedError", "preflight failed"))
    assert not list(rig.log.glob("model_*.pt")) and not (rig.log / "preflight.json").exists()
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"


def test_a_preflight_refusal_under_torchrun_is_its_one_line_without_torchruns_banner(rig, tiny_shards):
    tiny = ["--data", str(tiny_shards), "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32",
            "--batch-size", "4", "--total-batch-size", "256", "--eval-every", "0", "--hellaswag-every", "0",
            "--sample-every", "0", "--max-steps", "2"]
    finished = subprocess.run([sys.executable, str(ROOT / "train_gpt2.py"), *tiny, "--log-dir", str(rig.log)],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    (rig.log / "preflight.json").write_text('{"passed": true}\n')  # an earlier run's
    time.sleep(0.01)
    r = train_sh(rig, "--nproc", "1", "--log-dir", str(rig.log), "--", *tiny, trainer=False, **ON_VOLUME)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0].startswith("train_gpt2.py: ") and "already trained step 2 of 2" in lines[0]
    assert lines[1].startswith("train.sh: the preflight failed") and "preflight.json" not in lines[1]
    assert "ChildFailedError" not in r.stdout + r.stderr and "ChildFailedError" in train_log(rig.log)
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_detached_run_stopped_by_int_or_hup_logs_the_signal(rig, sig):
    r, log_path = start_detached(rig, rig.root / "never", **ON_POD)
    pid = int(r.stdout.split("stop it with: kill -- -")[1].split(")")[0])
    os.killpg(pid, sig)
    wait_until(lambda: pod_status(rig) == "EXITED", log_path)
    log = log_path.read_text()
    assert f"after {sig.name}" in log and f"training was stopped with {sig.name}" in log
