"""Checkpoints: other scripts' formats, integrity, durable writes, a full disk, rotation, --resume auto's choices, one
run per log dir, --init-from, and the lr ramp of a continued run. Tiny models; peers' files made by their own layout."""

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import fineweb
import infer
import train_gpt2
from checkpoints import load_model
from common import UserError
from model import GPT, GPTConfig
from train_gpt2 import get_lr

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_gpt2.py")
TINY = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
         "--total-batch-size", "256", "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "0", "--val-steps", "2",
         "--hellaswag-every", "0", "--sample-every", "0", "--device", "cpu", "--no-compile"]

# build-nanogpt's GPTConfig and its torch.save line, run as a script (__main__.GPTConfig) or from a model module
PEER_CONFIG = """
from dataclasses import dataclass

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
"""
PEER_SAVE = """
import sys
import torch
state, out, prefix = torch.load(sys.argv[1]), sys.argv[2], sys.argv[3]
config = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
torch.save({"model": {prefix + k: v for k, v in state.items()}, "config": config, "step": 5000, "val_loss": 3.1}, out)
"""


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *TRAIN, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def events(log_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(TINY).eval()
    with torch.no_grad():  # non-zero biases, so a bias left at its init would show in the logits
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.05)
    return model


def logits(model: GPT) -> torch.Tensor:
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(idx)[0]


def build_nanogpt_file(tmp_path: Path, model: GPT, as_module: bool, prefix: str = "", name: str = "model_05000.pt",
                       folder: str = "log") -> Path:
    """A checkpoint written the way build-nanogpt writes it: its GPTConfig dataclass pickled inside."""
    work = tmp_path / ("peer_module" if as_module else "peer_main")
    work.mkdir(exist_ok=True)
    torch.save(model.state_dict(), work / "state.pt")
    if as_module:
        (work / "model.py").write_text(PEER_CONFIG)
        (work / "peer.py").write_text("from model import GPTConfig\n" + PEER_SAVE)
    else:
        (work / "peer.py").write_text(PEER_CONFIG + PEER_SAVE)
    out = tmp_path / folder / name
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "peer.py", "state.pt", str(out), prefix], cwd=work, check=True)
    return out


# --- other scripts' checkpoints ---

@pytest.mark.parametrize("as_module,prefix", [(False, ""), (True, "_orig_mod."), (False, "module._orig_mod.")])
def test_build_nanogpt_checkpoints_load_with_the_same_logits(tmp_path, as_module, prefix):
    model = tiny_model()
    path = build_nanogpt_file(tmp_path, model, as_module, prefix)
    pickled = "model.GPTConfig" if as_module else "__main__.GPTConfig"
    with pytest.raises(Exception, match=pickled.replace(".", r"\.")):  # plain weights_only refuses it
        torch.load(path, weights_only=True)
    loaded, config = load_model(str(path))
    assert config == {} and loaded.config == TINY
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_ckpt_loads_with_or_without_biases_and_says_it_used_exact_gelu(tmp_path, bias, capsys):
    model = tiny_model()
    if not bias:  # nanoGPT's bias=False: no biases anywhere, which is our model with zero biases
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.zero_()
    state = {k: v for k, v in model.state_dict().items() if bias or not k.endswith(".bias")}
    for i in range(TINY.n_layer):  # nanoGPT's causal-mask buffer (without flash attention)
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=bias, vocab_size=50304, dropout=0.0)
    torch.save({"model": {"_orig_mod." + k: v for k, v in state.items()}, "optimizer": {}, "model_args": model_args,
                "iter_num": 100, "best_val_loss": torch.tensor(3.0), "config": {"dataset": "openwebtext"}},
               tmp_path / "ckpt.pt")
    loaded, _ = load_model(str(tmp_path / "ckpt.pt"))
    assert torch.equal(logits(loaded), logits(model))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exact GELU" in err[0]


def test_infer_samples_from_a_build_nanogpt_log_and_from_the_forks_checkpoints_folder(tmp_path):
    model = tiny_model()
    log_file = build_nanogpt_file(tmp_path, model, as_module=False)
    build_nanogpt_file(tmp_path, tiny_model(1), as_module=False, name="model_00_09000.pt", folder="checkpoints")
    newest = build_nanogpt_file(tmp_path, model, as_module=False, name="model_01_00500.pt", folder="checkpoints")
    assert checkpoints.model_files(str(tmp_path / "checkpoints"))[0] == str(newest)  # epoch 1 beats epoch 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    for spec in (log_file, tmp_path / "checkpoints"):
        r = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(spec), "Hello", "--num-samples", "1",
                            "--max-new-tokens", "4", "--top-k", "1"], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("Hello"), r.stderr


