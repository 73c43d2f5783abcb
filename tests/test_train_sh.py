"""train.sh: arguments, checks, detaching, and what happens to the RunPod pod when training ends.

Stand-in `runpodctl`, `nvidia-smi` and `torchrun` executables in a temporary bin dir record their arguments; a
stand-in trainer (TRAIN_CMD) succeeds or fails at once, so the pod decisions take milliseconds.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SH = ROOT / "train.sh"
POD = "pod-abc123"

TRAINER = r"""#!/usr/bin/env bash
# stand-in trainer: records its arguments and session, prints a line, optionally waits for a file, exits
trap 'echo "stand-in trainer: checkpoint saved after SIGTERM"; exit 143' TERM
printf '%s\n' "$@" > "$CALLS/trainer.args"
ps -o sid= -p $$ | tr -d ' ' > "$CALLS/trainer.sid"
echo "stand-in trainer: step 1 loss 10.9"
if [[ -n ${WAIT_FOR:-} ]]; then
    for _ in $(seq 400); do [[ -e $WAIT_FOR ]] && break; sleep 0.05; done
fi
echo "stand-in trainer: done"
exit "${TRAINER_EXIT:-0}"
"""
RECORDER = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$CALLS/{name}"
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
    """A bin dir of stand-ins, a data dir holding (empty) shard files, and a network-volume mount with a log dir."""
    bin_dir, calls, data, volume = (tmp_path / d for d in ("bin", "calls", "data", "workspace"))
    for d in (bin_dir, calls, data, volume):
        d.mkdir()
    trainer = write_exe(bin_dir / "trainer", TRAINER)
    write_exe(bin_dir / "runpodctl", RECORDER.replace("{name}", "runpodctl"))
    (data / "edufineweb_val_000000.npy").touch()
    (data / "edufineweb_train_000001.npy").touch()
    return SimpleNamespace(root=tmp_path, bin=bin_dir, calls=calls, data=data, volume=volume, log=volume / "log",
                           trainer=trainer)


def train_sh(rig: SimpleNamespace, *args: str, trainer: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run train.sh in the rig with RunPod variables cleared; keyword arguments set environment variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_") and k != "TRAIN_CMD"}
    full_env["PATH"] = f"{rig.bin}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    full_env["CALLS"] = str(rig.calls)
    full_env["RUNPOD_VOLUME_PATH"] = str(rig.volume)
    if trainer:
        full_env["TRAIN_CMD"] = str(rig.trainer)
    full_env.update(env)
    return subprocess.run([str(TRAIN_SH), *args], cwd=rig.root, env=full_env, capture_output=True, text=True,
                          timeout=60)


def foreground(rig: SimpleNamespace, *args: str, **env: str) -> subprocess.CompletedProcess:
    return train_sh(rig, "--foreground", "--log-dir", str(rig.log), *args, "--", "--data", str(rig.data), **env)


def runpodctl_calls(rig: SimpleNamespace) -> list[str]:
    path = rig.calls / "runpodctl"
    return path.read_text().splitlines() if path.exists() else []


def trainer_args(rig: SimpleNamespace) -> list[str]:
    return (rig.calls / "trainer.args").read_text().splitlines()


def train_log(log_dir: Path) -> str:
    logs = sorted(log_dir.glob("train-*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


# --- the pod decision ---

def test_success_with_log_dir_on_the_network_volume_removes_the_pod(rig):
    r = foreground(rig, RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1")
    assert r.returncode == 0, r.stderr
    assert runpodctl_calls(rig) == [f"remove pod {POD}"]
    log = train_log(rig.log)
    assert "stand-in trainer: done" in log and f"removing pod {POD}" in log


def test_failed_training_stops_the_pod_and_exits_with_the_training_exit_code(rig):
    r = foreground(rig, RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1", TRAINER_EXIT="1")
    assert r.returncode == 1
    assert runpodctl_calls(rig) == [f"stop pod {POD}"]
    assert "exited with code 1" in train_log(rig.log)


def test_without_a_pod_id_runpodctl_is_never_called(rig):
    for code in ("0", "1"):
        r = foreground(rig, RUNPOD_VOLUME_ID="vol-1", TRAINER_EXIT=code)
        assert r.returncode == int(code)
        assert runpodctl_calls(rig) == []
    assert "RUNPOD_POD_ID is not set" in r.stdout


@pytest.mark.parametrize("where", ["no volume attached", "log dir outside the mount", "symlink out of the mount"])
def test_log_dir_not_on_a_network_volume_stops_the_pod_and_logs_why(rig, where):
    env = {"RUNPOD_POD_ID": POD, "RUNPOD_VOLUME_ID": "vol-1"}
    if where == "no volume attached":
        del env["RUNPOD_VOLUME_ID"]
    elif where == "log dir outside the mount":
        rig.log = rig.root / "container-disk" / "log"
    else:
        (rig.root / "container-disk").mkdir()
        (rig.volume / "log").symlink_to(rig.root / "container-disk")
    r = foreground(rig, **env)
    assert r.returncode == 0, r.stderr
    assert runpodctl_calls(rig) == [f"stop pod {POD}"]
    reason = "RUNPOD_VOLUME_ID is not set" if where == "no volume attached" else "is not on the network volume"
    assert reason in train_log(rig.log) and "stopping it instead" in train_log(rig.log)


def test_keep_pod_leaves_the_pod_running(rig):
    for code in ("0", "1"):
        r = foreground(rig, "--keep-pod", RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1", TRAINER_EXIT=code)
        assert r.returncode == int(code)
    assert runpodctl_calls(rig) == []
    assert "--keep-pod" in r.stdout


def test_ctrl_c_leaves_the_pod_running_for_the_person_at_the_keyboard(rig):
    r = foreground(rig, RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1", TRAINER_EXIT="130")
    assert r.returncode == 130
    assert runpodctl_calls(rig) == []


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

def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("train.sh: ")
    return lines[0]


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


def test_python_without_torch_is_one_line_about_the_venv(rig):
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("no system python without torch")
    r = train_sh(rig, "--foreground", "--", "--data", str(rig.data), trainer=False, PYTHON=bare)
    assert "venv" in one_line_error(r)


def test_missing_hellaswag_data_is_a_notice_and_training_goes_on(rig):
    r = foreground(rig)
    assert r.returncode == 0
    assert "notice: no HellaSwag data" in r.stdout
    r = train_sh(rig, "--foreground", "--log-dir", str(rig.log), "--", "--data", str(rig.data),
                 "--hellaswag-every", "0")
    assert "HellaSwag" not in r.stdout


# --- detaching ---

def wait_until(condition, log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.02)


def start_detached(rig: SimpleNamespace, go: Path) -> tuple[subprocess.CompletedProcess, Path]:
    r = train_sh(rig, "--log-dir", str(rig.log), "--", "--data", str(rig.data), WAIT_FOR=str(go),
                 RUNPOD_POD_ID=POD, RUNPOD_VOLUME_ID="vol-1")
    assert r.returncode == 0, r.stderr
    log_path = Path(r.stdout.split("tail -f ")[1].split()[0])
    assert log_path.parent == rig.log and log_path.name.startswith("train-")
    sid = rig.calls / "trainer.sid"
    wait_until(lambda: sid.exists() and sid.read_text().strip(), log_path)
    return r, log_path


def test_detached_run_returns_at_once_and_logs_training_and_the_pod_decision(rig):
    go = rig.root / "go"
    r, log_path = start_detached(rig, go)
    assert not go.exists() and "stand-in trainer: done" not in log_path.read_text()  # returned while training runs
    assert int((rig.calls / "trainer.sid").read_text()) != os.getsid(0)  # its own session: logging out won't end it
    assert runpodctl_calls(rig) == []
    go.touch()
    wait_until(lambda: runpodctl_calls(rig), log_path)
    assert runpodctl_calls(rig) == [f"remove pod {POD}"]
    log = log_path.read_text()
    assert log.index("stand-in trainer: done") < log.index("training ended with exit code 0") < log.index("removing pod")


def test_killing_the_detached_run_as_printed_lets_training_save_and_stops_the_pod(rig):
    r, log_path = start_detached(rig, rig.root / "never")
    kill = r.stdout.split("stop it with: ")[1].split(")")[0]
    assert kill.startswith("kill -- -")
    subprocess.run(kill.split(), check=True)
    wait_until(lambda: runpodctl_calls(rig), log_path)
    assert runpodctl_calls(rig) == [f"stop pod {POD}"]
    log = log_path.read_text()
    assert "checkpoint saved after SIGTERM" in log and "exited with code 143" in log


# --- the real thing ---

def test_foreground_demo_run_end_to_end(tmp_path, demo_shards):
    log_dir = tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_") and k != "TRAIN_CMD"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
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
    assert "training ended with exit code 0" in train_log(log_dir)
