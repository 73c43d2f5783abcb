"""train.sh: arguments, checks, the preflight, detaching, stop signals, and pod.py called at launch and at the end.

Stand-in `nvidia-smi` and `torchrun` executables in a temporary bin dir record their arguments; a stand-in trainer
(TRAIN_CMD) logs a first step as train_gpt2.py does and succeeds or fails at once. `runpodctl` is
tests/stand_ins/runpodctl (see its header); pod.py's own rules are tested in tests/test_pod.py, and here only as
train.sh carries them out. The tests of stop signals run the real torchrun, with signals sent to the process group, as
a terminal or `kill -- -PID` sends them."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import KEY, ON_POD, ON_VOLUME, POD, as_at_a_terminal

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SH = ROOT / "train.sh"

TRAINER = r"""#!/usr/bin/env bash
# stand-in trainer: records its arguments, environment and session, prints a line and logs its first step as
# train_gpt2.py does (a train event in LOG_DIR/metrics.jsonl; not with NO_STEP=1), optionally waits for a file, exits;
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
log_dir=log
for ((i = 1; i < $#; i++)); do [[ ${!i} == --log-dir ]] && { j=$((i + 1)); log_dir=${!j}; }; done
if [[ -z ${NO_STEP:-} ]]; then
    echo "stand-in trainer: step 1 loss 10.9"
    mkdir -p "$log_dir" && echo '{"event": "train", "step": 0, "loss": 10.9}' >> "$log_dir/metrics.jsonl"
fi
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
def rig(tmp_path: Path, account: SimpleNamespace) -> SimpleNamespace:
    """A bin dir of stand-ins (runpodctl: the RunPod account of conftest.py, pod POD running), a data dir holding
    (empty) shard files and a /workspace stand-in with the log dir in it."""
    data, volume = tmp_path / "data", tmp_path / "workspace"
    for d in (data, volume):
        d.mkdir(parents=True)
    trainer = write_exe(account.bin / "trainer", TRAINER)
    (data / "edufineweb_val_000000.npy").touch()
    (data / "edufineweb_train_000001.npy").touch()
    return SimpleNamespace(root=tmp_path, bin=account.bin, calls=account.dir, data=data, volume=volume,
                           log=volume / "log", trainer=trainer, runpod=account.state, account=account,
                           rp_environment=tmp_path / "rp_environment")


def rig_env(rig: SimpleNamespace, trainer: bool = True, **env: str) -> dict[str, str]:
    """The environment for train.sh in the rig: no RunPod variables unless given, no real /etc/rp_environment,
    runpodctl retries without waiting."""
    drop = ("RUNPOD_", "RUNPODCTL_", "POD_", "TORCH_ELASTIC_")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "TRAIN_CMD"}
    full_env.update(rig.account.env, PATH=f"{rig.bin}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                    POD_WORKSPACE=str(rig.volume), POD_RP_ENVIRONMENT=str(rig.rp_environment),
                    POD_RETRY_DELAYS="0 0")
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
    return rig.account.calls()


def pod_status(rig: SimpleNamespace) -> str:
    return rig.account.status()


def trainer_args(rig: SimpleNamespace) -> list[str]:
    return (rig.calls / "trainer.args").read_text().splitlines()


def trainer_env(rig: SimpleNamespace) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (rig.calls / "trainer.env").read_text().splitlines())


