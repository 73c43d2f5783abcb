"""train_gpt2.py --preflight, and the CUDA code paths run on CPU: bf16 autocast (--dtype), the KV cache's dtype, the
loss without an fp32 copy of the logits, the loader's read-ahead, MFU peaks by GPU name."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import fineweb
import hellaswag
import infer
import model as model_py
import preflight as preflight_py
import train_gpt2
from common import UserError
from model import GPT, ChunkedCrossEntropy, GPTConfig, KVCache, peak_flops
from train_gpt2 import ShardLoader

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_gpt2.py")
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
        "--total-batch-size", "256", "--val-steps", "1", "--device", "cpu", "--preflight", "--preflight-steps", "2"]
QUIET = ["--eval-every", "0", "--hellaswag-every", "0", "--sample-every", "0", "--no-compile"]
EXAMPLES = [{"ctx": "A man sits on a roof. He", "endings": ["fixes the tiles.", "eats a cloud.", "swims home.",
                                                             "reads the sky."], "label": 0}] * 6


@pytest.fixture
def shards(tiny_shards) -> Path:
    return tiny_shards


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    return path


def preflight(*args: str) -> int:
    return preflight_py.preflight(train_gpt2.get_args([*TINY, *args]), train_gpt2.start_run)


def report(log_dir: Path) -> dict:
    data = json.loads((log_dir / "preflight.json").read_text())
    data["status"] = {c["name"]: c["status"] for c in data["checks"]}
    return data


# --- preflight ---

def test_preflight_runs_every_part_in_bf16_and_leaves_nothing_a_run_would_pick_up(shards, hellaswag_file, tmp_path,
                                                                                   capsys):
    log = tmp_path / "log"
    assert preflight("--data", str(shards), "--log-dir", str(log), "--no-compile", "--dtype", "bfloat16",
                     "--hellaswag-data", str(hellaswag_file), "--gpu-hour-price", "2.5") == 0
    r = report(log)
    assert r["passed"] and r["status"] == {"shards": "pass", "train steps": "pass", "memory": "off", "val": "pass",
                                           "hellaswag": "pass", "sample": "pass", "checkpoint": "pass",
                                           "disk": "pass"}
    f, est = r["figures"], r["estimate"]
    assert f["train_tokens"] == 9000 and f["steps_per_epoch"] == 34 and f["tok_per_s"] > 0
    assert f["checkpoint_gb"] > 0.01 and f["loader_wait_ms_per_step"] >= 0 and f["hellaswag_examples_per_s"] > 0
    assert est["steps"] == 34 and est["seconds"] > 34 * f["step_s"] and est["cost"] == pytest.approx(
        est["gpu_hours"] * 2.5)
    assert sorted(p.name for p in log.iterdir()) == ["preflight.json"]  # no model_*.pt, log.txt, metrics.jsonl
    screen = capsys.readouterr().out
    assert "preflight passed" in screen and "estimate: 34 steps" in screen and "bfloat16" in screen


def test_preflight_resumes_like_the_run_and_leaves_its_checkpoint_and_logs_alone(shards, tmp_path):
    log = tmp_path / "log"
    run = subprocess.run([sys.executable, SCRIPT, *TINY[:-3], *QUIET, "--data", str(shards), "--log-dir", str(log),
                          "--max-steps", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    before = {p.name: p.read_bytes() for p in log.iterdir()}
    assert preflight(*QUIET, "--data", str(shards), "--log-dir", str(log)) == 0
    assert {p.name: p.read_bytes() for p in log.iterdir() if p.name != "preflight.json"} == before
    assert report(log)["estimate"]["steps"] == 32  # from the checkpoint at step 2 to the end of the epoch


def test_preflight_under_torchrun_checks_that_both_ranks_hold_the_same_parameters(shards, hellaswag_file, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*torchrun, SCRIPT, *TINY, "--data", str(shards), "--log-dir", str(tmp_path), "--no-compile",
                           "--hellaswag-data", str(hellaswag_file), "--sample-every", "0"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = report(tmp_path)
    assert r["status"]["ranks agree"] == "pass" and r["figures"]["world_size"] == 2
    assert "6 examples over 2 rank(s)" in next(c["reason"] for c in r["checks"] if c["name"] == "hellaswag")
    assert proc.stdout.count("preflight passed") == 1  # one screen, from rank 0


def test_preflight_compiles_the_model_and_validates_through_it(shards, tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, *TINY, "--data", str(shards), "--log-dir", str(tmp_path),
                           "--compile", "--dtype", "bfloat16", "--hellaswag-every", "0", "--sample-every", "0"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = report(tmp_path)
    assert r["passed"] and r["config"]["compile"] and "the first time: it compiles" in \
        next(c["reason"] for c in r["checks"] if c["name"] == "val")


def test_a_shard_with_an_out_of_range_token_fails_the_preflight_naming_it(shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in shards.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    tokens = np.zeros(3000, dtype=np.uint16)
    tokens[1500] = 60000  # in the middle window
    fineweb.write_shard(bad / fineweb.shard_name(2), tokens)
    with pytest.raises(UserError, match=r"edufineweb_train_000002\.npy holds token id 60000, not below .*50257"):
        preflight(*QUIET, "--data", str(bad), "--log-dir", str(tmp_path / "log"))


def test_a_read_only_log_folder_fails_the_checkpoint_check(shards, tmp_path, monkeypatch):
    def read_only(obj, f, *args, **kwargs):  # what torch.save meets on a read-only mount (root ignores chmod)
        raise OSError(errno.EROFS, "Read-only file system", str(f))
    monkeypatch.setattr(torch, "save", read_only)
    assert preflight(*QUIET, "--data", str(shards), "--log-dir", str(tmp_path)) == 1
    check = next(c for c in report(tmp_path)["checks"] if c["name"] == "checkpoint")
    assert check["status"] == "FAIL" and "Read-only file system" in check["reason"]
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_fails_the_disk_check(shards, tmp_path, monkeypatch):
    full = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    assert preflight(*QUIET, "--data", str(shards), "--log-dir", str(tmp_path), "--keep-checkpoints", "2") == 1
    check = next(c for c in report(tmp_path)["checks"] if c["name"] == "disk")
    assert check["status"] == "FAIL" and "0.0 GB free" in check["reason"] and "up to 1 checkpoint" in check["reason"]


def test_a_micro_batch_that_does_not_divide_fails_before_any_step(shards, tmp_path):
    with pytest.raises(UserError, match="not a multiple of --batch-size"):
        preflight(*QUIET, "--data", str(shards), "--log-dir", str(tmp_path), "--batch-size", "3")
    assert not (tmp_path / "preflight.json").exists()


# --- the CUDA paths on CPU ---

def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32))


def test_bf16_autocast_trains_validates_and_scores_hellaswag_on_cpu(shards, step_run, tmp_path):
    model = tiny_model()
    optimizer = train_gpt2.make_optimizer(model, train_gpt2.get_args([]), "cpu")
    loader = ShardLoader(str(shards), "train", 32, 8, seed=0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    run = step_run(model, optimizer, loader, "--seq-len", "32", "--batch-size", "4", "--total-batch-size", "256",
                   "--lr", "1e-2", "--warmup-steps", "1", autocast=autocast)
    for step in range(4):  # 2 micro-steps each
        run.step = step
        run.train_step()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights fp32
    val = ShardLoader(str(shards), "val", 32, 8, seed=0, shuffle=False)
    with torch.no_grad(), autocast:
        assert model(*val.batch(0, 0, 0, 1, 4, "cpu"))[0].dtype == torch.bfloat16
    assert np.isfinite(train_gpt2.val_loss(model, val, 1, 2, 0, 1, 4, "cpu", autocast))
    bf16 = hellaswag.evaluate(model, EXAMPLES, "cpu", autocast_dtype=torch.bfloat16)
    loss_bf16, _ = hellaswag.score(model, EXAMPLES[:1], "cpu", autocast_dtype=torch.bfloat16)
    loss_fp32, _ = hellaswag.score(model, EXAMPLES[:1], "cpu")
    assert bf16["n"] == 6 and torch.allclose(loss_bf16, loss_fp32, atol=0.5)  # bf16 logits, fp32 losses


def test_greedy_bf16_sampling_with_the_cache_matches_full_recompute_and_caches_in_bf16(monkeypatch):
    model = tiny_model().eval()
    dtypes = []

    class Recorded(KVCache):
        def __init__(self, config, batch_size, device, dtype):
            super().__init__(config, batch_size, device, dtype)
            dtypes.append(self.k.dtype)
    monkeypatch.setattr(model_py, "KVCache", Recorded)
    prompt = [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    cached = infer.sample(model, prompt, 2, 20, top_k=1, dtype="bfloat16")
    full = infer.sample(model, prompt, 2, 20, top_k=1, dtype="bfloat16", use_cache=False)
    assert cached == full and dtypes == [torch.bfloat16]
    infer.sample(model, prompt, 1, 2, top_k=1)
    assert dtypes[-1] == torch.float32


def test_the_loss_keeps_no_fp32_copy_of_the_logits_and_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(64, 1000, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    targets[5] = -1  # ignored
    ours = ChunkedCrossEntropy.apply(logits, targets, 16)
    ours.backward()
    grad, logits.grad = logits.grad, None
    theirs = F.cross_entropy(logits, targets, ignore_index=-1)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5) and torch.allclose(grad, logits.grad, atol=1e-7)
    saved = []
    half = logits.detach().bfloat16().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ChunkedCrossEntropy.apply(half, targets, 16)
    assert saved and all(t.dtype == torch.bfloat16 for t in saved if t.numel() >= logits.numel())
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(half, targets, ignore_index=-1)  # the old loss: keeps an fp32 log-softmax for backward
    assert any(t.dtype == torch.float32 and t.numel() >= logits.numel() for t in saved)


def test_bf16_logits_take_the_chunked_loss_in_eager_mode_and_plain_cross_entropy_under_compile(monkeypatch):
    # measured on an H200 (bench/bench_loss.py): compiled, F.cross_entropy uses less memory and time than the chunked
    # loss; eager, the chunked loss saves memory
    logits = torch.randn(2, 8, 100).bfloat16()
    targets = torch.randint(0, 100, (2, 8))
    calls = []
    real = ChunkedCrossEntropy.apply
    monkeypatch.setattr(ChunkedCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    eager = model_py.cross_entropy(logits, targets)
    assert calls == [1]
    compiled = torch.compile(model_py.cross_entropy, backend="eager", fullgraph=True)(logits, targets)
    assert calls == [1]  # dynamo traced the plain branch (a traced call of the chunked one would have counted)
    plain = F.cross_entropy(logits.view(-1, 100), targets.view(-1))
    assert compiled.item() == plain.item() and eager.item() == pytest.approx(plain.float().item(), rel=1e-2)


def test_the_loader_reads_the_next_micro_batch_ahead_and_gives_the_same_tokens(shards):
    loader, plain = (ShardLoader(str(shards), "train", 32, 8, seed=3) for _ in range(2))
    for step, micro in [(0, 0), (0, 1), (1, 0), (1, 1), (7, 1), (2, 0)]:  # in order, then jumps
        x, y = loader.batch(step, micro, 0, 1, 4, "cpu")
        assert np.array_equal(torch.cat([x, y[:, -1:]], 1).numpy(), plain.sequences(step, micro, 0, 1, 4))
    assert loader._ahead[0] == (2, 1, 0, 1, 4) and loader.wait_s > 0  # reading the next one already


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA H200 NVL", 835e12), ("Some New GPU", None)])
def test_mfu_uses_the_peak_of_the_gpu_variant(name, peak):
    assert peak_flops("cuda", name) == peak


def test_gpu_check_script_runs_tiny_on_cpu_and_prints_the_results_table():
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**__import__("os").environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("| what |"):]
    for recipe in ("classic", "modern"):
        assert f"| preflight, {recipe}, d12 64 x 1024, compiled | passed: shards pass, train steps pass" in table
        assert f"| {recipe}: bench_train.py d12 64 x 1024, compile off | " in table
    for row in ("| loss chunked, d12 64 x 1024 fwd+bwd, compile off | ", "| loss plain, d12 64 x 1024 fwd+bwd",
                "| sampling d12, 4 x 256 new tokens, bf16, kv cache | ", "| HellaSwag scoring, d12, bf16, batched | ",
                "| exact resume (resumed vs one run) | 0 (from step 1 on: 0) - identical |"):
        assert row in table
    assert "**" not in table  # no part failed or timed out


def test_a_preflight_near_the_end_of_a_run_prints_no_step_past_its_total_nor_a_negative_eta(shards, tmp_path, capsys):
    run = [SCRIPT, *TINY[:-3], *QUIET, "--data", str(shards), "--log-dir", str(tmp_path), "--epochs", "0.1"]
    assert subprocess.run([sys.executable, *run, "--max-steps", "2"], capture_output=True, cwd=ROOT).returncode == 0
    assert preflight(*QUIET, "--data", str(shards), "--log-dir", str(tmp_path), "--epochs", "0.1",
                     "--preflight-steps", "3") == 0  # steps 2, 3 and 4 of a run that ends at 3
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split("|")[0].strip() for line in lines] == \
           ["step     2/3", "step     3 (past the run's last step)", "step     4 (past the run's last step)"]
    assert not any("day" in line for line in lines)
