"""train_gpt2.py: the model against Hugging Face, the data loader, exact resume, DDP, signals, logs, bad input."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import fineweb
import train_gpt2
from checkpoints import load_model
from model import GPT
from train_gpt2 import ShardLoader, get_lr

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_gpt2.py")
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
        "--total-batch-size", "256", "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "0", "--val-steps", "2",
        "--hellaswag-every", "0", "--sample-every", "0", "--device", "cpu", "--no-compile"]


def train(*args: str, launcher: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [SCRIPT, *TINY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def events(log_dir: Path, kind: str) -> list[dict]:
    lines = (log_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


# --- model ---

def test_model_matches_hugging_face_gpt2_logits(tiny_hf_dir):
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    ours = GPT.from_pretrained(str(tiny_hf_dir)).eval()
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff < 1e-4


def test_from_pretrained_copies_every_weight_including_the_attention_biases(tiny_hf_dir, tmp_path):
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    with torch.no_grad():  # a fresh HF model has zero biases, which would hide a bias left at our own init
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4


def test_help_shows_the_124m_defaults():
    text = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    for default in ("default: 524288", "default: 0.0006", "default: 715", "default: edu_fineweb10B", "default: d12"):
        assert default in " ".join(text.split()), default
    assert "default: None" not in text


def test_lr_warms_up_decays_to_ten_percent_and_a_second_epoch_does_not_warm_up_again():
    args = train_gpt2.get_args(["--lr", "1e-3", "--warmup-steps", "10"])
    assert get_lr(0, 100, args) == pytest.approx(1e-4) and get_lr(9, 100, args) == pytest.approx(1e-3)
    assert get_lr(100, 100, args) == pytest.approx(1e-4)
    lrs = [get_lr(s, 200, args) for s in range(100, 200)]  # the same run continued for twice the steps
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[0] < 1e-3


def test_explicit_flags_win_over_the_preset():
    args = train_gpt2.get_args(["--preset", "demo", "--batch-size", "2", "--model", "d12"])
    assert args.batch_size == 2 and (args.n_layer, args.n_embd) == (12, 768)
    assert args.log_dir == "log/demo" and args.data == "demo_shards"


# --- data loader ---

@pytest.fixture
def counted_shards(tmp_path) -> Path:
    """Shards whose tokens are consecutive numbers, so every token says where it came from (20 sequences of 8)."""
    start = 0
    for i, n in enumerate([30, 50, 41, 77]):  # val, then train shards of 6, 5 and 9 sequences of 8 (+1) tokens
        fineweb.write_shard(tmp_path / fineweb.shard_name(i), np.arange(start, start + n, dtype=np.uint16))
        start += n
    return tmp_path


def global_batch(loader: ShardLoader, step: int, world_size: int, batch_size: int) -> list[list[int]]:
    accum = loader.N // (world_size * batch_size)
    rows = [loader.sequences(step, m, r, world_size, batch_size) for m in range(accum) for r in range(world_size)]
    return [list(row) for part in rows for row in part]


def test_loader_visits_every_token_once_per_epoch(counted_shards):
    loader = ShardLoader(str(counted_shards), "train", seq_len=8, seqs_per_step=4, seed=0)
    assert loader.steps_per_epoch == 5
    expected = sorted(t for s in loader.shards for t in s[:len(s) - 1 - (len(s) - 1) % 8])
    seen = {}
    for epoch in range(2):
        rows = [r for step in range(epoch * 5, epoch * 5 + 5) for r in global_batch(loader, step, 1, 2)]
        assert all(np.array_equal(np.diff(r), np.ones(8)) for r in rows)  # targets are the inputs shifted by one
        seen[epoch] = [r[:-1] for r in rows]
        assert sorted(t for r in seen[epoch] for t in r) == expected
    assert seen[0] != seen[1]  # a new order each epoch


def test_global_batch_is_the_same_for_any_number_of_processes(counted_shards):
    loader = ShardLoader(str(counted_shards), "train", seq_len=8, seqs_per_step=4, seed=0)
    for step in range(7):
        one = global_batch(loader, step, world_size=1, batch_size=2)
        assert global_batch(loader, step, world_size=2, batch_size=2) == one
        assert global_batch(loader, step, world_size=4, batch_size=1) == one
        assert len({tuple(r) for r in one}) == 4  # ranks and micro-steps never overlap


# --- runs ---

def test_demo_run_writes_logs_and_checkpoints_in_the_contract_format(demo_run):
    assert sorted(p.name for p in demo_run.glob("model_*.pt")) == ["model_00003.pt", "model_00006.pt"]
    lines = (demo_run / "log.txt").read_text().splitlines()
    assert all(re.fullmatch(r"\d+ (train \d+\.\d{6}|val \d+\.\d{4})", line) for line in lines)
    assert [int(line.split()[0]) for line in lines if " train " in line] == list(range(6))
    kinds = {r["event"] for r in map(json.loads, (demo_run / "metrics.jsonl").read_text().splitlines())}
    assert kinds == {"config", "train", "val", "sample", "checkpoint", "end"}
    first = events(demo_run, "train")[0]
    assert set(first) >= {"step", "loss", "lr", "norm", "dt_ms", "tok_per_s", "mfu", "epoch", "tokens", "time"}
    assert first["mfu"] is None and first["tokens"] == 512
    assert events(demo_run, "end")[-1]["status"] == "finished"


def test_demo_val_loss_falls(demo_run):
    val = [r["loss"] for r in events(demo_run, "val")]
    assert len(val) == 3 and val[-1] < val[0] - 0.2


def test_checkpoint_loads_with_weights_only_and_no_warning(demo_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = torch.load(demo_run / "model_00006.pt", map_location="cpu", weights_only=True)
    assert {"model", "model_config", "config", "step", "epoch", "optimizer", "loader", "rng", "val_loss"} <= set(ckpt)
    assert ckpt["step"] == 6 and ckpt["config"]["preset"] == "demo" and isinstance(ckpt["val_loss"], float)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    model, config = load_model(str(demo_run / "model_00006.pt"))
    assert model.config.n_layer == 4 and config["total_batch_size"] == 512


def test_resume_reproduces_uninterrupted_losses(tiny_shards, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["--data", str(tiny_shards), "--eval-every", "3"]
    assert train(*args, "--max-steps", "6", "--log-dir", str(straight), "--checkpoint-every", "1",
                 "--keep-checkpoints", "2").returncode == 0
    assert train(*args, "--max-steps", "3", "--log-dir", str(split)).returncode == 0
    second = train(*args, "--max-steps", "6", "--log-dir", str(split), "--resume", "auto")
    assert second.returncode == 0 and "resuming from" in second.stdout
    for kind in ("train", "val"):
        assert [(r["step"], r["loss"]) for r in events(split, kind)] == \
               [(r["step"], r["loss"]) for r in events(straight, kind)]
    assert (split / "log.txt").read_text() == (straight / "log.txt").read_text()  # appended, never truncated
    assert sorted(p.name for p in straight.glob("model_*.pt")) == ["model_00005.pt", "model_00006.pt"]


def test_rotation_keeps_the_newest_checkpoints_and_the_end_of_every_schedule(tiny_shards, tmp_path):
    args = ["--data", str(tiny_shards), "--log-dir", str(tmp_path), "--checkpoint-every", "1",
            "--keep-checkpoints", "1"]
    # chained --max-steps runs on one schedule rotate as one run
    assert train(*args, "--epochs", "0.1", "--max-steps", "1").returncode == 0
    assert train(*args, "--epochs", "0.1", "--max-steps", "2").returncode == 0
    assert sorted(p.name for p in tmp_path.glob("model_*.pt")) == ["model_00002.pt"]
    # the end of a schedule (0.1 epochs: 3 steps) stays when a longer one continues it
    assert train(*args, "--epochs", "0.1").returncode == 0
    assert train(*args, "--epochs", "0.2", "--max-steps", "5").returncode == 0
    assert sorted(p.name for p in tmp_path.glob("model_*.pt")) == ["model_00003.pt", "model_00005.pt"]
    assert torch.load(tmp_path / "model_00003.pt", weights_only=True)["final"] is True
    assert torch.load(tmp_path / "model_00005.pt", weights_only=True)["final"] is False


def test_wandb_offline_run_receives_the_logged_metrics(tiny_shards, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--max-steps", "3", "--eval-every", "3",
                 "--wandb", "gpt2-test", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` would upload
    records = run.read_bytes()  # protobuf records: the keys and JSON values are stored as plain bytes
    assert b"train/loss" in records and b"val/loss" in records and b"train/tok_per_s" in records
    for r in events(tmp_path, "train") + events(tmp_path, "val"):
        assert json.dumps(r["loss"]).encode() in records


def test_two_processes_give_the_same_losses_as_one_with_twice_the_accumulation(tiny_shards, tmp_path):
    args = ["--data", str(tiny_shards), "--max-steps", "3", "--eval-every", "3"]
    one = train(*args, "--log-dir", str(tmp_path / "one"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = train(*args, "--log-dir", str(tmp_path / "two"), launcher=torchrun)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es)" in two.stdout and "1 micro-steps" in two.stdout and "2 micro-steps" in one.stdout
    for kind in ("train", "val"):
        a, b = events(tmp_path / "one", kind), events(tmp_path / "two", kind)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        assert np.allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=0, atol=1e-5)
    norms = [[r["norm"] for r in events(tmp_path / name, "train")] for name in ("one", "two")]
    assert np.allclose(norms[0], norms[1], rtol=1e-4)  # the logged norm is not multiplied by the process count


def test_sigterm_saves_a_checkpoint_that_resume_auto_continues(tiny_shards, tmp_path):
    cmd = [sys.executable, SCRIPT, *TINY, "--data", str(tiny_shards), "--log-dir", str(tmp_path), "--epochs", "30",
           "--eval-every", "1"]  # every step is an eval step: the stop must save first, without evaluating
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if re.match(r"step +\d+/\d+ \| loss", line):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    saved = sorted(tmp_path.glob("model_*.pt"))
    assert len(saved) == 1 and "Traceback" not in err
    step = torch.load(saved[0], weights_only=True)["step"]
    assert events(tmp_path, "end")[-1] == {"event": "end", "step": step, "status": "interrupted"}
    assert step not in [r["step"] for r in events(tmp_path, "val")]
    resumed = train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--epochs", "30",
                    "--max-steps", str(step + 2))
    assert resumed.returncode == 0
    assert [r["step"] for r in events(tmp_path, "train")][-3:] == [step - 1, step, step + 1]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def worker_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker of this rank (a child of the launcher with RANK=rank in its environment)."""
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank}")