def test_hellaswag_scores_a_build_nanogpt_checkpoint(tmp_path):
    path = build_nanogpt_file(tmp_path, tiny_model(), as_module=True)
    ex = {"ctx": "A man sits down.", "endings": ["He eats.", "He runs far away.", "It rains.", "Then he sleeps."],
          "label": 0}
    (tmp_path / "hs.jsonl").write_text(json.dumps(ex) + "\n")
    r = subprocess.run([sys.executable, str(ROOT / "hellaswag.py"), "--model", str(path), "--data",
                        str(tmp_path / "hs.jsonl"), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "acc_norm" in r.stdout, r.stderr


def test_a_refused_global_is_named_without_terminal_escapes(tmp_path):
    script = ("import torch\nclass Evil: pass\nEvil.__qualname__ = 'Ev\\x1b[31mil\\x07'\n"
              "globals()['Ev\\x1b[31mil\\x07'] = Evil\ntorch.save({'model': {}, 'config': Evil()}, 'evil.pt')\n")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    with pytest.raises(UserError) as e:
        load_model(str(tmp_path / "evil.pt"))
    msg = str(e.value)
    assert "it pickles __main__.Evil," in msg and "\x1b" not in msg and "\x07" not in msg and "\n" not in msg


# --- integrity, durable writes, full disk ---

def our_state(step: int, final: bool = False) -> dict:
    model = tiny_model(step)
    return {"model": model.state_dict(), "model_config": asdict(TINY), "optimizer": {"state": {}, "param_groups": []},
            "step": step, "config": {"total_batch_size": 256}, "final": final}


def flip_a_bit_in(path: Path) -> None:
    """Flip one bit inside the embedding's bytes (torch.save's zip stores tensors uncompressed)."""
    data = bytearray(path.read_bytes())
    weight = torch.load(path, weights_only=True)["model"]["transformer.wte.weight"]
    data[data.index(weight.flatten()[1000:1008].numpy().tobytes()) + 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_bit_flip_is_refused_with_a_clear_line(tmp_path):
    path = tmp_path / "model_00001.pt"
    checkpoints.save_checkpoint(path, our_state(1), keep=0)
    assert checkpoints.read_checkpoint(path)["step"] == 1
    flip_a_bit_in(path)
    assert torch.load(path, weights_only=True)["step"] == 1  # torch alone does not notice
    for read in (checkpoints.read_checkpoint, lambda p: load_model(str(p))):
        with pytest.raises(checkpoints.CheckpointDamaged, match="checksum"):
            read(path)


def test_save_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(b))), real_replace(a, b)))
    path = tmp_path / "model_00001.pt"
    checkpoints.save_checkpoint(path, our_state(1), keep=0)
    assert calls == [("fsync", str(tmp_path / ".model_00001.pt.tmp")), ("replace", str(path)),
                     ("fsync", str(tmp_path))]


def test_a_full_disk_says_so_removes_the_temp_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    args = train_gpt2.get_args(["--log-dir", str(tmp_path), "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                                "--seq-len", "32", "--total-batch-size", "256"])
    checkpoints.save_checkpoint(tmp_path / "model_00001.pt", our_state(1), keep=0)
    before = (tmp_path / "model_00001.pt").read_bytes()

    class Full:  # a file that takes 2000 bytes, then the disk is full
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoints, "open", lambda p, mode: Full(builtins.open(p, mode)), raising=False)
    with pytest.raises(UserError) as e:
        checkpoints.save_checkpoint(tmp_path / "model_00002.pt", our_state(2), keep=1)
    msg = str(e.value)
    assert msg.startswith("disk full") and "MB free" in msg and "needs about" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_00001.pt"]  # no temp file, nothing rotated
    assert (tmp_path / "model_00001.pt").read_bytes() == before
    monkeypatch.undo()
    path, ckpt, _ = checkpoints.find_resume(args, TINY)  # a rerun resumes from the previous one
    assert path == tmp_path / "model_00001.pt" and ckpt["step"] == 1


def test_too_little_room_for_two_checkpoints_warns(tmp_path, monkeypatch, capsys):
    model = tiny_model()
    need = 3 * sum(p.numel() * 4 for p in model.parameters())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": int(1.5 * need)})())
    checkpoints.check_free_space(str(tmp_path), model)
    assert "room for fewer than two checkpoints" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 3 * need})())
    checkpoints.check_free_space(str(tmp_path), model)
    assert capsys.readouterr().err == ""


