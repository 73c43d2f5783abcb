"""Shared fixtures: small data and models made here, never downloaded."""

import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POD = "pod-abc123"
KEY = "rpa_TESTKEY0123456789"
ON_POD = {"RUNPOD_POD_ID": POD, "RUNPOD_API_KEY": KEY}  # a pod without a network volume
ON_VOLUME = {**ON_POD, "RUNPOD_VOLUME_ID": "vol-1"}  # a pod with a network volume at /workspace


@pytest.fixture
def account(tmp_path: Path) -> SimpleNamespace:
    """The RunPod account that tests/stand_ins/runpodctl answers for: pod POD running, API key KEY. bin: a folder
    holding runpodctl, for PATH; env: the variables it needs; calls(): its calls so far, one line of arguments each;
    status(): the pod's status now ("removed" when it is gone)."""
    bin_dir, calls, state = tmp_path / "bin", tmp_path / "calls", tmp_path / "runpod"
    for d in (bin_dir, calls, state / "pods"):
        d.mkdir(parents=True)
    (bin_dir / "runpodctl").symlink_to(ROOT / "tests" / "stand_ins" / "runpodctl")
    (state / "pods" / POD).write_text("RUNNING\n")
    (state / "api_key").write_text(KEY)
    log = calls / "runpodctl"
    pod = state / "pods" / POD

    def status() -> str:
        try:  # not exists() then read: the stand-in may remove the pod in between
            return pod.read_text().strip()
        except FileNotFoundError:
            return "removed"
    return SimpleNamespace(
        bin=bin_dir, dir=calls, state=state, env={"CALLS": str(calls), "RUNPODCTL_STATE": str(state)},
        calls=lambda: log.read_text().splitlines() if log.exists() else [], status=status)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The `fineweb.py --demo` shards (about 1.3M tokens: one val and five train shards of 2**18 tokens)."""
    import fineweb
    out = tmp_path_factory.mktemp("demo_shards")
    fineweb.build_shards(fineweb.get_args(["--demo", "--out", str(out)]))
    return out


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny random transformers GPT2LMHeadModel (real GPT-2 vocab) saved with save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_hf")
    GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=4, vocab_size=50257)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def demo_run(demo_shards, tmp_path_factory) -> Path:
    """The log dir of a very short `train_gpt2.py --preset demo` run on the demo shards (6 steps; val loss, samples
    and checkpoints every 3 steps): model_00003.pt, model_00006.pt, log.txt, metrics.jsonl."""
    import subprocess
    log_dir = tmp_path_factory.mktemp("demo_run")
    cmd = [sys.executable, str(ROOT / "train_gpt2.py"), "--preset", "demo", "--data", str(demo_shards),
           "--log-dir", str(log_dir), "--max-steps", "6", "--eval-every", "3", "--checkpoint-every", "3",
           "--sample-every", "3", "--hellaswag-every", "0", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"demo run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return log_dir


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Three train shards and a val shard of random token ids (34 steps of 256 tokens per epoch)."""
    import numpy as np

    import fineweb
    out = tmp_path_factory.mktemp("tiny_shards")
    rng = np.random.default_rng(0)
    for i in range(4):
        fineweb.write_shard(out / fineweb.shard_name(i), rng.integers(0, 2000, 3000, dtype=np.uint16))
    return out


@pytest.fixture
def step_run(tmp_path):
    """Makes a train_gpt2.Run around a model, its optimizer and a loader, for calling Run.train_step directly: one
    process on the CPU, the options from train_gpt2.py flags, the step log in tmp_path/metrics.jsonl."""
    from contextlib import nullcontext

    import train_gpt2

    def make(model, optimizer, data, *flags: str, autocast=None) -> "train_gpt2.Run":
        autocast = autocast or nullcontext()
        args = train_gpt2.get_args(["--log-dir", str(tmp_path), *flags])
        accum = args.total_batch_size // (args.batch_size * args.seq_len)
        log = train_gpt2.RunLog(str(tmp_path), True, None, {})
        return train_gpt2.Run(args, 0, 1, "cpu", autocast, data, data, 0, accum, total_steps=1000, last_step=1000,
                              raw=model, compiled=model, model=model, optimizer=optimizer, log=log)
    return make


def as_at_a_terminal() -> None:
    """For Popen(preexec_fn=...): a job started at a terminal has SIGINT and SIGHUP at their defaults, whatever the
    test runner was started with (under nohup SIGHUP is ignored, and an ignored signal stays ignored in bash)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)

