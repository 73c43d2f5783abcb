"""
HellaSwag accuracy of a GPT-2: a checkpoint (train_gpt2.py, build-nanogpt, nanoGPT), OpenAI's weights, or a Hugging Face
folder.

    python hellaswag.py --model gpt2                      # OpenAI's 124M on the 10042 validation examples
    python hellaswag.py --model log/model_19072.pt        # your run
    python hellaswag.py --model log/model_19072.pt --data my_hellaswag.jsonl --limit 500 --verbose
    python hellaswag.py --download                        # only fetch the split (no torch needed: local data prep)

Completion-style scoring: each of the 4 endings follows the context (" " + ending), the model's cross-entropy over
the ending tokens is summed; `acc` picks the ending with the lowest sum, `acc_norm` the lowest mean per token.
OpenAI's GPT-2 124M scores acc 0.2859 / acc_norm 0.2955 this way (gpt2-xl: 0.3842 / 0.4893); GPT-3 124M reports 0.337.

The data comes from the authors' repository (github.com/rowanz/hellaswag) into hellaswag/ next to this script, once.
Examples are scored many at a time, padded on the right to a few fixed lengths (powers of two), the output layer
only at the ending positions, and train_gpt2.py calls evaluate() from every DDP rank, each taking a share.
"""

from __future__ import annotations  # the signatures name torch: it is imported only where scoring needs it

import argparse
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from common import HelpFormatter, UserError, add_device_option, fail, first_line, pick_device
from fineweb import EOT, GPT2_VOCAB, get_tokenizer

if TYPE_CHECKING:  # --download needs no torch (data prep in any Python): the functions that score import it
    import torch

# ----------------------------------------------------------------------------------------------------------------------
# config

DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
CACHE_DIR = Path(__file__).resolve().parent / "hellaswag"
# split -> (examples, bytes, sha256) of the authors' files, as pinned by Hugging Face datasets' hellaswag loader
SPLITS = {
    "train": (39905, 47496131, "dae5e69249868cb9fe4e23ff925c60b66169564cfb7072d793cd7356a2b69f8d"),
    "val": (10042, 12246618, "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"),
    "test": (10003, 11752147, "da082b00543e422b8d25394614d102944586986def4de5cd1bd36d86bcb76261"),
}
ROW_STEP = 32  # rows are padded to a multiple of this (block_size / 32 shapes at most: 32 for GPT-2)


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # what to score
    p.add_argument("--model", default="gpt2", help="a checkpoint of train_gpt2.py, build-nanogpt or nanoGPT, gpt2 | "
                                                   "gpt2-medium | gpt2-large | gpt2-xl, or a Hugging Face GPT-2 folder")
    # which examples
    p.add_argument("--data", default=None, help="a local jsonl in the HellaSwag schema (ctx, endings, label) "
                                                "instead of the downloaded split")
    p.add_argument("--split", default="val", choices=["train", "val"], help="the authors' split (test has no labels)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="where the downloaded splits are kept")
    p.add_argument("--url", default=DATA_URL, help="where to download a split from ({split} is filled in)")
    p.add_argument("--download", action="store_true", help="only download --split into --cache-dir (needs no torch)")
    # how
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (4 rows each)")
    add_device_option(p)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="float32",
                   help="bfloat16 autocasts the forward passes (the ending losses stay fp32)")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=False,
                   help="print a few examples with the loss of each ending")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        p.error("--batch-size and --limit must be at least 1")
    if args.download and args.data:
        p.error("--download fetches a split of the authors' data; --data names a local file")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# data

class HellaSwagUnavailable(UserError):
    """The split is not on disk and could not be downloaded; the message says how to get it."""


def split_problem(path: Path, expected: tuple[int, int, str]) -> str | None:
    """None when path holds the whole split: its sha256 is the authors' (whatever its line endings), or else it holds
    their number of examples (a warning says the file differs). Otherwise why it is not the split."""
    n, _, want = expected
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha == want:
        return None
    lines = sum(1 for line in data.splitlines() if line.strip())
    if lines != n:
        return f"{lines} examples, expected {n}"
    print(f"hellaswag.py: warning: {path.name} has sha256 {sha}, expected {want}: the file upstream changed, so "
          "scores may not compare with published ones", file=sys.stderr)
    return None


