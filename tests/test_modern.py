"""--recipe modern: the model (shapes, causality, rotary KV cache), Muon, the schedule, exact resume, DDP with the
orthogonalisation split across ranks, and checkpoints through infer.py and hellaswag.py."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import checkpoints
import hellaswag
import infer
import train_gpt2
from checkpoints import load_model
from common import UserError
from model import GPT, GPT2_VOCAB, GPTConfig, KVCache, ModernGPT, build_model
from optim import Muon, orthogonalise

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_gpt2.py")
TINY = ["--recipe", "modern", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32",
        "--batch-size", "4", "--total-batch-size", "256", "--warmup-steps", "2", "--eval-every", "0",
        "--val-steps", "2", "--hellaswag-every", "0", "--sample-every", "0", "--device", "cpu", "--no-compile"]
SMALL = GPTConfig(block_size=16, vocab_size=50304, n_layer=2, n_head=2, n_embd=32, recipe="modern")


def train(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [SCRIPT, *TINY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def events(log_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


def trained_looking(config: GPTConfig = SMALL, seed: int = 0) -> ModernGPT:
    """A modern model with every weight random: the zero-initialised head and projections would make every logit
    equal, which no causality or cache test could tell from a correct model."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


# --- model ---

def test_modern_d12_has_gpt2_124m_width_and_depth():
    args = train_gpt2.get_args(["--recipe", "modern", "--model", "d12"])
    assert (args.n_layer, args.n_head, args.n_embd) == (12, 12, 768)
    with torch.device("meta"):
        classic = GPT(GPTConfig()).num_params()
        modern = build_model(GPTConfig(recipe="modern")).num_params()
    assert round(classic / 1e6, 1) == 124.5
    V, C, L, hs = 50304, 768, 12, 64  # untied head, no position table, no biases, 3 RMSNorm gains of C, QK-norm
    assert modern == 2 * V * C + C + L * (12 * C * C + 2 * C + 2 * hs) + C


def test_modern_model_shapes_and_a_uniform_start():
    torch.manual_seed(0)
    model = build_model(SMALL)
    assert isinstance(model, ModernGPT) and not hasattr(model.transformer, "wpe")
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()  # untied
    idx = torch.randint(0, GPT2_VOCAB, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 50304) and model.hidden(idx).shape == (3, 16, 32)
    assert loss.item() == pytest.approx(np.log(50304), abs=1e-4)  # zero head: the uniform distribution
    assert all(b.attn.c_proj.weight.abs().sum() == 0 and b.mlp.c_proj.weight.abs().sum() == 0
               for b in model.transformer.h)


def test_modern_model_is_causal():
    model = trained_looking()
    idx = torch.randint(0, GPT2_VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % GPT2_VOCAB
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :9], b[:, :9])
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_rotary_kv_cache_greedy_sampling_equals_full_recompute(seed):
    model = trained_looking(seed=seed)
    prompt = torch.randint(0, GPT2_VOCAB, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
    kw = dict(num_samples=2, max_new_tokens=20, top_k=1)  # 5 + 20 tokens: past the 16-token window too
    cached = infer.sample(model, prompt, use_cache=True, **kw)
    assert cached == infer.sample(model, prompt, use_cache=False, **kw)
    assert len(set(cached[0])) > 1


def test_rotary_positions_continue_across_the_cache():
    model = trained_looking()
    idx = torch.randint(0, GPT2_VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    cache = KVCache(model.config, 2, "cpu", torch.float32)
    with torch.no_grad():
        full = model(idx)[0]
        steps = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 11), (11, 12))]
    for logits, pos in zip(steps, (4, 10, 11)):
        assert torch.allclose(logits[:, -1], full[:, pos], atol=1e-5)


# --- optimizer ---

def test_orthogonalise_moves_every_singular_value_near_one():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(48, 48, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(160, 48, generator=gen))[0]
    g = u @ torch.diag(torch.logspace(-2, 0, 48)) @ v.T  # singular values from 0.01 to 1: badly conditioned
    for m in (g, g.T):
        s = torch.linalg.svdvals(orthogonalise(m))
        assert s.min() > 0.6 and s.max() < 1.25  # the quintic iteration's band around 1, not exactly 1


def test_muon_step_applies_a_near_orthogonal_update_to_each_hidden_matrix():
    torch.manual_seed(0)
    wide, tall = torch.nn.Parameter(torch.randn(16, 64)), torch.nn.Parameter(torch.randn(64, 16))
    before = [wide.detach().clone(), tall.detach().clone()]
    wide.grad = torch.randn(16, 1) @ torch.randn(1, 64) + 0.01 * torch.randn(16, 64)  # nearly rank one
    tall.grad = torch.randn(64, 16)
    opt = Muon([wide, tall], lr=0.1)
    opt.step()
    for p, b, scale in ((wide, before[0], 1.0), (tall, before[1], 2.0)):  # tall: sqrt(rows / cols)
        s = torch.linalg.svdvals((b - p.detach()) / (0.1 * scale))
        assert s.min() > 0.6 and s.max() < 1.25, s
    assert opt.last_orthogonalised == 2 and set(opt.state[wide]) == {"momentum"}


