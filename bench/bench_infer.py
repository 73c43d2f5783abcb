"""
Sampling speed of infer.py: new tokens/s with model.py's KV cache against full recompute of the window for every
new token (what the common sampling scripts do), on a randomly initialised model of a --model size.

    python bench/bench_infer.py                                   # d12 (124M), cpu/auto, 4 samples x 128 new tokens
    python bench/bench_infer.py --max-new-tokens 32               # quicker
    python bench/bench_infer.py --device cuda --model d24           # bf16 autocast on CUDA (--dtype float32 to compare)

Prints, per method, the time and new tokens/s, then the speed-up, and whether greedy decoding gave the same tokens.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import infer  # noqa: E402
from common import pick_device  # noqa: E402
from fineweb import get_tokenizer  # noqa: E402
from model import GPT, MODEL_SIZES, GPTConfig  # noqa: E402


def timed_sample(model: GPT, prompt: list[int], args: argparse.Namespace, use_cache: bool,
                 top_k: int | None = 50) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    out = infer.sample(model, prompt, args.num_samples, args.max_new_tokens, top_k=top_k, seed=0,
                       use_cache=use_cache, dtype=args.dtype)  # returns Python lists: the device has finished
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12", choices=list(MODEL_SIZES), help="size (random init, vocab 50304)")
    p.add_argument("--num-samples", type=int, default=4, help="batch of samples")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per sample")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="bfloat16 autocast (and a bf16 KV cache), as infer.py on CUDA (default: bfloat16 on CUDA)")
    p.add_argument("--prompt", default="Hello, I'm a language model,", help="the prompt (8 tokens by default)")
    p.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                   help="also time full recompute (--no-full for a quick run of the cache path only)")
    args = p.parse_args()

    device = pick_device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    n_layer, n_head, n_embd = MODEL_SIZES[args.model]
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device).eval()
    prompt = get_tokenizer().encode(args.prompt)
    n_new = args.num_samples * args.max_new_tokens
    print(f"{args.model} ({model.num_params() / 1e6:.0f}M params), {device}, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; prompt {len(prompt)} tokens, {args.num_samples} samples x "
          f"{args.max_new_tokens} new tokens")
    timed_sample(model, prompt, argparse.Namespace(num_samples=args.num_samples, max_new_tokens=2,
                                                      dtype=args.dtype), True)  # warm-up

    dt_cache, _ = timed_sample(model, prompt, args, use_cache=True)
    print(f"kv cache        {dt_cache:8.2f} s  {n_new / dt_cache:9.1f} new tok/s")
    if not args.full:
        return
    dt_full, _ = timed_sample(model, prompt, args, use_cache=False)
    print(f"full recompute  {dt_full:8.2f} s  {n_new / dt_full:9.1f} new tok/s")
    print(f"speed-up        {dt_full / dt_cache:8.1f} x")
    greedy = argparse.Namespace(num_samples=args.num_samples, max_new_tokens=min(args.max_new_tokens, 16),
                                dtype=args.dtype)
    cached, full = (timed_sample(model, prompt, greedy, use_cache, top_k=1)[1] for use_cache in (True, False))
    same = cached == full
    print(f"greedy tokens identical with and without the cache ({greedy.max_new_tokens} per sample): {same}")


if __name__ == "__main__":
    main()