def train_log(log_dir: Path) -> str:
    logs = sorted(log_dir.glob("train-*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def one_line_error(r: subprocess.CompletedProcess, by: str = "train.sh") -> str:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{by}: ")
    return lines[0]


# --- pod.py at launch and at the end: train.sh hands it the log dir and how training ended (test_pod.py: its rules)

@pytest.mark.parametrize("code", ["0", "1"])
def test_a_foreground_run_ends_the_pod_after_training_and_exits_with_trainings_code(rig, code):
    r = foreground(rig, TRAINER_EXIT=code, **ON_VOLUME)
    assert r.returncode == int(code), r.stderr
    assert runpodctl_calls(rig) == [f"pod get {POD}", f"pod delete {POD}", f"pod get {POD}"]
    assert pod_status(rig) == "removed"
    log = train_log(rig.log)
    ended = log.index(f"training ended with exit code {code}")
    assert log.index("stand-in trainer: done") < ended < log.index(f"done: pod {POD} is removed")
    assert '"deleted": true' in log  # runpodctl's answer is in the log


@pytest.mark.parametrize("where", ["outside the workspace", "symlinked out of the workspace"])
def test_log_dir_off_the_volume_refuses_a_detached_launch_and_keeps_a_foreground_pod(rig, where):
    if where == "outside the workspace":
        rig.log = rig.root / "container-disk" / "log"
    else:
        (rig.root / "container-disk").mkdir()
        (rig.volume / "log").symlink_to(rig.root / "container-disk")
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), **ON_VOLUME)
    assert "outside" in one_line_error(r, by="pod.py") and "--keep-pod" in r.stderr
    assert not (rig.calls / "trainer.args").exists() and not list(rig.log.glob("train-*.log"))

    r = foreground(rig, **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    assert pod_status(rig) == "RUNNING" and f"keeping pod {POD} running" in train_log(rig.log)


def test_detached_launch_off_the_volume_starts_with_keep_pod(rig):
    rig.log = rig.root / "container-disk" / "log"
    r, _ = start_detached(rig, rig.root / "go", "--keep-pod", **ON_VOLUME)
    assert "training runs in the background" in r.stdout
    (rig.root / "go").touch()


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


def wait_until(condition, log_path: Path, seconds: float = 60) -> None:
    # a deadline, not a pause: a background run's pod decision took over 20 s on a loaded 2-core machine
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, log_path.read_text() if log_path.exists() else log_path
        time.sleep(0.02)


def test_launch_prints_the_plan_and_the_check_and_logs_them(rig):
    r, log_path = start_detached(rig, rig.root / "go")
    assert f"pod {POD} is removed (the volume keeps" in r.stdout and "if removing fails, it is stopped" in r.stdout
    assert f"runpodctl (v2) reaches pod {POD}: its status is RUNNING" in r.stdout
    plan = [line for line in r.stdout.split("train.sh: waiting for")[0].splitlines() if "notice:" not in line]
    assert log_path.read_text().startswith("\n".join(plan) + "\n")
    (rig.root / "go").touch()


def test_a_detached_launch_is_refused_when_runpodctl_cannot_reach_the_pod(rig):
    env = {**ON_VOLUME, "RUNPOD_API_KEY": "rpa_REVOKED"}
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), **env)
    error = one_line_error(r, by="pod.py")
    assert "cannot reach pod" in error and "--no-pod-check" in error
    assert not (rig.calls / "trainer.args").exists() and not list(rig.log.glob("train-*.log"))
    assert "    " in r.stdout  # runpodctl's answer, indented, above the error
    # the way out the message names
    r, _ = start_detached(rig, rig.root / "go", "--no-pod-check", **env)
    assert "training runs in the background" in r.stdout
    (rig.root / "go").touch()


# --- RunPod's variables from /etc/rp_environment ---

def test_runpod_variables_from_rp_environment_reach_training_and_pod_py(rig):
    # how pod.py reads the file (as data: nothing in it runs) is tested in test_pod.py
    rig.rp_environment.write_text(f'export PATH="/nowhere"\nexport RUNPOD_POD_ID="{POD}"\n'
                                  f'export RUNPOD_API_KEY="{KEY}"\nexport RUNPOD_VOLUME_ID="vol-1"\n'
                                  "export RUNPOD_CPU_COUNT='16'\n")
    r = foreground(rig)
    assert r.returncode == 0, r.stderr
    assert pod_status(rig) == "removed"  # it knew the pod, the key and the network volume
    env = trainer_env(rig)
    assert env["RUNPOD_CPU_COUNT"] == "16" and env["RUNPOD_POD_ID"] == POD
    assert env["PATH"] != "/nowhere"  # only RUNPOD_* variables are taken
    assert "read from" in r.stdout


# --- stopping a run ---

