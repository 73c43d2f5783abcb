"""
Memory and time of the training loss: model.py's chunked cross-entropy (bf16 logits, fp32 one chunk of rows at a
time) against plain F.cross_entropy under autocast (which upcasts all the logits to fp32), in a whole forward and
backward of a --model at the training shape, eager and compiled. Random weights and tokens, no data.

    python bench/bench_loss.py                                        # d12 at 64 x 1024 on CUDA, eager and compiled
    python bench/bench_loss.py --no-compile --batch-size 16
    python bench/bench_loss.py --model-dims 2,2,64 --batch-size 2 --seq-len 64 --device cpu --steps 2   # quick

Prints, per loss and mode: the median time of a forward + backward, and the peak device memory allocated above the
weights and gradients (CUDA; '-' elsewhere).
"""

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model as model_py  # noqa: E402
from model import MODEL_SIZES, GPTConfig, build_model  # noqa: E402


def plain_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What most GPT-2 scripts do: F.cross_entropy on all the logits (autocast runs it in fp32)."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def bench(args: argparse.Namespace, device: str, loss_fn, use_compile: bool) -> tuple[float, float | None]:
    """(median seconds of a forward + backward, peak GB allocated above weights and gradients, or None)."""
    model_py.cross_entropy = loss_fn  # the models call model.cross_entropy by its module-level name
    torch.manual_seed(0)
    n_layer, n_head, n_embd = args.dims
    raw = build_model(GPTConfig(block_size=args.seq_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device)
    model = torch.compile(raw) if use_compile else raw
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    tokens = torch.randint(0, 50257, (args.batch_size, args.seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    times, base = [], None
    for i in range(args.warmup + args.steps):
        if i == args.warmup and cuda:  # the gradients exist now: measure what a step adds on top
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 1e9 if cuda else None
    del model, raw
    if cuda:
        torch.cuda.empty_cache()
    return statistics.median(times), peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12", choices=list(MODEL_SIZES), help="size (random init, vocab 50304)")
    p.add_argument("--model-dims", default=None, help="n_layer,n_head,n_embd instead of --model (e.g. 2,2,64)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=5, help="timed forward + backward passes per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (compiling, allocating)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="only compiled (--compile) or only eager (--no-compile); default both (CPU: eager only)")
    args = p.parse_args()
    args.dims = tuple(int(v) for v in args.model_dims.split(",")) if args.model_dims else MODEL_SIZES[args.model]
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    modes = [args.compile] if args.compile is not None else ([False, True] if device == "cuda" else [False])
    name = torch.cuda.get_device_name(device) if device == "cuda" else device
    print(f"dims {args.dims} | {args.batch_size} x {args.seq_len} tokens | {name} | torch {torch.__version__} | "
          f"{'bf16 autocast' if device == 'cuda' else 'fp32 (on the CPU both losses are the fused kernel)'}")
    chunked = model_py.cross_entropy
    for use_compile in modes:
        for label, fn in (("chunked", chunked), ("plain  ", plain_cross_entropy)):
            dt, peak = bench(args, device, fn, use_compile)
            print(f"loss {label} | compile {'on ' if use_compile else 'off'} | {dt * 1000:8.1f} ms fwd+bwd | peak "
                  f"{f'{peak:.1f} GB' if peak is not None else '-'} above weights and gradients")
    model_py.cross_entropy = chunked


if __name__ == "__main__":
    main()