def fetch(url: str, dest: Path, expected: tuple[int, int, str] | None = None, progress: bool = True) -> None:
    """Fetch url into dest atomically (a temp file renamed into place): dest is complete or absent.
    expected = (examples, bytes, sha256) of the authors' split: a file that is not that split is refused."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # per process: DDP ranks may download at once
    how = f"download {url} to {dest}, or pass --data FILE"
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
            if size is not None and f.tell() != size:
                raise OSError(f"got {f.tell()} of {size} bytes")
            f.flush()
            os.fsync(f.fileno())
        problem = split_problem(tmp, expected) if expected is not None else None
    except (OSError, http.client.HTTPException, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = e.reason if isinstance(e, urllib.error.URLError) else first_line(e)
        raise HellaSwagUnavailable(f"could not download HellaSwag ({reason}) - {how}") from None
    if problem:
        tmp.unlink(missing_ok=True)
        raise HellaSwagUnavailable(f"{url} gave {problem} - {how}")
    os.replace(tmp, dest)


def read_jsonl(path: str | Path) -> list[dict]:
    """Examples of a HellaSwag jsonl file; a malformed line raises UserError naming path:line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a HellaSwag jsonl file (byte {e.start} is not UTF-8 text)") from None
    examples = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(ex, dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(ex).__name__}")
        if not isinstance(ex.get("ctx"), str) or not ex["ctx"]:
            raise UserError(f"{path}:{i}: 'ctx' must be a non-empty string")
        endings = ex.get("endings")
        if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
            got = f"{len(endings)} items" if isinstance(endings, list) else type(endings).__name__
            raise UserError(f"{path}:{i}: 'endings' must be a list of 4 strings, got {got}")
        if not all(e.strip() for e in endings):  # an empty ending would tie with its twin and "win" as ending 0
            raise UserError(f"{path}:{i}: ending {[e.strip() for e in endings].index('')} is empty")
        label = ex.get("label")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if label is None:
            raise UserError(f"{path}:{i}: no 'label' (the authors withhold the test split's labels - use val)")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 4:
            raise UserError(f"{path}:{i}: 'label' must be 0, 1, 2 or 3, got {label!r}")
        examples.append({**ex, "label": label})
    return examples


def load_examples(path: str | Path | None = None, split: str = "val", cache_dir: str | Path | None = None,
                  download: bool = True, url: str = DATA_URL) -> list[dict]:
    """A local file's examples, or a split of the authors' data (downloaded into cache_dir once).
    Raises HellaSwagUnavailable (one line, saying how to get the file) when it is absent and cannot be downloaded,
    ValueError for a malformed file."""
    if path is not None:
        if not Path(path).is_file():
            raise HellaSwagUnavailable(f"no such file: {path} - pass a HellaSwag jsonl "
                                       f"(e.g. {DATA_URL.format(split='val')})")
        return read_jsonl(path)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} - one of {', '.join(SPLITS)}")
    dest = Path(cache_dir or CACHE_DIR) / f"hellaswag_{split}.jsonl"
    problem = f"{dest} is missing"
    if dest.is_file():
        wrong = split_problem(dest, SPLITS[split])
        problem = wrong and f"{dest} holds {wrong}"
    if problem:  # absent, or a partial or foreign file in the cache: never scored as the whole split
        if not download:
            raise HellaSwagUnavailable(f"{problem} - download {url.format(split=split)} there, or pass --data FILE")
        if dest.is_file():
            print(f"hellaswag.py: {problem}; downloading it again", file=sys.stderr)
        fetch(url.format(split=split), dest, SPLITS[split])
    return read_jsonl(dest)


# ----------------------------------------------------------------------------------------------------------------------
# scoring

def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    import torch
    while hasattr(model, "_orig_mod") or isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def context_length(model: torch.nn.Module) -> int:
    """block_size of our GPT, n_positions of a Hugging Face GPT2LMHeadModel."""
    config = _unwrap(model).config
    return getattr(config, "block_size", None) or config.n_positions