def test_ctrl_c_in_a_foreground_run_under_torchrun_leaves_the_pod_running(rig, demo_shards):
    """The real torchrun: Ctrl-C makes the terminal send SIGINT to the foreground process group; torchrun passes it
    to the worker (in its own session), which saves a checkpoint, and then exits with 1, not 130."""
    cmd = [str(TRAIN_SH), "--foreground", "--no-preflight", "--nproc", "1", "--log-dir", str(rig.log), "--", "--preset",
           "demo",
           "--data", str(demo_shards), "--hellaswag-every", "0", "--sample-every", "0", "--eval-every", "0"]
    proc = subprocess.Popen(cmd, cwd=rig.root, env=rig_env(rig, trainer=False, **ON_VOLUME), start_new_session=True,
                            preexec_fn=as_at_a_terminal,
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
if rank == "0":  # its first step, logged as train_gpt2.py logs it
    log_dir = Path(sys.argv[sys.argv.index("--log-dir") + 1])
    with open(log_dir / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 0}\n')
(calls / f"worker{rank}.ready").touch()
for _ in range(6000):  # at most 5 minutes: a failed test leaves nothing running
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
exec {sys.executable} "$@"
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
def test_detached_run_returns_after_its_first_step_and_logs_training_and_the_pod_decision(rig, version):
    go = rig.root / "go"
    r, log_path = start_detached(rig, go, RUNPODCTL_VERSION=version, **ON_VOLUME)
    assert not go.exists() and "stand-in trainer: done" not in log_path.read_text()  # returned while training runs
    assert r.stdout.index("waiting for training's first step") < r.stdout.index("stand-in trainer: step 1") < \
        r.stdout.index("training runs in the background")
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
    assert "the preflight failed (exit code 1)" in one_line_error(r) and "--no-preflight" not in r.stderr
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
    # --device cpu: the suite's torch sees no GPU, which train.sh refuses on a GPU machine otherwise (test below)
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data), "--device", "cpu",
                 trainer=False, FAKE_GPUS="8")
    assert r.returncode == 0, r.stderr
    args = trainer_args(rig)
    assert args[:3] == ["--standalone", "--nproc_per_node=8", str(ROOT / "train_gpt2.py")]
    r = train_sh(rig, "--foreground", "--nproc", "2", "--log-dir", str(rig.log), "--", "--data", str(rig.data),
                 "--device", "cpu", trainer=False, FAKE_GPUS="8")
    assert r.returncode == 0 and "--nproc_per_node=2" in trainer_args(rig)


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch (the refusal's pip command)")
def test_a_gpu_machine_whose_torch_sees_no_gpu_is_one_line_and_leaves_the_pod(rig):
    # RunPod's H100 host with driver 570 (CUDA 12.8), and the suite's CPU torch: what a PyPI torch 2.11+ gives there
    shutil.copy(ROOT / "tests" / "stand_ins" / "nvidia-smi", rig.bin / "nvidia-smi")
    write_exe(rig.bin / "torchrun", TRAINER)
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), trainer=False, FAKE_GPUS="8",
                 RUNPOD_POD_ID=POD)
    error = one_line_error(r)
    assert r.returncode == 2 and "sees 0 of this machine's 8 GPU(s)" in error and "570.195.03" in error
    assert "--index-url https://download.pytorch.org/whl/cu128" in error
    assert not (rig.calls / "trainer.args").exists() and not rig.log.exists()
    assert runpodctl_calls(rig) == [] and pod_status(rig) == "RUNNING"


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
    python = write_exe(rig.bin / "stand-in-python", f"""#!/usr/bin/env bash
[[ $1 == -m ]] && exec "$TRAINER" "$@"
exec {sys.executable} "$@"
""")
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
    assert trainer_args(rig) == ["--resume", "auto", "--log-dir", str(rig.log), "--data", str(rig.data),
                                 "--lr", "1e-3"]
    assert list(rig.log.glob("train-*.log"))  # train.sh's log is in it too
    assert "stand-in trainer: done" in train_log(rig.log)


def test_a_log_dir_with_a_space_is_quoted_in_every_command_train_sh_prints(rig):
    log_dir, go = rig.volume / "my log", rig.root / "go"  # training runs until go exists, so train.sh returns first
    r = train_sh(rig, "--log-dir", str(log_dir), "--", "--data", str(rig.data), WAIT_FOR=str(go), **ON_VOLUME)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines() + train_log(log_dir).splitlines()
    go.touch()
    wait_until(lambda: "done: pod" in train_log(log_dir), next(log_dir.glob("train-*.log")))
    preflight = next(line for line in lines if line.startswith("train.sh: preflight: "))
    running = next(line for line in lines if line.startswith("train.sh: running "))
    follow = next(line for line in lines if line.startswith("train.sh: follow it with: tail -f "))
    for line, prefix in [(preflight, "train.sh: preflight: "), (running, "train.sh: running "),
                         (follow, "train.sh: follow it with: tail -f ")]:
        words = shlex.split(line.removeprefix(prefix))
        assert str(log_dir) in words or any(w.startswith(f"{log_dir}/train-") for w in words), line


