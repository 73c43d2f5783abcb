"""The GPU or a refusal: on a machine whose nvidia-smi lists GPUs (tests/stand_ins/nvidia-smi, put first on PATH) and
a torch that sees fewer than the processes need, --device auto stops with one line that names torch's version and
CUDA, the driver's, and the pip command of a torch this driver runs; --device cpu still trains. The suite's torch is
the CPU build, so it sees no GPU; the torch of other pods is played by patching torch.version and device_count."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hellaswag import make_examples, write_jsonl

import common
from common import UserError, pick_device

ROOT = Path(__file__).resolve().parents[1]
STAND_INS = ROOT / "tests" / "stand_ins"
TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
         "--total-batch-size", "256", "--warmup-steps", "2", "--eval-every", "0", "--hellaswag-every", "0",
         "--sample-every", "0", "--no-compile"]
CU128 = "pip install torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128"
# the refusal with the pip command is for a CPU build (the first CI run's); a CUDA build that sees no GPU (the floor
# run's torch 2.4.1+cu121 here) gives torch's own reason instead, as test_a_matching_build_... checks
needs_cpu_torch = pytest.mark.skipif(torch.version.cuda is not None or torch.cuda.is_available(),
                                     reason="needs a CPU build of torch")


def gpu_env(**fake: str) -> dict:
    """The environment of a machine with the stand-in nvidia-smi: one H100, driver 570.195.03, CUDA 12.8."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_WORLD_SIZE")}
    return {**env, "PATH": f"{STAND_INS}{os.pathsep}{os.environ['PATH']}", **fake}


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def gpu_machine(monkeypatch) -> None:
    """This process on the stand-in's machine (for pick_device called here)."""
    for key, value in gpu_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def pod_torch(monkeypatch, version: str, cuda: str | None, sees: int) -> None:
    """Play another torch: its version, the CUDA it was built for, the GPUs it sees."""
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: sees)


# --- the scripts ---

@needs_cpu_torch
def test_train_gpt2_device_auto_refuses_in_one_line_and_trains_nothing(tmp_path, tiny_shards):
    log = tmp_path / "log"
    r = run("train_gpt2.py", *TRAIN, "--data", str(tiny_shards), "--log-dir", str(log), "--device", "auto",
            env=gpu_env())
    assert r.returncode == 1 and r.stdout == ""
    line = one_line(r.stderr)
    assert line.startswith(f"train_gpt2.py: torch {torch.__version__} (CUDA None: a CPU build) sees 0 of this "
                           "machine's 1 GPU(s), needed by 1 process(es); driver 570.195.03 runs CUDA 12.8 at most")
    assert line.endswith(f"install a torch this driver runs: {CU128} (or pass --device cpu)")
    assert not log.exists() or list(log.iterdir()) == []  # no lock, log or checkpoint left


@needs_cpu_torch
def test_train_gpt2_counts_the_processes_of_this_machine_under_torchrun(tmp_path, tiny_shards):
    r = run("train_gpt2.py", *TRAIN, "--data", str(tiny_shards), "--log-dir", str(tmp_path), "--device", "cuda",
            env=gpu_env(FAKE_GPUS="8", LOCAL_WORLD_SIZE="8", FAKE_CUDA="12.6"))
    assert r.returncode == 1
    assert "sees 0 of this machine's 8 GPU(s), needed by 8 process(es)" in one_line(r.stderr)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in r.stderr


def test_device_cpu_still_trains_on_a_gpu_machine(tmp_path, tiny_shards):
    r = run("train_gpt2.py", *TRAIN, "--data", str(tiny_shards), "--log-dir", str(tmp_path), "--device", "cpu",
            "--max-steps", "2", env=gpu_env())
    assert r.returncode == 0, r.stderr
    assert "1 process(es) on cpu" in r.stdout and (tmp_path / "model_00002.pt").exists()


@needs_cpu_torch
def test_hellaswag_device_auto_refuses_in_one_line(tmp_path):
    data = write_jsonl(tmp_path / "hs.jsonl", make_examples(2))
    r = run("hellaswag.py", "--model", str(tmp_path / "no_model.pt"), "--data", str(data), env=gpu_env())
    assert r.returncode == 1
    assert one_line(r.stderr).startswith(f"hellaswag.py: torch {torch.__version__} (CUDA None: a CPU build) sees 0")
    assert CU128 in r.stderr


@needs_cpu_torch
def test_infer_device_auto_refuses_in_one_line(tmp_path):
    r = run("infer.py", str(tmp_path / "no_model.pt"), "Hello", env=gpu_env())
    assert r.returncode == 1 and r.stdout == ""
    assert one_line(r.stderr).startswith(f"infer.py: torch {torch.__version__} (CUDA None: a CPU build) sees 0")
    assert CU128 in r.stderr


# --- the check train.sh runs before it starts anything ---