def render(examples: list[dict], block_size: int) -> tuple[list[list[int]], list[int]]:
    """4 token rows per example (context + " " + ending, cut from the left to block_size) and the number of
    ending tokens scored in each (the last ones of the row)."""
    enc = get_tokenizer()
    ctx = enc.encode_ordinary_batch([ex["ctx"] for ex in examples])
    ends = enc.encode_ordinary_batch([" " + e for ex in examples for e in ex["endings"]])
    rows, n_end = [], []
    for i, end in enumerate(ends):
        row = (ctx[i // 4] + end)[-block_size:]
        rows.append(row)
        n_end.append(min(len(end), len(row) - 1))  # the first token of a row has nothing to predict it
    return rows, n_end


def count_cut(examples: list[dict], block_size: int) -> int:
    """How many examples have an ending whose row is longer than block_size, so render cuts its context."""
    enc = get_tokenizer()
    ctx = enc.encode_ordinary_batch([ex["ctx"] for ex in examples])
    ends = enc.encode_ordinary_batch([" " + max(ex["endings"], key=len) for ex in examples])
    return sum(len(c) + len(e) > block_size for c, e in zip(ctx, ends))


def cut_notice(cut: int, n: int, block_size: int) -> str:
    """The words for examples cut to fit the model's context ("" when none was)."""
    return f"{cut} of {n} examples longer than the model's {block_size} tokens, cut from the left" if cut else ""


def padded_length(n: int, block_size: int) -> int:
    """The row length a batch is padded to: a multiple of ROW_STEP, at most block_size. (Examples are scored in
    order of length, so a batch's rows are alike and little of the padding is computed in vain.)"""
    return min(-(-n // ROW_STEP) * ROW_STEP, block_size)


def ending_losses(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                  chunk: int = 128) -> torch.Tensor:
    """Cross-entropy (N,), in fp32, of the model's logits at the N positions in mask (B, T) against targets[mask].

    Any model that maps tokens (B, T) to logits (B, T, vocab) works: a tensor, a tuple that starts with them, or an
    output with .logits (Hugging Face). A model with `hidden` and `lm_head` (model.GPT) runs its output layer
    only at the masked positions, `chunk` rows at a time: for a small model the output layer is most of the work,
    and a (B, T, vocab) tensor of hundreds of MB is never made."""
    import torch
    from torch.nn import functional as F
    base = _unwrap(model)
    if hasattr(base, "hidden") and hasattr(base, "lm_head"):  # one chunk of (n, vocab) logits at a time
        w, b = base.lm_head.weight[:GPT2_VOCAB], base.lm_head.bias  # the padding rows of the vocabulary never occur
        b = b[:GPT2_VOCAB] if b is not None else None
        logits = (F.linear(h, w, b) for h in base.hidden(tokens)[mask].split(chunk))
    else:
        out = model(tokens)
        out = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
        logits = (x[:, :GPT2_VOCAB] for x in out[mask].split(chunk))
    targets = targets[mask].split(chunk)
    return torch.cat([F.cross_entropy(x.float(), y, reduction="none") for x, y in zip(logits, targets)])


def score(model: torch.nn.Module, examples: list[dict], device: str | torch.device, batch_size: int = 32,
          autocast_dtype: torch.dtype | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of each ending (N, 4) and its token count (N, 4), in the order of examples.
    Examples are sorted by length and scored batch_size at a time; every batch has the same number of rows."""
    import torch
    device = torch.device(device)
    block = context_length(model)
    rows, n_end = render(examples, block)
    n = len(examples)
    order = sorted(range(n), key=lambda i: max(len(rows[4 * i + j]) for j in range(4)))
    per_batch = min(batch_size, n)
    counts = torch.tensor(n_end, dtype=torch.float64).view(n, 4)
    was_training = model.training
    model.eval()
    done = []  # (example ids, their (len(ids), 4) loss sums on device): one copy to the host at the end
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                             enabled=autocast_dtype is not None):
            for start in tqdm(range(0, n, per_batch), desc="hellaswag", unit="batch", disable=not progress):
                ids = order[start:start + per_batch]
                batch = [4 * i + j for i in ids for j in range(4)]
                T = padded_length(max(len(rows[r]) for r in batch), block)
                spare = 4 * per_batch - len(batch)  # the last batch is filled up with rows of padding
                tokens = torch.tensor([rows[r] + [EOT] * (T - len(rows[r])) for r in batch] + [[EOT] * T] * spare)
                lengths = torch.tensor([len(rows[r]) for r in batch] + [0] * spare).view(-1, 1)
                ends = torch.tensor([n_end[r] for r in batch] + [0] * spare).view(-1, 1)
                pos = torch.arange(T).view(1, -1)
                mask = (pos < lengths - 1) & (pos >= lengths - 1 - ends)  # mask[r, t]: token t+1 is an ending token
                targets = torch.roll(tokens, -1, dims=1)  # the token each position predicts; wraps only where unmasked
                tokens, mask, targets = (t.to(device, non_blocking=True) for t in (tokens, mask, targets))
                losses = ending_losses(model, tokens, mask, targets)
                row = torch.arange(mask.size(0), device=device).view(-1, 1).expand_as(mask)[mask]
                sums = torch.zeros(mask.size(0), dtype=torch.float64, device=device)
                sums.index_add_(0, row, losses.double())
                done.append((ids, sums[:4 * len(ids)].view(-1, 4)))
    finally:
        model.train(was_training)
    loss_sum = torch.zeros(n, 4, dtype=torch.float64)
    for ids, sums in done:
        loss_sum[ids] = sums.cpu()
    return loss_sum, counts


def summarize(loss_sum: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(right by the lowest summed loss, right by the lowest mean loss per token)."""
    correct = int((loss_sum.argmin(dim=1) == labels).sum())
    correct_norm = int(((loss_sum / counts).argmin(dim=1) == labels).sum())
    return correct, correct_norm


def evaluate(model: torch.nn.Module, examples: list[dict], device: str | torch.device, batch_size: int = 32,
             rank: int = 0, world_size: int = 1, autocast_dtype: torch.dtype | None = None,
             progress: bool = False) -> dict:
    """acc, acc_norm, n, correct, correct_norm, cut (examples cut to the model's context) over examples. Under DDP
    every rank calls this and scores examples[rank::world_size]; the counts are summed over ranks, so every rank
    returns the same totals."""
    import torch
    import torch.distributed as dist
    share = examples[rank::world_size]
    correct = correct_norm = cut = 0
    if share:
        loss_sum, counts = score(model, share, device, batch_size, autocast_dtype, progress and rank == 0)
        correct, correct_norm = summarize(loss_sum, counts, torch.tensor([ex["label"] for ex in share]))
        cut = count_cut(share, context_length(model))
    totals = [correct, correct_norm, len(share), cut]
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        t = torch.tensor(totals, dtype=torch.long, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        totals = t.tolist()
    correct, correct_norm, n, cut = totals
    return dict(acc=correct / max(n, 1), acc_norm=correct_norm / max(n, 1), n=n, correct=correct,
                correct_norm=correct_norm, cut=cut)


def load_for_training(path: str | None, world: int, device: str) -> tuple[list | None, str | None]:
    """The examples of train_gpt2.py's evals: (examples, None), or (None, why not) when the data is missing and cannot
    be downloaded. Under DDP every rank loads it (downloads are atomic per process) and they agree: HellaSwag runs
    only if every rank has it."""
    import torch
    import torch.distributed as dist
    try:
        examples, why = load_examples(path), None
    except HellaSwagUnavailable as e:
        # hellaswag.py's advice, with the name train_gpt2.py gives the option
        examples, why = None, str(e).replace("--data FILE", "--hellaswag-data FILE")
    if world > 1:
        ready = torch.tensor(int(examples is not None), device=device)
        dist.all_reduce(ready)  # a rank without the data would skip collectives the others wait in
        if ready.item() < world:
            examples, why = None, why or "HellaSwag data missing on another process"
    return examples, why


# ----------------------------------------------------------------------------------------------------------------------
# main

def download(args: argparse.Namespace) -> None:
    """hellaswag.py --download: the split into the cache (once), then one line."""
    try:
        n = len(load_examples(split=args.split, cache_dir=args.cache_dir, url=args.url))
    except (UserError, OSError) as e:
        fail("hellaswag.py", first_line(e))
    print(f"hellaswag.py: {Path(args.cache_dir) / f'hellaswag_{args.split}.jsonl'} holds the {n} examples of the "
          f"{args.split} split")


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if args.download:
        download(args)
        return
    try:
        import torch

        from checkpoints import load_model
    except ModuleNotFoundError as e:
        fail("hellaswag.py", f"{first_line(e)} - scoring needs torch: activate the venv (only --download works "
                             "without it)")
    try:
        examples = load_examples(args.data, args.split, args.cache_dir, url=args.url)[:args.limit]
        if not examples:
            raise UserError(f"{args.data or args.split} holds no examples")
        device = pick_device(args.device)
        model = load_model(args.model, device, "hellaswag.py")[0]
    except (UserError, OSError) as e:
        fail("hellaswag.py", first_line(e))
    autocast = torch.bfloat16 if args.dtype == "bfloat16" else None
    print(f"hellaswag.py: {args.model} on {device}, {len(examples)} examples from "
          f"{args.data or Path(args.cache_dir) / f'hellaswag_{args.split}.jsonl'}", file=sys.stderr)

    if cut := count_cut(examples, context_length(model)):
        print(f"hellaswag.py: notice: {cut_notice(cut, len(examples), context_length(model))}", file=sys.stderr)
    t0 = time.perf_counter()
    loss_sum, counts = score(model, examples, device, args.batch_size, autocast, progress=True)
    dt = time.perf_counter() - t0
    labels = torch.tensor([ex["label"] for ex in examples])
    correct, correct_norm = summarize(loss_sum, counts, labels)
    n = len(examples)
    if args.verbose:
        for i in range(min(n, 5)):
            ex = examples[i]
            print(f"--- example {i}: label {ex['label']}\n{ex['ctx']}")
            for j, ending in enumerate(ex["endings"]):
                print(f"  {j}: sum {loss_sum[i, j]:7.3f}  mean {loss_sum[i, j] / counts[i, j]:6.3f}  "
                      f"({int(counts[i, j])} tokens)  {ending}")
            print(f"  picked {int(loss_sum[i].argmin())} (acc), {int((loss_sum[i] / counts[i]).argmin())} (acc_norm)")
    print(f"acc {correct / n:.4f} ({correct}/{n})  acc_norm {correct_norm / n:.4f} ({correct_norm}/{n})  "
          f"{n / dt:.1f} examples/s")


if __name__ == "__main__":
    main()