def test_sigterm_to_one_rank_stops_every_rank_with_that_signal(tiny_shards, tmp_path):
    cmd = [*TORCHRUN, SCRIPT, *TINY, "--data", str(tiny_shards), "--log-dir", str(tmp_path), "--epochs", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:  # rank 0's step lines: rank 1, which does not print, gets the signal
        if re.match(r"step +\d+/\d+ \| loss", line):
            os.kill(worker_pid(proc.pid, 1), signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert "KeyError" not in err
    # torchrun's report of each rank: 143; or -15 for rank 0 when torchrun's own SIGTERM, sent once rank 1 has
    # exited, reaches it while the interpreter shuts down (after its work is done: the events below are written)
    codes = re.findall(r"exitcode  : (-?\d+)", err)
    assert len(codes) == 2 and set(codes) <= {str(128 + signal.SIGTERM), str(-signal.SIGTERM)}, err[-3000:]
    assert str(128 + signal.SIGTERM) in codes
    (saved,) = tmp_path.glob("model_*.pt")
    step = torch.load(saved, weights_only=True)["step"]
    assert events(tmp_path, "stop") == [{"event": "stop", "step": step, "signal": "SIGTERM"}]
    assert events(tmp_path, "end")[-1] == {"event": "end", "step": step, "status": "interrupted"}


NODE_WRAPPER = """
import os, runpy, sys
sys.path.insert(0, {root!r})
os.chdir(os.path.join(os.environ["NODES"], "node" + os.environ["RANK"]))  # each rank a node with its own disk
sys.argv.pop(0)  # the script and its arguments remain
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_rank_that_cannot_see_rank_0s_checkpoint_says_the_log_dir_must_be_shared(tiny_shards, tmp_path):
    wrapper = tmp_path / "node.py"
    wrapper.write_text(NODE_WRAPPER.format(root=str(ROOT)))
    env = {**os.environ, "NODES": str(tmp_path)}
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
    args = ["--data", str(tiny_shards), "--log-dir", "log"]
    first = train(*args, "--max-steps", "2", launcher=[*TORCHRUN, str(wrapper)], env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "node0/log/model_00002.pt").exists() and not (tmp_path / "node1/log").exists()
    second = train(*args, "--max-steps", "4", launcher=[*TORCHRUN, str(wrapper)], env=env)
    assert second.returncode != 0
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("train_gpt2.py: ")]
    assert f"rank 1 on {socket.gethostname()} cannot see {tmp_path / 'node1/log/model_00002.pt'}" in line
    assert "storage every node sees" in line
    assert "resuming from" not in second.stdout


def test_ranks_that_see_different_shards_all_stop_naming_the_difference(tiny_shards, tmp_path):
    wrapper = tmp_path / "node.py"
    wrapper.write_text(NODE_WRAPPER.format(root=str(ROOT)))
    last = fineweb.shard_name(3)
    for rank in (0, 1):  # --data on each node's own disk; node 1's copy is still under way: its last shard missing
        shutil.copytree(tiny_shards, tmp_path / f"node{rank}/data")
    (tmp_path / "node1/data" / last).unlink()
    proc = train("--data", "data", "--log-dir", str(tmp_path / "log"), "--max-steps", "2",
                 launcher=[*TORCHRUN, str(wrapper)], env={**os.environ, "NODES": str(tmp_path)})
    assert proc.returncode != 0 and " loss " not in proc.stdout
    assert not re.search(r'File ".*(train_gpt2|fineweb)\.py", line', proc.stderr)  # torchrun's own traceback aside
    host = socket.gethostname()
    size = (tiny_shards / last).stat().st_size
    said = (f"train_gpt2.py: the ranks see different shards: rank 0 on {host} in {tmp_path}/node0/data/, rank 1 on "
            f"{host} in {tmp_path}/node1/data/ ({last}: {size:,} bytes vs none) - the --data folder must be on storage "
            "every node sees, or hold the same shards on every node")
    # each rank says it; both write to one pipe here, where one's newline may land after the other's line
    assert proc.stderr.count(said) == 2 and proc.stderr.count("train_gpt2.py: ") == 2, proc.stderr[-3000:]


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tiny_shards, tmp_path):
    proc = train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--lr", "1e9", "--grad-clip", "1e30",
                 "--checkpoint-every", "1", "--max-steps", "10")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "diverged" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    saved = sorted(tmp_path.glob("model_*.pt"))
    assert saved and all(torch.load(p, weights_only=True)["step"] <= 2 for p in saved)
    assert events(tmp_path, "end")[-1]["status"] == "diverged"


def test_a_diverging_run_stops_before_a_nan_reaches_the_weights_and_names_a_finite_checkpoint(tiny_shards, tmp_path):
    # --lr 1e3: the gradient norm goes non-finite after a few steps; before, that step was taken and saved
    proc = train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--lr", "1e3", "--checkpoint-every", "1",
                 "--max-steps", "20")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "diverged" in line
    saved = sorted(tmp_path.glob("model_*.pt"))
    assert saved
    for path in saved:
        ckpt = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values()), path.name
    named = Path(re.search(r"the last good checkpoint is (\S+);", line).group(1))
    assert named.is_absolute() and named == saved[-1]


def test_following_the_divergence_advice_walks_back_and_ends(tiny_shards, tmp_path):
    # --lr 1e3 blows the weights up a step before the gradient norm goes non-finite: the newest finite checkpoint is
    # useless, and resuming from it with a lower --lr diverges again at once
    args = ["--data", str(tiny_shards), "--log-dir", str(tmp_path), "--checkpoint-every", "1", "--max-steps", "8"]
    proc, named, lines = train(*args, "--lr", "1e3"), [], []
    while proc.returncode == 1 and len(named) < 4:
        line, = proc.stderr.strip().splitlines()
        advice = re.search(r"the last good checkpoint is (\S+); lower --lr and resume from it", line)
        assert advice and advice.group(1) not in named, f"the advice loops: {line}"
        named.append(advice.group(1))
        lines.append(line)
        proc = train(*args, "--lr", "1e-4", "--resume", advice.group(1))
    assert proc.returncode == 0 and "finished 8 steps" in proc.stdout, proc.stderr
    assert named == [str(tmp_path / "model_00002.pt"), str(tmp_path / "model_00001.pt")]
    assert all(line.endswith(f"; lower --lr and resume from it (--resume {path})") for line, path in zip(lines, named))
    assert f"{named[0]} led straight to it, so it may be blown up though finite; the last good" in lines[1]
    # had model_00001.pt diverged too, the advice would have ended there
    assert checkpoints.after_divergence(None, tmp_path / "model_00001.pt") == \
        f"{named[1]} led straight to it and no finite checkpoint before it is left - start a new run with a lower " \
        "--lr in another --log-dir"
    assert checkpoints.after_divergence(None, None) == "no checkpoint was saved before it - rerun with a lower --lr"
    spaced = tmp_path / "my log" / "model_00001.pt"  # the option to copy is quoted for the shell
    assert checkpoints.after_divergence(spaced, None).endswith(f"resume from it (--resume '{spaced}')")


def nan_copy(src: Path, dst: Path) -> Path:
    """A checkpoint as a diverged run saved it: its tensors NaN, its checksum right."""
    from checkpoints import tensor_checksum
    ckpt = torch.load(src, weights_only=True)
    for t in ckpt["model"].values():
        t.fill_(float("nan"))
    ckpt["step"] += 1
    ckpt.pop("checksum", None)
    torch.save({**ckpt, "checksum": tensor_checksum(ckpt)}, dst)
    return dst


def test_resume_auto_skips_a_non_finite_checkpoint_with_a_notice(tiny_shards, tmp_path):
    assert train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--max-steps", "2").returncode == 0
    nan_copy(tmp_path / "model_00002.pt", tmp_path / "model_00003.pt")
    proc = train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--max-steps", "4")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout and "model_00002.pt at step 2" in proc.stdout
    assert "NaN or inf" in proc.stderr and "model_00003.pt" in proc.stderr
    explicit = train("--data", str(tiny_shards), "--log-dir", str(tmp_path / "other"), "--resume",
                     str(nan_copy(tmp_path / "model_00002.pt", tmp_path / "nan.pt")))
    assert explicit.returncode == 1 and "NaN or inf" in explicit.stderr and "Traceback" not in explicit.stderr


@pytest.mark.parametrize("script", ["infer.py", "hellaswag.py"])
def test_infer_and_hellaswag_refuse_a_non_finite_checkpoint_in_one_line(demo_run, tmp_path, script):
    bad = nan_copy(demo_run / "model_00006.pt", tmp_path / "model_00007.pt")
    data = tmp_path / "hs.jsonl"
    data.write_text(json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1}) + "\n")
    args = [str(bad), "Hello"] if script == "infer.py" else ["--model", str(bad), "--data", str(data)]
    proc = subprocess.run([sys.executable, str(ROOT / script), *args, "--device", "cpu"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and proc.stdout == ""
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"{script}: ") and "NaN or inf" in line and "model_00007.pt" in line


def bad_inputs(tmp_path: Path, tiny_shards: Path) -> dict[str, list[str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    (tmp_path / "hellaswag.jsonl").write_text('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1}\n{oops\n')
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for shard in tiny_shards.glob("*.npy"):
        (unfinished / shard.name).write_bytes(shard.read_bytes())
    (unfinished / fineweb.STATE_FILE).write_text(json.dumps({"version": 2, "config": {"source": "demo"},
                                                             "shards": [{}, {}, {}], "done": False}))
    return {
        "missing data folder": ["--data", str(tmp_path / "nope")],
        "empty data folder": ["--data", str(tmp_path / "empty")],
        "truncated checkpoint": ["--data", str(tiny_shards), "--resume", str(tmp_path / "truncated.pt")],
        "foreign checkpoint": ["--data", str(tiny_shards), "--resume", str(tmp_path / "foreign.pt")],
        "batch that does not divide": ["--data", str(tiny_shards), "--total-batch-size", "200"],
        "malformed hellaswag data": ["--data", str(tiny_shards), "--hellaswag-every", "1",
                                     "--hellaswag-data", str(tmp_path / "hellaswag.jsonl")],
        "unfinished prep": ["--data", str(unfinished)],
        "unfinished prep, preflight": ["--data", str(unfinished), "--preflight"],
        "modern recipe with an odd head size": ["--data", str(tiny_shards), "--recipe", "modern", "--n-embd", "60",
                                                "--n-head", "4"],
    }


@pytest.mark.parametrize("case", ["missing data folder", "empty data folder", "truncated checkpoint",
                                  "foreign checkpoint", "batch that does not divide", "malformed hellaswag data",
                                  "unfinished prep", "unfinished prep, preflight",
                                  "modern recipe with an odd head size"])
def test_bad_input_gives_one_line_and_a_nonzero_exit(case, tiny_shards, tmp_path):
    proc = train(*bad_inputs(tmp_path, tiny_shards)[case], "--log-dir", str(tmp_path / "log"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_gpt2.py: ")
    if case == "malformed hellaswag data":  # the message hellaswag.py --data gives, before any training step
        assert lines[0].endswith("hellaswag.jsonl:2: not valid JSON (Expecting property name enclosed in double "
                                 "quotes)")
        assert " loss " not in proc.stdout
    if case.startswith("unfinished prep"):
        assert f"the prep of {tmp_path / 'unfinished'}/ is unfinished (3 shards so far" in lines[0]
        assert lines[0].endswith(f"finish it with: python fineweb.py --out {tmp_path / 'unfinished'} --demo")
    if case == "modern recipe with an odd head size":
        assert "even head size" in lines[0]


def test_a_cpu_batch_that_cannot_be_allocated_is_one_line(demo_shards, tmp_path):
    # logits of 100,000 x 8 positions x 50,304 fp32: 160 GB
    proc = train("--data", str(demo_shards), "--log-dir", str(tmp_path), "--seq-len", "8", "--batch-size", "100000",
                 "--total-batch-size", "800000")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("train_gpt2.py: out of memory on cpu at --batch-size 100000")
    assert "lower --batch-size" in line


def test_bf16_on_a_cpu_says_what_it_costs(tiny_shards, tmp_path):
    proc = train("--data", str(tiny_shards), "--log-dir", str(tmp_path), "--max-steps", "1", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert "notice: --dtype bfloat16 on cpu runs about 2x slower than float32" in proc.stdout
    plain = train("--data", str(tiny_shards), "--log-dir", str(tmp_path / "fp32"), "--max-steps", "1")
    assert "2x slower" not in plain.stdout
