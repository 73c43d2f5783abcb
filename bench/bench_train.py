"""
Training speed of train_gpt2.py: tok/s, MFU and peak memory of its training step (Run.train_step: bf16 autocast on
CUDA, fused AdamW or Muon + AdamW, gradient clipping) on synthetic tokens, one process, with torch.compile on and off,
for either --recipe. No data, no download.

    python bench/bench_train.py                                   # d12 at 64 x 1024 on CUDA (or what --device finds)
    python bench/bench_train.py --batch-size 32 --compile         # compiled only
    python bench/bench_train.py --recipe modern                   # ModernGPT with Muon + AdamW
    python bench/bench_train.py --model-dims 2,2,64 --batch-size 2 --seq-len 64 --steps 3 --device cpu   # quick, CPU

Prints, per mode, the median step time, tokens/s, MFU (against the GPU's dense bf16 peak; '-' when unknown) and the
peak device memory allocated (CUDA).
"""

import argparse
import io
import statistics
import sys
import time
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt2  # noqa: E402
from model import MODEL_SIZES, RECIPES, GPTConfig, build_model, flops_per_token, peak_flops  # noqa: E402


class SyntheticBatches:
    """In place of train_gpt2.ShardLoader: the same random tokens every micro-step, copied as a real batch is."""
    steps_per_epoch = 1

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    def batch(self, step: int, micro: int, rank: int, world_size: int, batch_size: int,
              device: str) -> tuple[torch.Tensor, torch.Tensor]:
        buf = self.tokens.to(device, non_blocking=True)  # the copy a real step makes
        return buf[:, :-1], buf[:, 1:]


def bench(args: argparse.Namespace, device: str,
          use_compile: bool) -> tuple[float, float, float | None, float | None]:
    """(median seconds per step, tokens/s, MFU or None, peak GB allocated or None) over args.steps timed steps after
    args.warmup."""
    torch.manual_seed(0)
    n_layer, n_head, n_embd = args.dims
    config = GPTConfig(block_size=args.seq_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd, recipe=args.recipe)
    raw = build_model(config).to(device)
    model = torch.compile(raw) if use_compile else raw
    opt_args = train_gpt2.get_args(["--recipe", args.recipe, "--batch-size", str(args.batch_size), "--seq-len",
                                    str(args.seq_len), "--total-batch-size", str(args.batch_size * args.seq_len)])
    optimizer = train_gpt2.make_optimizer(raw, opt_args, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    tokens = torch.randint(0, 50257, (args.batch_size, args.seq_len + 1))
    if cuda:
        tokens = tokens.pin_memory()

    run = train_gpt2.Run(opt_args, 0, 1, device, autocast, SyntheticBatches(tokens), None, 0, accum=1,
                         total_steps=1000, last_step=1000, raw=raw, compiled=model, model=model, optimizer=optimizer,
                         log=train_gpt2.RunLog("", False, None, {}))
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        run.step = i
        with redirect_stdout(io.StringIO()):  # the step's own log line: this prints a summary instead
            run.train_step()  # ends with the step's one host sync, as in training
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    tok_s = args.batch_size * args.seq_len / dt
    peak = peak_flops(device)
    mfu = flops_per_token(config, raw.num_params(non_embedding=True)) * tok_s / peak if peak else None
    return dt, tok_s, mfu, torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12", choices=list(MODEL_SIZES), help="size (random init, vocab 50304)")
    p.add_argument("--recipe", default="classic", choices=list(RECIPES), help="classic (GPT, AdamW) or modern "
                   "(ModernGPT, Muon + AdamW): train_gpt2.py --recipe")
    p.add_argument("--model-dims", default=None, help="n_layer,n_head,n_embd instead of --model (e.g. 2,2,64)")
    p.add_argument("--batch-size", type=int, default=64, help="micro-batch sequences")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 compiled, 1 eager)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="only compiled (--compile) or only eager (--no-compile); default both (CPU: eager only)")
    args = p.parse_args()
    args.dims = tuple(int(v) for v in args.model_dims.split(",")) if args.model_dims else MODEL_SIZES[args.model]
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
    modes = [args.compile] if args.compile is not None else ([False, True] if device == "cuda" else [False])
    name = torch.cuda.get_device_name(device) if device == "cuda" else device
    print(f"{args.recipe} | dims {args.dims} | micro-batch {args.batch_size} x {args.seq_len} | {name} | "
          f"torch {torch.__version__}")
    for use_compile in modes:
        warmup = args.warmup if args.warmup is not None else (5 if use_compile else 1)
        timed = argparse.Namespace(**{**vars(args), "warmup": warmup})
        dt, tok_s, mfu, peak_gb = bench(timed, device, use_compile)
        print(f"compile {'on ' if use_compile else 'off'} | {dt * 1000:8.1f} ms/step | {tok_s:12,.0f} tok/s | "
              f"mfu {f'{mfu:.1%}' if mfu is not None else '-'} | peak "
              f"{f'{peak_gb:.1f} GB' if peak_gb is not None else '-'}")


if __name__ == "__main__":
    main()