# --- checks before starting ---

def test_help_has_the_options_and_names_pod_pys_help_for_the_pod(rig):
    r = train_sh(rig, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: ./train.sh")
    for option in ("--nproc", "--log-dir", "--prep", "--foreground", "--no-preflight", "--keep-pod", "--no-pod-check"):
        assert f"  {option}" in r.stdout
    assert "python pod.py --help" in r.stdout and "set -e" not in r.stdout


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
# stand-in interpreter: the import check passes; fineweb.py records its arguments and writes a train shard
[[ $1 == -c ]] && exit 0
[[ $1 == */fineweb.py ]] || exec "$REAL_PYTHON" "$@"
printf '%s\n' "${@:2}" > "$CALLS/fineweb.args"
echo "stand-in fineweb.py: wrote 1 shard"
touch "$3/edufineweb_train_000001.npy"
""")
    r = train_sh(rig, "--foreground", "--prep", "--log-dir", str(rig.log), "--", "--preset", "demo", "--data",
                 str(empty), PYTHON=str(python), REAL_PYTHON=sys.executable)
    assert r.returncode == 0, r.stderr
    assert (rig.calls / "fineweb.args").read_text().splitlines() == ["--out", str(empty), "--demo"]
    log = train_log(rig.log)
    assert log.index("stand-in fineweb.py: wrote 1 shard") < log.index("stand-in trainer: done")


def test_prep_downloads_the_default_data_already_tokenized_and_reruns_to_finish_a_partial_download(rig):
    python = write_exe(rig.bin / "stand-in-python", r"""#!/usr/bin/env bash
# stand-in interpreter: the import check passes; fineweb.py records its arguments and writes a .bin train shard
[[ $1 == -c ]] && exit 0
[[ $1 == */fineweb.py ]] || exec "$REAL_PYTHON" "$@"
printf '%s\n' "${@:2}" > "$CALLS/fineweb.args"
mkdir -p "$3" && touch "$3/finewebedu_train_000001.bin"
""")
    args = rig.calls / "fineweb.args"
    for _ in range(2):  # the second time shards are there: the download still runs (a partial one goes on)
        args.unlink(missing_ok=True)
        r = train_sh(rig, "--foreground", "--prep", "--no-preflight", "--log-dir", str(rig.log), PYTHON=str(python),
                     REAL_PYTHON=sys.executable)
        assert r.returncode == 0, r.stderr
        assert args.read_text().splitlines() == ["--out", "edu_fineweb10B", "--pretokenized"]
    (rig.root / "edu_fineweb10B" / ".fineweb_state.json").write_text("{}")  # a tokenizing run's folder: left to it
    args.unlink()
    r = train_sh(rig, "--foreground", "--prep", "--no-preflight", "--log-dir", str(rig.log), PYTHON=str(python),
                 REAL_PYTHON=sys.executable)
    assert r.returncode == 0, r.stderr
    assert not args.exists()


def test_missing_checkpoint_file_and_bad_epochs_are_one_line(rig):
    assert "no checkpoint file" in one_line_error(foreground(rig, str(rig.root / "model_00001.pt")))
    assert "EPOCHS" in one_line_error(foreground(rig, "auto", "two"))
    assert "unknown option" in one_line_error(train_sh(rig, "--epochs", "2"))


def test_python_older_than_3_10_is_one_line_naming_python(rig):
    python = write_exe(rig.bin / "python3.9", r"""#!/usr/bin/env bash
# stand-in for a Python 3.9, older than the kit supports (RunPod's py3.10 images are the oldest it runs on)
[[ $1 == -V ]] && { echo "Python 3.9.18"; exit 0; }
[[ $1 == -c && $2 == *version_info* ]] && exit 1
exit 0
""")
    error = one_line_error(foreground(rig, PYTHON=str(python)))
    assert "Python 3.9.18" in error and "3.10" in error and "run python" in error
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
    assert f"torch {torch_version}" in line and "2.4 or newer - python common.py --install-torch" in line
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
    line = one_line_error(r, by="pod.py")
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
                            preexec_fn=as_at_a_terminal,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_hangup_or_kill_of_a_foreground_runs_group_still_saves_and_logs_it(rig, demo_shards, sig):
    """A dropped SSH (SIGHUP) or `kill -- -PID` (SIGTERM) reaches train.sh (now pod.py run, the tee to the terminal and
    the log) and torchrun: the tee must live on so that training's output has somewhere to go while it saves."""
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


# --- the pod is touched only by a launch that trained: train.sh waits for the first step (the real torchrun) ---

def tiny(shards: Path) -> list[str]:
    """train_gpt2.py options of a tiny run (two layers of 32) on shards."""
    return ["--data", str(shards), "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32",
            "--batch-size", "4", "--total-batch-size", "128", "--eval-every", "0", "--hellaswag-every", "0",
            "--sample-every", "0"]


def launch(rig: SimpleNamespace, *args: str, **env: str) -> subprocess.CompletedProcess:
    """A detached ./train.sh --no-preflight under the real torchrun; ARGS: train.sh's options, then after -- (if any)
    train_gpt2.py's."""
    return subprocess.run([str(TRAIN_SH), "--no-preflight", "--log-dir", str(rig.log), *args], cwd=rig.root,
                          env=rig_env(rig, trainer=False, **env), capture_output=True, text=True, timeout=300)


def test_a_launch_of_a_run_already_trained_says_so_exits_non_zero_and_leaves_the_pod(rig, tiny_shards):
    finished = subprocess.run([sys.executable, str(ROOT / "train_gpt2.py"), *tiny(tiny_shards), "--max-steps", "2",
                               "--log-dir", str(rig.log)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    r = launch(rig, "--nproc", "1", "--", *tiny(tiny_shards), "--max-steps", "2", **ON_VOLUME)
    assert r.returncode == 1, r.stdout + r.stderr
    said, verdict = r.stderr.splitlines()
    assert said.startswith("train_gpt2.py: ") and "already trained step 2 of 2" in said
    assert verdict.startswith("train.sh: training ended before its first optimizer step (exit code 0): nothing "
                              f"trained; pod {POD} is left as it was")
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"  # the launch check only
    assert "before its first optimizer step (exit code 0), with you at the terminal" in train_log(rig.log)


def test_a_launch_whose_options_the_trainer_refuses_shows_its_line_once_and_leaves_the_pod(rig, demo_shards):
    r = launch(rig, "--nproc", "2", "--", "--preset", "demo", "--data", str(demo_shards), **ON_VOLUME)
    assert r.returncode == 1, r.stdout + r.stderr
    said, verdict = r.stderr.splitlines()
    assert said.startswith("train_gpt2.py: --total-batch-size 512 is not a multiple of")
    assert r.stdout.count(said) == 1  # as it came (both ranks say it), without torchrun's report
    assert "ChildFailedError" not in r.stdout + r.stderr and "ChildFailedError" in train_log(rig.log)
    assert "(exit code 1): nothing trained" in verdict
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"


def test_a_detached_launch_returns_after_the_first_step_and_training_goes_on_until_its_printed_kill(rig, demo_shards):
    r = launch(rig, "--nproc", "1", "--", "--preset", "demo", "--data", str(demo_shards), "--n-layer", "2",
               "--eval-every", "0", "--sample-every", "0", **ON_POD)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    first_step = re.search(r"step +0/\d+ \| loss", out)  # the demo's steps: 519 on Python 3.11, 501 on 3.10
    assert first_step, out
    assert out.index("train.sh: waiting for training's first step") < first_step.start() < \
        out.index("train.sh: training runs in the background")
    pid = int(out.split("stop it with: kill -- -")[1].split(")")[0])
    os.killpg(pid, 0)  # going on: 500 steps and more to go
    assert runpodctl_calls(rig) == [f"pod get {POD}"]
    log_path = Path(out.split("tail -f ")[1].split()[0])
    subprocess.run(["kill", "--", f"-{pid}"], check=True)  # as printed: its end, with the pod policy of today
    wait_until(lambda: f"done: pod {POD} is stopped" in log_path.read_text(), log_path, 120)
    log = log_path.read_text()
    assert "training was stopped with SIGTERM" in log and list(rig.log.glob("model_*.pt"))


SLOW_START = r"""
import os, signal, sys, time
from pathlib import Path
calls = Path(os.environ["CALLS"])
def stop(signum, frame):
    (calls / "worker.stopped").write_text(signal.Signals(signum).name)
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
(calls / "worker.ready").touch()
for _ in range(6000):  # compiling, evaluating at step 0: no optimizer step yet (at most 5 minutes)
    time.sleep(0.05)
"""


def start_at_a_terminal(rig: SimpleNamespace, env: dict[str, str], out: Path) -> subprocess.Popen:
    """A detached ./train.sh --no-preflight in its own process group, as a terminal runs it; its screen goes to out."""
    with open(out, "w") as f:
        return subprocess.Popen([str(TRAIN_SH), "--no-preflight", "--log-dir", str(rig.log), "--", "--data",
                                 str(rig.data)], cwd=rig.root, env=env, start_new_session=True,
                                preexec_fn=as_at_a_terminal, stdout=f, stderr=subprocess.STDOUT)


def test_ctrl_c_while_train_sh_waits_for_the_first_step_stops_the_launch_and_leaves_the_pod(rig):
    worker, out = rig.root / "worker.py", rig.root / "out"
    worker.write_text(SLOW_START)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = rig_env(rig, trainer=False, TRAIN_CMD=f"{torchrun} --standalone --nproc_per_node=1 {worker}", **ON_VOLUME)
    proc = start_at_a_terminal(rig, env, out)
    try:
        wait_until(lambda: (rig.calls / "worker.ready").exists() and "waiting for training's first" in out.read_text(),
                   out, 120)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    assert "train.sh: Ctrl-C: stopping training" in text
    assert f"stopped by Ctrl-C before its first step: nothing trained; pod {POD} is left as it was" in text
    assert (rig.calls / "worker.stopped").read_text() == "SIGINT"  # passed on to the worker by torchrun
    log = train_log(rig.log)
    assert "exit code 1 after SIGINT" in log and "interrupted with Ctrl-C" in log
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"


def test_with_prep_nobody_waits_and_a_launch_that_never_stepped_ends_the_pod(rig, demo_shards):
    r = launch(rig, "--prep", "--nproc", "2", "--", "--preset", "demo", "--data", str(demo_shards), **ON_POD)
    assert r.returncode == 0, r.stderr
    assert "training runs in the background" in r.stdout and "waiting for" not in r.stdout
    log_path = Path(r.stdout.split("tail -f ")[1].split()[0])
    wait_until(lambda: f"done: pod {POD} is stopped" in log_path.read_text(), log_path, 120)
    log = log_path.read_text()
    assert "is not a multiple of" in log
    assert "before its first optimizer step (exit code 1) and nobody is at the terminal" in log
    assert runpodctl_calls(rig) == [f"pod get {POD}", f"pod stop {POD}", f"pod get {POD}"]


def test_a_hangup_ends_the_wait_training_goes_on_and_ending_before_its_first_step_then_ends_the_pod(rig):
    go, out = rig.root / "go", rig.root / "out"
    env = rig_env(rig, WAIT_FOR=str(go), NO_STEP="1", **ON_POD)  # a trainer that never steps
    proc = start_at_a_terminal(rig, env, out)
    try:
        wait_until(lambda: (rig.calls / "trainer.sid").exists() and "waiting for training's first" in out.read_text(),
                   out)
        os.killpg(proc.pid, signal.SIGHUP)  # the SSH connection dropped
        assert proc.wait(timeout=60) == -signal.SIGHUP
        log_path = next(rig.log.glob("train-*.log"))
        assert "training ended" not in log_path.read_text()  # it goes on
    finally:
        go.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_until(lambda: f"done: pod {POD} is stopped" in log_path.read_text(), log_path)
    assert "before its first optimizer step (exit code 0) and nobody is at the terminal" in log_path.read_text()


def test_a_foreground_run_that_never_stepped_leaves_the_pod(rig):
    r = foreground(rig, "--no-preflight", NO_STEP="1", TRAINER_EXIT="1", **ON_VOLUME)
    assert r.returncode == 1
    assert "before its first optimizer step (exit code 1), with you at the terminal" in r.stdout
    assert runpodctl_calls(rig) == [f"pod get {POD}"] and pod_status(rig) == "RUNNING"
