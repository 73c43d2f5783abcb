"""Seams: where two safety features meet, neither undoes the other. Resume against a new run, the log-dir lock, a
stop signal against a dead terminal, changed options against a restored optimizer, --init-from against resume, the
preflight against signals and finished runs, evals off against the last val loss, a full disk against the logs.
(train.sh's seams are in test_train_sh.py.) Tiny models on random-token shards, on the CPU."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import as_at_a_terminal
from test_hellaswag import make_examples, write_jsonl

import checkpoints
import hellaswag
import infer
import train_gpt2
from checkpoints import load_model
from common import UserError
from model import GPTConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_gpt2.py")
TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
         "--total-batch-size", "256", "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "0", "--val-steps", "2",
         "--hellaswag-every", "0", "--sample-every", "0", "--device", "cpu", "--no-compile"]


def train(shards: Path, log_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *TRAIN, "--data", str(shards), "--log-dir", str(log_dir), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("model_*.pt"))}


def events(log_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


# --- 1. a new run never starts over another run's checkpoints ---

def test_resume_none_in_a_log_dir_that_holds_a_run_refuses_and_touches_nothing(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path, "--max-steps", "4", "--checkpoint-every", "2").returncode == 0
    before = files(tmp_path)
    line = one_line(train(tiny_shards, tmp_path, "--resume", "none", "--max-steps", "6"))
    assert "--resume none" in line and "another --log-dir" in line and "model_00004.pt" in line
    assert files(tmp_path) == before
    r = train(tiny_shards, tmp_path, "--max-steps", "5")  # --resume auto still continues the run it holds
    assert r.returncode == 0 and "at step 4" in r.stdout


def test_resuming_a_checkpoint_from_elsewhere_into_a_log_dir_that_holds_a_run_refuses(tmp_path, tiny_shards):
    for run in ("a", "b"):
        assert train(tiny_shards, tmp_path / run, "--max-steps", "2").returncode == 0
    before = files(tmp_path / "b")
    line = one_line(train(tiny_shards, tmp_path / "b", "--resume", str(tmp_path / "a" / "model_00002.pt"),
                          "--max-steps", "3"))
    assert "mix two runs" in line and files(tmp_path / "b") == before


def test_the_already_finished_message_no_longer_suggests_resume_none(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path, "--max-steps", "2").returncode == 0
    r = train(tiny_shards, tmp_path, "--max-steps", "2")
    assert r.returncode == 0 and "already trained step 2 of 2" in r.stdout and "--resume none" not in r.stdout


# --- 4. options changed on resume are applied, and said ---

def test_a_changed_weight_decay_on_resume_is_applied_and_said(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path, "--max-steps", "2", "--weight-decay", "0.1").returncode == 0
    r = train(tiny_shards, tmp_path, "--max-steps", "3", "--weight-decay", "0.0", "--grad-clip", "0.5")
    assert r.returncode == 0, r.stderr
    changed = next(line for line in r.stdout.splitlines() if "options changed" in line)
    assert "--weight-decay 0.1 -> 0.0" in changed and "--grad-clip 1.0 -> 0.5" in changed
    ckpt = torch.load(tmp_path / "model_00003.pt", weights_only=True)
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [0.0, 0.0]
    assert events(tmp_path, "options_changed")[-1]["changed"]["weight_decay"] == [0.1, 0.0]


def test_changed_modern_learning_rates_on_resume_set_the_group_scales(tmp_path, tiny_shards):
    modern = ["--recipe", "modern", "--muon-lr", "0.02"]
    assert train(tiny_shards, tmp_path, *modern, "--max-steps", "2", "--embed-lr", "0.3").returncode == 0
    r = train(tiny_shards, tmp_path, *modern, "--max-steps", "3", "--embed-lr", "0.1", "--head-lr", "0.004")
    assert r.returncode == 0, r.stderr
    assert "--embed-lr 0.3 -> 0.1" in r.stdout and "--head-lr 0.008 -> 0.004" in r.stdout
    adam = torch.load(tmp_path / "model_00003.pt", weights_only=True)["optimizer"]["optimizers"][0]
    assert [g["lr_scale"] for g in adam["param_groups"]] == pytest.approx([0.1 / 0.02, 0.004 / 0.02])


# --- 5. --init-from against the recipe and against a log dir that holds a run ---

def test_init_from_a_modern_checkpoint_with_recipe_classic_says_it_trains_the_modern_model(tmp_path, tiny_shards):
    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, recipe="modern")
    torch.save({"model": build_model(config).state_dict(), "model_config": asdict(config)}, tmp_path / "modern.pt")
    r = train(tiny_shards, tmp_path / "run", "--init-from", str(tmp_path / "modern.pt"), "--recipe", "classic",
              "--max-steps", "1")
    assert r.returncode == 0, r.stderr
    notice = next(line for line in r.stdout.splitlines() if "notice: --init-from" in line)
    assert "modern-recipe model" in notice and "--recipe classic" in notice and "not used" in notice
    assert torch.load(tmp_path / "run" / "model_00001.pt", weights_only=True)["config"]["recipe"] == "modern"


def test_init_from_into_a_log_dir_that_holds_another_run_refuses_instead_of_resuming(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path / "source", "--max-steps", "1").returncode == 0
    assert train(tiny_shards, tmp_path / "run", "--max-steps", "2").returncode == 0
    before = files(tmp_path / "run")
    line = one_line(train(tiny_shards, tmp_path / "run", "--init-from", str(tmp_path / "source" / "model_00001.pt"),
                          "--max-steps", "3"))
    assert "--init-from" in line and "another --log-dir" in line and files(tmp_path / "run") == before


def test_the_same_init_from_command_after_a_stop_continues_its_own_run(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path / "source", "--max-steps", "1").returncode == 0
    init = ["--init-from", str(tmp_path / "source" / "model_00001.pt")]
    assert train(tiny_shards, tmp_path / "run", *init, "--max-steps", "2").returncode == 0
    r = train(tiny_shards, tmp_path / "run", *init, "--max-steps", "3")
    assert r.returncode == 0 and "resuming from" in r.stdout and "at step 2" in r.stdout


# --- 6. the preflight: Ctrl-C stops it, and a finished run is reported before any work ---

def test_ctrl_c_stops_the_preflight_with_a_non_zero_exit_and_one_line(tmp_path, tiny_shards):
    cmd = [sys.executable, SCRIPT, *TRAIN, "--data", str(tiny_shards), "--log-dir", str(tmp_path), "--preflight",
           "--preflight-steps", "100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_at_a_terminal)
    try:
        assert "config" in proc.stdout.readline()  # started: the config line comes just before the steps
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines() == ["train_gpt2.py: preflight stopped by SIGINT - nothing was started"]
    assert not (tmp_path / "preflight.json").exists() and not list(tmp_path.glob("model_*.pt"))


def test_the_preflight_of_a_finished_run_fails_saying_so_before_any_step(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path, "--max-steps", "2").returncode == 0
    r = train(tiny_shards, tmp_path, "--max-steps", "2", "--preflight")
    assert "already trained step 2 of 2" in one_line(r) and "preflight" not in r.stdout
    assert not (tmp_path / "preflight.json").exists()


# --- 7. after a resume with evals off, the last val loss keeps the step it was measured at ---

def test_a_resume_with_evals_off_reports_the_val_loss_with_the_step_it_was_measured_at(tmp_path, tiny_shards):
    assert train(tiny_shards, tmp_path, "--max-steps", "2", "--eval-every", "1").returncode == 0
    measured = events(tmp_path, "val")[-1]
    r = train(tiny_shards, tmp_path, "--max-steps", "4", "--eval-every", "0")
    assert r.returncode == 0, r.stderr
    assert f"val loss {measured['loss']:.4f} at step 2" in r.stdout.splitlines()[-1]
    ckpt = torch.load(tmp_path / "model_00004.pt", weights_only=True)
    assert ckpt["val_step"] == 2 and ckpt["val_loss"] == pytest.approx(measured["loss"])


# --- 8. a full disk and a tiny temperature are one line, not a traceback ---

class FullDiskOs:
    """The os module, except that writing to a file fails as on a full disk."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_log_dir_on_a_full_disk_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "os", FullDiskOs())
    with pytest.raises(UserError, match="disk is full") as e:
        checkpoints.lock_log_dir(str(tmp_path))
    assert "\n" not in str(e.value) and not (tmp_path / ".lock").exists()