@needs_cpu_torch
@pytest.mark.parametrize("device", [[], ["--device", ""], ["--device", "cuda"]])  # "": train.sh's extra_value
def test_check_gpus_refuses_in_one_line_with_exit_2_under_the_callers_name(device):
    r = run("common.py", "--check-gpus", "8", *device, "--name", "train.sh", env=gpu_env(FAKE_GPUS="8"))
    assert r.returncode == 2 and r.stdout == ""
    line = one_line(r.stderr)
    assert line.startswith(f"train.sh: torch {torch.__version__} (CUDA None: a CPU build) sees 0 of this machine's 8 "
                           "GPU(s), needed by 8 process(es)") and CU128 in line


def test_check_gpus_passes_for_device_cpu_and_on_a_machine_without_gpus():
    assert run("common.py", "--check-gpus", "8", "--device", "cpu", env=gpu_env()).returncode == 0
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    for env in (gpu_env(FAKE_GPUS="0"), {**os.environ, "PATH": os.defpath}):
        r = run("common.py", "--check-gpus", "8", env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


# --- what the line says, on the pods' torch builds and drivers ---

@pytest.mark.parametrize("header_cuda, driver, command", [
    ("13.0", "580.65.06", "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"),
    ("12.8", "570.195.03", "torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128"),
    ("12.6", "560.35.03", "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"),
    ("12.4", "550.127.05", "torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124"),
    ("12.2", "535.183.01", "torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"),
    ("11.8", "520.61.05", "torch==2.7.1 --index-url https://download.pytorch.org/whl/cu118"),
    ("", "535.183.01", "torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"),  # from the driver
])
def test_the_command_installs_a_build_for_the_drivers_cuda(gpu_machine, monkeypatch, header_cuda, driver, command):
    monkeypatch.setenv("FAKE_CUDA", header_cuda)
    monkeypatch.setenv("FAKE_DRIVER", driver)
    pod_torch(monkeypatch, "2.13.0+cpu", None, 0)
    with pytest.raises(UserError, match=f"driver {driver} runs CUDA .* - install a torch this driver runs: "
                                        f"pip install {command} "):
        pick_device("auto")


def test_a_driver_older_than_cuda_11_8_gets_no_install_command(gpu_machine, monkeypatch):
    monkeypatch.setenv("FAKE_CUDA", "11.4")
    pod_torch(monkeypatch, "2.13.0+cpu", None, 0)
    with pytest.raises(UserError, match="no torch 2.4\\+ runs on a driver older than CUDA 11.8") as e:
        pick_device("auto")
    assert "pip install" not in str(e.value)


def test_pypis_cuda_13_torch_on_a_cuda_12_8_driver_is_told_to_take_the_cu128_build(gpu_machine, monkeypatch):
    pod_torch(monkeypatch, "2.13.0", "13.0", 0)
    with pytest.raises(UserError) as e:
        pick_device("auto")
    assert str(e.value) == ("torch 2.13.0 (CUDA 13.0) sees 0 of this machine's 1 GPU(s), needed by 1 process(es); "
                            f"driver 570.195.03 runs CUDA 12.8 at most - install a torch this driver runs: {CU128} "
                            "(or pass --device cpu)")


@pytest.mark.parametrize("version, cuda", [("2.8.0+cu128", "12.8"), ("2.4.0+cu124", "12.4"), ("2.2.0+cu121", "12.1"),
                                           ("2.1.0+cu118", "11.8")])
def test_the_runpod_templates_torch_that_sees_its_gpus_is_used(gpu_machine, monkeypatch, version, cuda):
    monkeypatch.setenv("FAKE_GPUS", "8")
    pod_torch(monkeypatch, version, cuda, 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", 8) == "cuda" and common.gpu_shortfall(8) is None


def test_fewer_gpus_than_processes_says_how_many_to_start(gpu_machine, monkeypatch):
    monkeypatch.setenv("FAKE_GPUS", "2")
    pod_torch(monkeypatch, "2.8.0+cu128", "12.8", 2)
    with pytest.raises(UserError, match="sees 2 of this machine's 2 GPU\\(s\\), needed by 8 process\\(es\\); .* - "
                                        "start at most 2 process\\(es\\), one per GPU$"):
        pick_device("auto", 8)


def test_gpus_hidden_by_cuda_visible_devices_are_named(gpu_machine, monkeypatch):
    monkeypatch.setenv("FAKE_GPUS", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pod_torch(monkeypatch, "2.8.0+cu128", "12.8", 2)
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=0,1 hides the others"):
        pick_device("cuda", 8)


def test_a_matching_build_that_still_sees_no_gpu_gives_torchs_reason(gpu_machine, monkeypatch):
    pod_torch(monkeypatch, "2.8.0+cu128", "12.8", 0)
    with pytest.raises(UserError, match=" - torch says: .") as e:
        pick_device("auto")
    assert "pip install" not in str(e.value)


def test_device_cpu_is_not_checked(gpu_machine, monkeypatch):
    pod_torch(monkeypatch, "2.13.0+cpu", None, 0)
    assert pick_device("cpu", 8) == "cpu"