# --- rotation and --resume auto ---

def test_rotation_deletes_only_readable_checkpoints_of_ours_never_a_final_one_and_saving_overwrites_none(
        tmp_path):
    torch.save({"model": {}, "config": {}}, tmp_path / "model_00001.pt")  # someone else's
    (tmp_path / "model_00002.pt").write_bytes(b"PK\x03\x04 cut short")  # unreadable
    checkpoints.save_checkpoint(tmp_path / "model_00003.pt", our_state(3, final=True), keep=0)
    checkpoints.save_checkpoint(tmp_path / "model_00004.pt", our_state(4), keep=0)
    for step in (5, 6):
        checkpoints.save_checkpoint(tmp_path / f"model_{step:05d}.pt", our_state(step), keep=1)
    assert sorted(p.name for p in tmp_path.glob("model_*.pt")) == \
        ["model_00001.pt", "model_00002.pt", "model_00003.pt", "model_00006.pt"]
    theirs = (tmp_path / "model_00001.pt").read_bytes()
    with pytest.raises(UserError, match="another script's checkpoint - not overwriting it"):
        checkpoints.save_checkpoint(tmp_path / "model_00001.pt", our_state(1), keep=1)
    assert (tmp_path / "model_00001.pt").read_bytes() == theirs


@pytest.fixture
def shards(tiny_shards) -> Path:
    return tiny_shards