def test_a_disk_that_fills_under_the_logs_ends_in_one_line_about_the_disk(tmp_path, monkeypatch):
    log = train_gpt2.RunLog(str(tmp_path), True, None, {})
    log.event("train", step=0, loss=1.0)

    def full(path, mode="r"):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train_gpt2, "open", full, raising=False)
    with pytest.raises(UserError, match="disk full") as e:
        log.event("train", step=1, loss=1.0)
    assert "--resume auto" in str(e.value)


def test_a_tiny_temperature_samples_like_greedy_instead_of_failing(tmp_path, capsys):
    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    torch.save({"model": build_model(config).state_dict(), "model_config": asdict(config)}, tmp_path / "m.pt")
    args = [str(tmp_path / "m.pt"), "Hello", "--max-new-tokens", "6", "--num-samples", "1"]
    infer.main([*args, "--top-k", "1"])
    greedy = capsys.readouterr().out
    infer.main([*args, "--temperature", "1e-45"])
    assert capsys.readouterr().out == greedy


# --- a folder that holds checkpoints, for every script that takes a model ---

def test_a_log_dir_loads_its_newest_checkpoint_in_hellaswag_and_init_from(tmp_path, tiny_shards, capsys):
    assert train(tiny_shards, tmp_path / "run", "--max-steps", "2", "--checkpoint-every", "1",
                 "--keep-checkpoints", "0").returncode == 0
    model, config = load_model(str(tmp_path / "run"))
    newest = torch.load(tmp_path / "run" / "model_00002.pt", weights_only=True)["model"]
    assert all(torch.equal(v, newest[k]) for k, v in model.state_dict().items())
    data = tmp_path / "hellaswag.jsonl"
    write_jsonl(data, make_examples(2))
    hellaswag.main(["--model", str(tmp_path / "run"), "--data", str(data), "--device", "cpu"])
    assert "acc_norm" in capsys.readouterr().out
    r = train(tiny_shards, tmp_path / "new", "--init-from", str(tmp_path / "run"), "--max-steps", "1")
    assert r.returncode == 0 and f"starting from the weights of {tmp_path / 'run'}" in r.stdout


def test_a_folder_without_checkpoints_says_so_not_no_such_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no model_.*pt checkpoint") as e:
        load_model(str(tmp_path / "empty"))
    assert "no such file" not in str(e.value)