def test_modern_optimizer_groups_and_warmup_stable_decay_lr():
    args = train_gpt2.get_args([*TINY, "--muon-lr", "0.04", "--embed-lr", "0.2", "--head-lr", "0.01",
                                "--warmup-steps", "10", "--cooldown", "0.5"])
    model = build_model(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, recipe="modern"))
    opt = train_gpt2.make_optimizer(model, args, "cpu")
    adam, muon = opt.optimizers
    hidden = {id(p) for p in muon.param_groups[0]["params"]}
    assert hidden == {id(p) for p in model.transformer.h.parameters() if p.dim() == 2}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    assert [g["lr_scale"] for g in opt.param_groups] == pytest.approx([5.0, 0.25, 1.0])
    lrs = [train_gpt2.get_lr(s, 100, args) for s in range(101)]
    assert lrs[0] == pytest.approx(0.004) and lrs[9] == lrs[10] == lrs[50] == pytest.approx(0.04)
    assert lrs[75] == pytest.approx(0.02) and lrs[100] == 0.0


# --- training ---

def test_modern_run_prints_both_parameter_counts_and_resumes_exactly(tiny_shards, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["--data", str(tiny_shards), "--eval-every", "3"]
    first = train(*args, "--max-steps", "6", "--log-dir", str(straight))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "modern recipe: 3.2M parameters (classic at this size: 1.6M)" in first.stdout
    assert train(*args, "--max-steps", "3", "--log-dir", str(split)).returncode == 0
    second = train(*args, "--max-steps", "6", "--log-dir", str(split), "--resume", "auto")
    assert second.returncode == 0 and "resuming from" in second.stdout
    for kind in ("train", "val"):
        assert [(r["step"], r["loss"]) for r in events(split, kind)] == \
               [(r["step"], r["loss"]) for r in events(straight, kind)]
    ckpt = torch.load(straight / "model_00006.pt", weights_only=True)
    assert ckpt["model_config"]["recipe"] == "modern" and ckpt["config"]["recipe"] == "modern"
    classic = train_gpt2.get_args([*TINY, "--recipe", "classic", "--log-dir", str(straight)])
    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, recipe="classic")
    with pytest.raises(UserError, match="--recipe"):  # the other recipe's checkpoint is refused
        checkpoints.find_resume(classic, config)


def test_a_classic_checkpoint_from_before_recipes_still_resumes_and_loads(tmp_path):
    args = train_gpt2.get_args([*TINY, "--recipe", "classic", "--log-dir", str(tmp_path)])
    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    old_config = {k: v for k, v in asdict(config).items() if k != "recipe"}  # written before --recipe existed
    torch.save({"model": model.state_dict(), "model_config": old_config, "optimizer": {}, "step": 2,
                "config": {"total_batch_size": 256}}, tmp_path / "model_00002.pt")
    path, ckpt, skipped = checkpoints.find_resume(args, config)
    assert path == tmp_path / "model_00002.pt" and not skipped
    assert isinstance(load_model(str(path))[0], GPT)


def test_modern_two_processes_give_the_same_losses_as_one_with_twice_the_accumulation(tiny_shards, tmp_path):
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


def muon_on_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One Muon step over 5 matrices with the same gradients on every rank; saves the results and the count of
    matrices this rank orthogonalised."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    params, opt = muon_problem()
    opt.step()
    torch.save({"params": [p.detach() for p in params], "count": opt.last_orthogonalised},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def muon_problem() -> tuple[list[torch.nn.Parameter], Muon]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8 * (i + 1), 24, generator=g)) for i in range(5)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params, Muon(params, lr=0.05)


def test_muon_under_two_gloo_ranks_splits_the_orthogonalisation_and_equals_one_process(tmp_path):
    mp.spawn(muon_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    params, opt = muon_problem()
    opt.step()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["count"] for r in ranks] == [3, 2] and opt.last_orthogonalised == 5  # split, not repeated
    for r in ranks:
        for got, want in zip(r["params"], params):
            assert torch.allclose(got, want.detach(), atol=1e-6)


# --- checkpoints through the other scripts ---

@pytest.fixture(scope="module")
def modern_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("modern") / "model_00007.pt"
    model = trained_looking(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, recipe="modern"))
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "config": {"recipe": "modern"},
                "step": 7}, path)
    return path


def test_modern_checkpoint_loads_as_modern_and_samples_through_infer(modern_ckpt, capsys):
    model, config = load_model(str(modern_ckpt))
    assert isinstance(model, ModernGPT) and config["recipe"] == "modern"
    args = [str(modern_ckpt), "Hello", "--top-k", "1", "--max-new-tokens", "8", "--num-samples", "1"]
    infer.main(args)
    cached = capsys.readouterr()
    infer.main([*args, "--no-kv-cache"])
    assert capsys.readouterr().out == cached.out and cached.out.startswith("Hello") and len(cached.out) > 10
    assert "kv cache" in cached.err


def test_export_hf_of_a_modern_checkpoint_says_it_is_not_gpt2(modern_ckpt, tmp_path):
    with pytest.raises(SystemExit) as e:
        infer.main([str(modern_ckpt), "--export-hf", str(tmp_path / "hf")])
    message = str(e.value.code)
    assert message.startswith("infer.py: ") and "not a GPT-2 architecture" in message and "\n" not in message
    assert not (tmp_path / "hf").exists()


def test_hellaswag_cli_scores_a_modern_checkpoint(modern_ckpt, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_hellaswag import make_examples, write_jsonl
    examples = make_examples(5, seed=3)
    expected = hellaswag.evaluate(load_model(str(modern_ckpt))[0], examples, "cpu")
    data = write_jsonl(tmp_path / "hs.jsonl", examples)
    proc = subprocess.run([sys.executable, str(ROOT / "hellaswag.py"), "--model", str(modern_ckpt), "--data",
                           str(data), "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"acc_norm {expected['acc_norm']:.4f} ({expected['correct_norm']}/5)" in proc.stdout
