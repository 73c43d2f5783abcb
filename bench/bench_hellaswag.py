"""
HellaSwag scoring speed: hellaswag.evaluate (many examples per forward, padded to a few fixed shapes) against the
common approach (one example per forward: its 4 rows padded to the longest, cross-entropy over every position).
Randomly initialised model and synthetic HellaSwag-like examples cut from text that ships with Python, so no
download (or --data FILE for the real validation set).

    python bench/bench_hellaswag.py                               # the --preset demo model (4 x 64, 64-token window)
    python bench/bench_hellaswag.py --model d12 --device cuda         # GPT-2 124M, 10042 examples, bf16
    python bench/bench_hellaswag.py --model d12 --device cuda --compile --data hellaswag/hellaswag_val.jsonl

Prints examples/s of each method, the speed-up, and how many predictions the two methods agree on.
"""

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hellaswag  # noqa: E402
from common import pick_device  # noqa: E402
from fineweb import get_tokenizer  # noqa: E402
from model import GPT, MODEL_SIZES, GPTConfig  # noqa: E402
from train_gpt2 import PRESETS  # noqa: E402

DEMO = tuple(PRESETS["demo"][k] for k in ("n_layer", "n_head", "n_embd", "seq_len"))  # train_gpt2.py --preset demo


def synthetic_examples(n: int, seed: int = 0) -> list[dict]:
    """HellaSwag-shaped examples: a context of 15-60 words and 4 endings of 5-25 words, cut from Python's docs."""
    from pydoc_data.topics import topics
    words = " ".join(topics[k] for k in sorted(topics)).split()
    rng = random.Random(seed)

    def cut(lo: int, hi: int) -> str:
        start, length = rng.randrange(len(words) - hi), rng.randint(lo, hi)
        return " ".join(words[start:start + length])
    return [{"ctx": cut(15, 60), "endings": [cut(5, 25) for _ in range(4)], "label": rng.randrange(4)}
            for _ in range(n)]


@torch.no_grad()
def one_at_a_time(model: GPT, examples: list[dict], device: str, autocast: torch.dtype | None) -> list[int]:
    """The common loop: per example, 4 rows padded to the longest, full logits and cross-entropy at every position,
    the ending positions masked in afterwards. Returns the acc_norm prediction of each example."""
    enc = get_tokenizer()
    block = model.config.block_size
    preds = []
    for ex in examples:
        ctx = enc.encode_ordinary(ex["ctx"])
        rows, masks = [], []
        for ending in ex["endings"]:
            end = enc.encode_ordinary(" " + ending)
            row = (ctx + end)[-block:]
            rows.append(row)
            n = min(len(end), len(row) - 1)  # an ending longer than the window: all of it but the first token
            masks.append([0] * (len(row) - n) + [1] * n)
        T = max(len(r) for r in rows)
        tokens = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=device)
        mask = torch.tensor([m + [0] * (T - len(m)) for m in masks], device=device)
        with torch.autocast(torch.device(device).type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits, _ = model(tokens)  # (4, T, vocab)
        losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                                 reduction="none").view(4, T - 1)
        m = mask[:, 1:].float()
        preds.append(int(((losses * m).sum(1) / m.sum(1)).argmin()))
    return preds


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", choices=["demo", *MODEL_SIZES], help="size (random init, vocab 50304)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--examples", type=int, default=None, help="examples for the batched run (default 10042 on "
                                                              "cuda, 256 elsewhere)")
    p.add_argument("--baseline-examples", type=int, default=None,
                   help="examples for the one-at-a-time run (default: all on cpu, 500 on cuda)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward in the batched run")
    p.add_argument("--data", default=None, help="a HellaSwag jsonl to use instead of synthetic examples")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model first (the batched run is then timed on a second pass)")
    args = p.parse_args()

    device = pick_device(args.device)
    autocast = torch.bfloat16 if device == "cuda" else None
    n = args.examples or (10042 if device == "cuda" else 256)
    n_base = min(n, args.baseline_examples or (500 if device == "cuda" else n))
    examples = hellaswag.load_examples(args.data)[:n] if args.data else synthetic_examples(n)
    n = len(examples)
    n_layer, n_head, n_embd, block = DEMO if args.model == "demo" else (*MODEL_SIZES[args.model], 1024)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device).eval()
    scored = torch.compile(model) if args.compile else model
    print(f"{args.model} ({model.num_params() / 1e6:.1f}M params), {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'bf16 autocast' if autocast else 'fp32'}"
          f"{', compiled' if args.compile else ''}; {n} examples ({'from ' + args.data if args.data else 'synthetic'})")

    hellaswag.evaluate(scored, examples[:args.batch_size], device, args.batch_size, autocast_dtype=autocast)  # warm-up
    if args.compile:
        t0 = time.perf_counter()
        hellaswag.evaluate(scored, examples, device, args.batch_size, autocast_dtype=autocast)
        print(f"first pass (compiling)     {time.perf_counter() - t0:8.2f} s")
    sync(device)
    t0 = time.perf_counter()
    result = hellaswag.evaluate(scored, examples, device, args.batch_size, autocast_dtype=autocast)
    sync(device)
    dt_batched = time.perf_counter() - t0
    print(f"batched ({args.batch_size}/forward)      {dt_batched:8.2f} s  {n / dt_batched:9.1f} examples/s  "
          f"acc_norm {result['acc_norm']:.4f}")

    one_at_a_time(model, examples[:2], device, autocast)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    preds = one_at_a_time(model, examples[:n_base], device, autocast)
    sync(device)
    dt_single = time.perf_counter() - t0
    print(f"one example per forward  {dt_single:8.2f} s  {n_base / dt_single:9.1f} examples/s  ({n_base} examples)")
    print(f"speed-up                 {(n / dt_batched) / (n_base / dt_single):8.1f} x")
    loss_sum, counts = hellaswag.score(model, examples[:n_base], device, args.batch_size, autocast)
    agree = sum(int(a == b) for a, b in zip((loss_sum / counts).argmin(dim=1).tolist(), preds))
    print(f"acc_norm predictions agreeing between the two: {agree}/{n_base}")


if __name__ == "__main__":
    main()