def test_resume_auto_stops_at_checkpoints_it_cannot_continue_from(tmp_path, shards):
    build_nanogpt_file(tmp_path, tiny_model(), as_module=False, name="model_05000.pt", folder="log")
    r = train("--data", str(shards), "--log-dir", str(tmp_path / "log"), "--max-steps", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr
    assert "model_05000.pt" in lines[0] and "--init-from" in lines[0] and "--resume none" in lines[0]
    assert sorted(p.name for p in (tmp_path / "log").glob("model_*.pt")) == ["model_05000.pt"]


def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint_and_says_so(tmp_path, shards):
    assert train("--data", str(shards), "--log-dir", str(tmp_path), "--max-steps", "2", "--checkpoint-every", "1",
                 "--keep-checkpoints", "0").returncode == 0
    flip_a_bit_in(tmp_path / "model_00002.pt")
    r = train("--data", str(shards), "--log-dir", str(tmp_path), "--max-steps", "3")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "model_00001.pt at step 1" in r.stdout
    assert "model_00002.pt is damaged" in r.stderr
    assert events(tmp_path, "resume_fallback")[-1]["path"].endswith("model_00001.pt")


# --- one run per log dir ---

def test_a_second_run_on_a_busy_log_dir_stops_at_once_naming_the_first(tmp_path, shards):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, checkpoints; checkpoints.lock_log_dir(sys.argv[1]); "
                               "print('locked', flush=True); sys.stdin.read()", str(tmp_path)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    r = train("--data", str(shards), "--log-dir", str(tmp_path), "--max-steps", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "in use" in lines[0]
    assert not (tmp_path / "metrics.jsonl").exists()
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    assert not (tmp_path / ".lock").exists()  # released at exit
    (tmp_path / ".lock").write_text("pid 999999 on a-pod-that-is-gone")  # stale: nobody holds its flock
    assert train("--data", str(shards), "--log-dir", str(tmp_path), "--max-steps", "1").returncode == 0
    assert not (tmp_path / ".lock").exists()


def test_a_log_dir_that_cannot_be_written_is_one_line_before_any_work(tmp_path, shards, monkeypatch):
    (tmp_path / "a_file").write_text("")
    r = train("--data", str(shards), "--log-dir", str(tmp_path / "a_file" / "log"), "--max-steps", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "--log-dir" in lines[0] and r.stdout == ""
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # read-only (we may run as root, which ignores modes)
    with pytest.raises(UserError, match="cannot be used"):
        checkpoints.lock_log_dir(str(tmp_path / "log"))


# --- --init-from ---

@pytest.mark.parametrize("source", ["build-nanogpt", "hugging-face-folder"])
def test_init_from_starts_a_new_run_at_step_0_from_those_weights(tmp_path, shards, tiny_hf_dir, source):
    model = tiny_model()
    spec = build_nanogpt_file(tmp_path, model, False) if source == "build-nanogpt" else tiny_hf_dir
    r = train("--data", str(shards), "--log-dir", str(tmp_path / "run"), "--init-from", str(spec),
              "--max-steps", "1", "--lr", "1e-9", "--weight-decay", "0")
    assert r.returncode == 0, r.stderr
    assert f"starting from the weights of {spec}" in r.stdout
    ckpt = torch.load(tmp_path / "run" / "model_00001.pt", weights_only=True)
    source_state = load_model(str(spec))[0].state_dict()
    assert ckpt["step"] == 1 and ckpt["optimizer"]["state"][0]["step"] == 1  # a fresh optimizer: one step
    assert ckpt["model_config"]["vocab_size"] == source_state["lm_head.weight"].shape[0]
    for k, v in ckpt["model"].items():
        assert torch.allclose(v, source_state[k][:v.shape[0]], atol=1e-6), k


# --- bad settings ---

def test_grad_clip_0_means_no_clipping_and_a_negative_one_is_an_error(tiny_shards, step_run):
    def one_step(clip: str) -> torch.Tensor:
        model = tiny_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        data = train_gpt2.ShardLoader(str(tiny_shards), "train", 16, 2, seed=0)
        step_run(model, opt, data, "--grad-clip", clip, "--lr", "1e-2", "--warmup-steps", "1", "--seq-len", "16",
                 "--batch-size", "2", "--total-batch-size", "32").train_step()
        return model.lm_head.weight.detach().clone()
    assert torch.equal(one_step("0"), one_step("inf"))
    assert not torch.equal(one_step(0.0), tiny_model().lm_head.weight)
    with pytest.raises(UserError, match="--grad-clip"):
        train_gpt2.check_args(train_gpt2.get_args(["--grad-clip", "-1"]), 1)


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--epochs", "nan"), ("--epochs", "inf")])
def test_non_finite_lr_or_epochs_is_one_line(flag, value):
    with pytest.raises(UserError) as e:
        train_gpt2.check_args(train_gpt2.get_args([flag, value]), 1)
    assert flag in str(e.value) and "\n" not in str(e.value)


def test_a_token_id_past_the_vocabulary_names_the_shard(tmp_path):
    for i in range(2):
        tokens = np.arange(200, dtype=np.uint16)
        if i == 1:
            tokens[50] = 60000
        fineweb.write_shard(tmp_path / fineweb.shard_name(i), tokens)
    loader = train_gpt2.ShardLoader(str(tmp_path), "train", seq_len=8, seqs_per_step=24, seed=0)
    with pytest.raises(UserError, match=fineweb.shard_name(1).replace(".", r"\.") + ".*60000"):
        loader.batch(0, 0, 0, 1, 24, "cpu")


@pytest.mark.parametrize("args", [["--temperature", "nan"], ["--temperature", "inf"], ["--top-p", "nan"],
                                  ["--num-samples", str(10**12)]])
def test_infer_bad_sampling_settings_are_one_line(tmp_path, args):
    torch.save({"model": tiny_model().state_dict(), "model_config": asdict(TINY)}, tmp_path / "m.pt")
    with pytest.raises(SystemExit) as e:
        infer.main([str(tmp_path / "m.pt"), "Hello", "--max-new-tokens", "2", *args])
    assert str(e.value.code).startswith("infer.py: ") and "\n" not in str(e.value.code)
    assert args[0] in str(e.value.code) or args[0] == "--top-p"


# --- a second epoch without a jolt ---

def test_a_longer_schedule_ramps_the_lr_from_where_the_run_ended(tmp_path, shards):
    common = ["--data", str(shards), "--log-dir", str(tmp_path), "--warmup-steps", "4", "--lr", "1e-2"]
    assert train(*common, "--epochs", "0.2").returncode == 0  # 34 steps per epoch: a 7-step run, lr at its minimum
    r = train(*common, "--epochs", "1", "--max-steps", "13")
    assert r.returncode == 0, r.stderr
    assert "ramping the lr" in r.stdout and events(tmp_path, "lr_ramp")[0]["step"] == 7
    lrs = {e["step"]: e["lr"] for e in events(tmp_path, "train")}
    args = train_gpt2.get_args(["--warmup-steps", "4", "--lr", "1e-2"])
    end = get_lr(6, 7, args)
    assert lrs[6] == pytest.approx(end)
    for k in range(4):  # a quarter of the way from the old lr to the new schedule per step
        assert lrs[7 + k] == pytest.approx(end + (get_lr(7 + k, 34, args) - end) * (k + 1) / 4)
    assert lrs[11] == pytest.approx(get_lr(11, 34, args)) and lrs[12] == pytest.approx(get_lr(12, 34, args))
    assert max(b - a for a, b in zip([lrs[s] for s in range(6, 12)], [lrs[s] for s in range(7, 13)])) < \
        0.3 * (get_lr(7, 34, args) - end)  # no jump of the size the plain new schedule would make
