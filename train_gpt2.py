"""
Train GPT-2 (124M and up) on FineWeb-Edu token shards: one process, or torchrun DDP on one or many nodes.

    python fineweb.py --demo && python train_gpt2.py --preset demo     # a small model on CPU in a few minutes
    torchrun --standalone --nproc_per_node=8 train_gpt2.py             # GPT-2 124M on edu_fineweb10B/ (10B tokens)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py --resume log/model_18882.pt --epochs 2   # a second epoch

Where to start reading: model.py (the GPT), then this file top to bottom: the data loader, the optimizers and the lr
schedule, the evals, the options, a run and its step (Run.train_step), and last the loop (train). Checkpoints, the
log-dir lock and the other projects' formats are in checkpoints.py, the --preflight in preflight.py, Muon in optim.py.

Writes LOG_DIR/model_{step:05d}.pt checkpoints, LOG_DIR/log.txt and LOG_DIR/metrics.jsonl. SIGTERM, SIGHUP or Ctrl-C
finish the current step, save a checkpoint and exit; `--resume auto` (the default) continues from the newest one.
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import checkpoints
import fineweb
import hellaswag
import preflight
from common import HelpFormatter, UserError, add_device_option, first_line, leave_process_group, pick_device
from model import GPT, MODEL_SIZES, RECIPES, GPTConfig, ModernGPT, build_model, flops_per_token, generate, peak_flops
from optim import Muon, Optimizers

# ----------------------------------------------------------------------------------------------------------------------
# data

class ShardLoader:
    """Sequences of seq_len + 1 tokens at stride seq_len inside each memory-mapped shard (inputs and shifted targets).

    An epoch is every sequence once, in a seeded per-epoch order: a permutation of the shards, and inside each
    shard a permutation of its sequences (shuffle=False keeps file order, for validation). Step s of an epoch
    takes the sequences [s * N, (s + 1) * N), N = seqs_per_step; micro-step m of rank r takes its B of them at
    (m * world_size + r) * B. So a step's global batch is the same for any number of processes, ranks never
    overlap, and the position in the data is just the step number. batch() reads the next micro-batch ahead in a
    background thread (its pages may come from a cold network volume), and adds the time it waited to wait_s."""

    def __init__(self, folder: str, split: str, seq_len: int, seqs_per_step: int, seed: int, shuffle: bool = True,
                 vocab_size: int = GPTConfig.vocab_size):
        self.paths = fineweb.list_shards(folder, split)  # UserError when the folder holds two kinds of shards
        try:
            self.shards = [fineweb.read_shard(p) for p in self.paths]  # memmaps: nothing read
        except (ValueError, OSError) as e:
            raise UserError(f"bad shard: {first_line(e)} - rebuild it with fineweb.py") from None
        self.T, self.N, self.seed = seq_len, seqs_per_step, seed
        self.shuffle, self.vocab_size = shuffle, vocab_size
        self.counts = np.array([(len(s) - 1) // seq_len if len(s) else 0 for s in self.shards], dtype=np.int64)
        self.n_seqs = int(self.counts.sum())
        # each epoch leaves out the remainder of less than one step
        self.steps_per_epoch = self.n_seqs // seqs_per_step
        self._epoch, self._order, self._ends, self._perms = -1, None, None, {}
        # the read-ahead: (the batch() arguments it is for, a future of its tokens)
        self._ahead: tuple[tuple, Future] | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="shard-read-ahead")
        self.wait_s = 0.0  # seconds batch() spent waiting for tokens

    def _layout(self, epoch: int) -> None:
        """The shard order of this epoch, and where each shard's sequences end in it."""
        if epoch != self._epoch:
            n = len(self.shards)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._epoch, self._order, self._ends, self._perms = epoch, order, np.cumsum(self.counts[order]), {}

    def _perm(self, shard: int) -> np.ndarray:
        """The order of one shard's sequences in the current epoch (a few cached: ranks walk shards in order)."""
        if shard not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(next(iter(self._perms)))
            count = int(self.counts[shard])
            rng = np.random.default_rng([self.seed, self._epoch, shard])
            self._perms[shard] = rng.permutation(count) if self.shuffle else np.arange(count)
        return self._perms[shard]

    def sequences(self, step: int, micro: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
        """The (B, T + 1) uint16 tokens of one micro-step of one rank; step counts from the start of training."""
        epoch, s = divmod(step, self.steps_per_epoch)
        self._layout(epoch)
        first = s * self.N + (micro * world_size + rank) * batch_size
        assert first + batch_size <= (s + 1) * self.N, "micro-batches overrun the step: check the accumulation"
        out = np.empty((batch_size, self.T + 1), dtype=np.uint16)
        for b, i in enumerate(range(first, first + batch_size)):
            k = int(np.searchsorted(self._ends, i, side="right"))  # position of the shard in this epoch's order
            shard = int(self._order[k])
            j = int(self._perm(shard)[i - (self._ends[k - 1] if k else 0)])  # sequence index inside the shard
            out[b] = self.shards[shard][j * self.T: j * self.T + self.T + 1]
            if out[b].max() >= self.vocab_size:  # on CUDA an embedding index past the vocab kills every rank
                raise UserError(f"{self.paths[shard]} holds token id {out[b].max()}, but the model's vocabulary has "
                                f"{self.vocab_size} - rebuild the shard with fineweb.py, or it was not made with "
                                "the GPT-2 tokenizer")
        return out

    def batch(self, step: int, micro: int, rank: int, world_size: int, batch_size: int,
              device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) int64 on device; pinned memory and an async copy on CUDA. Starts reading the
        micro-batch after this one (the next step's first after the last micro-step)."""
        t0, key = time.perf_counter(), (step, micro, rank, world_size, batch_size)
        ahead, self._ahead = self._ahead, None
        # always waited for, even when it is not the batch asked for: sequences() never runs twice at once
        tokens = ahead[1].result() if ahead else None
        if ahead is None or ahead[0] != key:
            tokens = self.sequences(*key).astype(np.int64)
        self.wait_s += time.perf_counter() - t0
        more = micro + 1 < self.N // (world_size * batch_size)
        nxt = (step, micro + 1) if more else (step + 1, 0)
        read = self._reader.submit(lambda: self.sequences(*nxt, *key[2:]).astype(np.int64))
        self._ahead = (nxt + key[2:], read)
        buf = torch.from_numpy(tokens)
        buf = buf.pin_memory().to(device, non_blocking=True) if device.startswith("cuda") else buf.to(device)
        return buf[:, :-1], buf[:, 1:]


# ----------------------------------------------------------------------------------------------------------------------
# optimisation

def make_modern_optimizer(model: ModernGPT, args: argparse.Namespace, device: str) -> Optimizers:
    """Muon at --muon-lr for the blocks' matrices; AdamW (no weight decay) at --embed-lr for the token embedding and
    at --head-lr for the head and the RMSNorm gains. Each group's lr_scale is its lr over --muon-lr: the schedule
    (get_lr) gives the Muon lr of a step, and Run.train_step scales it for each group."""
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    gains = [p for p in model.parameters() if p.dim() < 2]
    adam = torch.optim.AdamW([
        dict(params=[model.transformer.wte.weight], lr=args.embed_lr, lr_scale=args.embed_lr / args.muon_lr),
        dict(params=[model.lm_head.weight, *gains], lr=args.head_lr, lr_scale=args.head_lr / args.muon_lr)],
        betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, fused=device.startswith("cuda"))
    muon = Muon([dict(params=hidden, lr_scale=1.0)], lr=args.muon_lr)
    return Optimizers(adam, muon)


def wsd_lr(step: int, total_steps: int, args: argparse.Namespace) -> float:
    """Warmup-stable-decay: linear warmup over --warmup-steps, --muon-lr until the last --cooldown fraction of
    total_steps, then linear decay to zero. (A second epoch, a larger total, returns to the stable lr.)"""
    if step < args.warmup_steps:
        return args.muon_lr * (step + 1) / args.warmup_steps
    decay_start = total_steps * (1 - args.cooldown)
    if step < decay_start:
        return args.muon_lr
    return args.muon_lr * max(0.0, (total_steps - step) / max(1.0, total_steps - decay_start))


def make_optimizer(model: GPT, args: argparse.Namespace, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D parameters only (not on biases and LayerNorms); fused on CUDA. (The modern
    recipe: make_modern_optimizer below.)"""
    if model.config.recipe == "modern":
        return make_modern_optimizer(model, args, device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))


def get_lr(step: int, total_steps: int, args: argparse.Namespace, join: tuple[int, float] | None = None) -> float:
    """Linear warmup, then cosine decay to 10% of --lr at total_steps (and 10% after); the modern recipe: wsd_lr.
    join = (step, lr): a run continued on a longer schedule ramps linearly from the lr it ended with to this
    schedule over --warmup-steps."""
    min_lr = 0.1 * args.lr
    if getattr(args, "recipe", "classic") == "modern":
        lr = wsd_lr(step, total_steps, args)
    elif step < args.warmup_steps:
        lr = args.lr * (step + 1) / args.warmup_steps
    elif step >= total_steps:
        lr = min_lr
    else:
        progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
        lr = min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - min_lr)
    if join is not None and join[0] <= step < join[0] + args.warmup_steps:
        lr = join[1] + (lr - join[1]) * (step - join[0] + 1) / args.warmup_steps
    return lr


def schedule_join(ckpt: dict, total_steps: int, steps_per_epoch: int,
                  args: argparse.Namespace) -> tuple[int, float] | None:
    """Where a resumed run's lr schedule changed (a larger --epochs after the end of a run): (step, the lr it last
    trained with), for get_lr's ramp; a ramp still under way continues. None when the schedule is the same."""
    step, old = ckpt["step"], argparse.Namespace(**ckpt["config"])
    old_join = tuple(ckpt["lr_join"]) if ckpt.get("lr_join") else None
    old_total = ckpt.get("total_steps") or max(1, round(old.epochs * steps_per_epoch))
    if old_total == total_steps:
        return old_join
    last_lr = get_lr(step - 1, old_total, old, old_join)
    return (step, last_lr) if step > 0 and not math.isclose(last_lr, get_lr(step, total_steps, args)) else None


# ----------------------------------------------------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def val_loss(model: nn.Module, loader: ShardLoader, steps: int, accum: int, rank: int, world_size: int,
             batch_size: int, device: str, autocast) -> float:
    """Mean loss over the first `steps` val batches of the training batch shape (so a compiled model does not
    recompile); the sequences are split over the ranks like a training step, and the result all-reduced."""
    total = torch.zeros((), device=device)
    for step in range(steps):
        for micro in range(accum):
            x, y = loader.batch(step, micro, rank, world_size, batch_size, device)
            with autocast:
                _, loss = model(x, y)
            total += loss.float()
    if world_size > 1:
        dist.all_reduce(total)  # SUM: gloo has no AVG
    return total.item() / (steps * accum * world_size)


SAMPLE_PROMPT = "Hello, I'm a language model,"


def sample_texts(model: GPT, device: str, seed: int, autocast, n: int = 2, max_new_tokens: int = 32) -> list[str]:
    """A few short continuations of SAMPLE_PROMPT from the uncompiled model (varying shapes: no recompiles)."""
    enc = fineweb.get_tokenizer()
    prompt = enc.encode(SAMPLE_PROMPT)
    idx = torch.tensor([prompt] * n, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast:
        new = list(generate(model, idx, min(max_new_tokens, model.config.block_size - len(prompt)), top_k=50,
                            generator=generator))
    rows = torch.cat(new, dim=1).tolist() if new else [[] for _ in range(n)]
    return [enc.decode(prompt + row) for row in rows]


# ----------------------------------------------------------------------------------------------------------------------
# run plumbing: devices, processes, logs, signals

def print0(*args, **kwargs) -> None:
    """print on the process that logs (rank 0). Output that cannot be written (the terminal of a foreground run went
    away with a dropped SSH, or the disk under a redirected log is full) never stops training: the stream goes to
    /dev/null from then on, and the run's own files and the train.sh log (tee) still say what happened."""
    if int(os.environ.get("RANK", "0")) == 0:
        stream = kwargs.pop("file", None) or sys.stdout
        try:
            print(*args, **kwargs, file=stream, flush=True)
        except OSError:
            # what is still buffered goes there too
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def setup_distributed(device: str) -> tuple[int, int, int, str, bool]:
    """(rank, local rank, world size, device, is_master). Under torchrun: NCCL on CUDA, Gloo elsewhere; the
    device comes from LOCAL_RANK (the process on this node), the data slice from RANK of WORLD_SIZE."""
    device = pick_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # one GPU for each process here
    if "RANK" not in os.environ:
        return 0, 0, 1, device, True
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world, device, rank == 0


class RunLog:
    """LOG_DIR/log.txt (one line per train/val/hella value) and LOG_DIR/metrics.jsonl (one JSON object per event),
    appended, never truncated; optionally Weights & Biases. Only the master process writes."""

    TEXT = {"train": "{step} train {loss:.6f}", "val": "{step} val {loss:.4f}",
            "hellaswag": "{step} hella {acc_norm:.4f}"}

    def __init__(self, log_dir: str, active: bool, wandb_project: str | None, config: dict):
        self.active, self.wandb, self.dir = active, None, Path(log_dir)
        if not active:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if wandb_project:
            try:
                import wandb
                self.wandb = wandb.init(project=wandb_project, config=config, dir=str(self.dir))
            except ImportError:
                raise UserError("--wandb needs the wandb package: pip install wandb") from None

    def close(self) -> None:
        """Flush Weights & Biases (its summary holds each series' last value)."""
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def event(self, event: str, **fields) -> None:
        if not self.active:
            return
        try:
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"event": event, **fields}) + "\n")
            if event in self.TEXT:
                with open(self.dir / "log.txt", "a") as f:
                    f.write(self.TEXT[event].format(**fields) + "\n")
        except OSError as e:
            if not checkpoints.is_disk_full(e):
                raise
            raise UserError(f"disk full: cannot append to the logs in {self.dir}/ - free some space and rerun "
                            "(--resume auto continues from the last checkpoint saved)") from None
        if self.wandb is not None:
            numbers = {f"{event}/{k}": v for k, v in fields.items() if isinstance(v, (int, float)) and k != "step"}
            if numbers:
                self.wandb.log(numbers, step=fields.get("step"))


STOP = {}  # the signal (SIGTERM, SIGINT or SIGHUP) that asked this rank to stop, set by request_stop
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)  # when ranks got different ones, the first here wins


def request_stop(signum: int, frame) -> None:
    STOP.setdefault("signal", signum)
    signal.signal(signum, signal.SIG_DFL)  # a second one stops at once, without a checkpoint
    print0(f"train_gpt2.py: {signal.Signals(signum).name} - finishing this step, then saving a checkpoint")


class AlreadyFinished(UserError):
    """The checkpoint to continue from has trained every step the options ask for."""


class Diverged(UserError):
    """The loss or the gradient norm of a step is not finite; the step was not taken."""


class Interrupted(Exception):
    """A stop signal during the preflight, which has nothing to save: it ends at once."""


def interrupt(signum: int, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


# ----------------------------------------------------------------------------------------------------------------------
# config

# A preset only changes defaults: an explicit flag always wins. The demo scores no HellaSwag: its 64-token model would
# see a cut context in nearly every example, and the full set takes longer than its training on a CPU.
PRESETS = {
    "demo": dict(data="demo_shards", n_layer=4, n_head=4, n_embd=64, batch_size=8, seq_len=64, total_batch_size=512,
                 epochs=0.25, lr=1e-2, warmup_steps=20, eval_every=50, val_steps=4, hellaswag_every=0,
                 sample_every=100, checkpoint_every=100, log_dir="log/demo")}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                epilog="Defaults reproduce GPT-2 124M on FineWeb-Edu 10B tokens.")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="demo: a small model on demo_shards/ (fineweb.py --demo), CPU, 2 minutes; sets defaults only")
    # data
    p.add_argument("--data", default="edu_fineweb10B", help="folder of token shards from fineweb.py (or llm.c .bin)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence; the model's block_size")
    # model
    p.add_argument("--model", choices=list(MODEL_SIZES), default=None, help="GPT-2 size by depth (default: d12)")
    p.add_argument("--n-layer", type=int, default=None, help="layers (default: from --model)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads (default: from --model)")
    p.add_argument("--n-embd", type=int, default=None, help="embedding width (default: from --model)")
    p.add_argument("--recipe", choices=list(RECIPES), default="classic",
                   help="classic: GPT-2 with AdamW and cosine lr; modern: rotary, RMSNorm, QK-norm, ReLU², untied "
                        "head, Muon + AdamW, warmup-stable-decay lr (class ModernGPT)")
    # optimisation
    p.add_argument("--batch-size", type=int, default=64, help="sequences per micro-batch and process; lower it on OOM")
    p.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step (by accumulation)")
    p.add_argument("--epochs", type=float, default=1.0,
                   help="passes over the training shards that the lr schedule spans (a fraction trains on part)")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps, the schedule unchanged (0 = run all --epochs)")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate; cosine decay to 10%% of it")
    p.add_argument("--warmup-steps", type=int, default=715, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on 2-D parameters")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0 = off)")
    p.add_argument("--muon-lr", type=float, default=0.02, help="modern: Muon lr of the blocks' matrices (the "
                   "logged lr; --lr and --weight-decay are classic's)")
    p.add_argument("--embed-lr", type=float, default=0.3, help="modern: AdamW lr of the token embedding")
    p.add_argument("--head-lr", type=float, default=0.008, help="modern: AdamW lr of the head and the RMSNorm gains")
    p.add_argument("--cooldown", type=float, default=0.4,
                   help="modern: the last fraction of the steps, over which the lr decays linearly to zero")
    p.add_argument("--seed", type=int, default=1337, help="seed for the weights and the data order")
    # evaluation and logs
    p.add_argument("--eval-every", type=int, default=250, help="val loss every N steps (0 = off)")
    p.add_argument("--val-steps", type=int, default=20, help="val batches of --total-batch-size tokens each")
    p.add_argument("--hellaswag-every", type=int, default=250, help="HellaSwag accuracy every N steps (0 = off)")
    p.add_argument("--hellaswag-data", default=None,
                   help="hellaswag_val.jsonl (default: hellaswag.py's location, downloaded if missing)")
    p.add_argument("--sample-every", type=int, default=250, help="print a few samples every N steps (0 = off)")
    p.add_argument("--log-dir", default="log", help="checkpoints, log.txt and metrics.jsonl")
    p.add_argument("--wandb", default=None, help="also log to this Weights & Biases project (needs wandb)")
    # checkpoints
    p.add_argument("--checkpoint-every", type=int, default=1000, help="save a checkpoint every N steps and at the end")
    p.add_argument("--keep-checkpoints", type=int, default=3,
                   help="keep only the newest N checkpoints, and the last of each --epochs schedule (0 = keep all)")
    p.add_argument("--resume", default="auto", help="auto (newest valid checkpoint in --log-dir), a path, or none")
    p.add_argument("--init-from", default=None, help="a new run from these weights (step 0, fresh optimizer): a "
                   "checkpoint of train_gpt2.py, build-nanogpt or nanoGPT, gpt2 ... gpt2-xl or a Hugging Face folder")
    # hardware
    add_device_option(p)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off elsewhere)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="bfloat16: autocast the forward passes (default on CUDA); float32 (default elsewhere)")
    # preflight
    p.add_argument("--preflight", action=argparse.BooleanOptionalAction, default=False,
                   help="instead of training: check data, steps, evals, checkpoint and disk at the real shapes, "
                        "estimate time and cost, write LOG_DIR/preflight.json; exit 1 if a check fails")
    p.add_argument("--preflight-steps", type=int, default=4, help="optimizer steps the preflight runs (2+)")
    p.add_argument("--print-paths", action="store_true",
                   help="print the log dir, the data dir, the HellaSwag file (empty when off), the preset and "
                        "--device as these options resolve them, one a line, and exit (train.sh asks)")
    p.add_argument("--gpu-hour-price", type=float, default=float(os.environ.get("GPU_HOUR_PRICE") or 0) or None,
                   help="price of one GPU-hour, for the preflight's cost estimate (default: $GPU_HOUR_PRICE)")

    # the preset first: its values become defaults, so explicit flags win
    known, _ = p.parse_known_args(argv)
    preset = dict(PRESETS.get(known.preset, {}))
    if known.model is not None:  # an explicit --model beats the preset's width and depth
        preset = {k: v for k, v in preset.items() if k not in ("n_layer", "n_head", "n_embd")}
    p.set_defaults(**preset)
    args = p.parse_args(argv)
    for key, value in zip(("n_layer", "n_head", "n_embd"), MODEL_SIZES[args.model or "d12"]):
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    dims = (args.n_layer, args.n_head, args.n_embd)
    args.model = next((name for name, d in MODEL_SIZES.items() if d == dims), "custom")
    return args


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """UserError for settings that cannot train."""
    for key in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "total_batch_size", "val_steps",
                "checkpoint_every", "warmup_steps"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.recipe == "modern" and args.n_embd // args.n_head % 2:
        raise UserError(f"--recipe modern needs an even head size for its rotary positions, but --n-embd {args.n_embd} "
                        f"/ --n-head {args.n_head} = {args.n_embd / args.n_head:g} - change one")
    if min(args.muon_lr, args.embed_lr, args.head_lr) <= 0 or not 0 <= args.cooldown <= 1:
        raise UserError("--muon-lr, --embed-lr and --head-lr must be positive, --cooldown between 0 and 1")
    if not (0 < args.epochs < math.inf and 0 < args.lr < math.inf and 0 <= args.grad_clip < math.inf) or \
            min(args.max_steps, args.keep_checkpoints, args.eval_every, args.hellaswag_every, args.sample_every) < 0:
        raise UserError(f"--epochs and --lr must be positive numbers (got {args.epochs}, {args.lr}), --grad-clip >= 0 "
                        f"(got {args.grad_clip}; 0 = off); --max-steps, --keep-checkpoints, --*-every must be >= 0")
    if args.preflight_steps < 2:
        raise UserError(f"--preflight-steps must be at least 2 (the first one compiles), got {args.preflight_steps}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    per_step = args.batch_size * args.seq_len * world_size  # tokens of one micro-step, all processes
    if args.total_batch_size % per_step:
        raise UserError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size x --seq-len x "
                        f"processes = {args.batch_size} x {args.seq_len} x {world_size} = {per_step}; change one")


# ----------------------------------------------------------------------------------------------------------------------
# training

@dataclass
class Run:
    """What the parts of one training run share, and its three actions: an optimizer step, the evals, a checkpoint.
    `model` is what trains (compiled and/or DDP-wrapped), `compiled` what validates at the training shape, `raw` the
    plain GPT that samples, scores HellaSwag and is saved."""
    args: argparse.Namespace
    rank: int
    world: int
    device: str
    autocast: object  # a torch.autocast context (bf16 on CUDA) or nullcontext
    train_data: ShardLoader
    val_data: ShardLoader
    val_steps: int
    accum: int  # micro-steps per optimizer step on each process
    total_steps: int  # the steps the lr schedule spans (all --epochs)
    last_step: int  # where this run stops (--max-steps, or total_steps)
    raw: GPT
    compiled: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    log: RunLog
    hellaswag_examples: list | None = None
    step: int = 0  # optimizer steps done
    last_val: float | None = None  # the latest val loss, measured at step last_val_step (this run or before)
    last_val_step: int | None = None
    dt_avg: float | None = None  # seconds per step, smoothed, for the eta
    lr_join: tuple[int, float] | None = None  # (step, lr) where a longer schedule began: get_lr ramps from there
    resumed: Path | None = None  # the checkpoint this run continued from
    saved: Path | None = None  # the last checkpoint this run saved

    def train_step(self) -> int:
        """One optimizer step at self.step, as in the lecture: the micro-steps (batch, forward under autocast,
        backward), clipping, optimizer.step(); then its log line. Returns the stop signal the ranks agreed on (0:
        none). A non-finite loss or gradient norm stops the run before the step, so the weights stay finite."""
        t0, step, args = time.time(), self.step, self.args
        lr = get_lr(step, self.total_steps, args, self.lr_join)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            x, y = self.train_data.batch(step, micro, self.rank, self.world, args.batch_size, self.device)
            if self.world > 1:  # all-reduce the gradients only after the last micro-step
                self.model.require_backward_grad_sync = micro == self.accum - 1
            with self.autocast:
                _, loss = self.model(x, y)
            loss = loss / self.accum  # backward() sums the gradients; we want the mean
            loss_sum += loss.detach()
            loss.backward()
        # --grad-clip 0: the norm is measured, the gradient left as it is
        norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), args.grad_clip or math.inf)
        loss, norm, stop = self.sync(loss_sum, norm)
        # the modern recipe's groups each scale the lr (lr_scale); classic's have none
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.log_step(loss, norm, lr, t0)
        return stop

    def sync(self, loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, float, int]:
        """The step's one host sync, before the optimizer step: (loss, gradient norm, stop signal), the same on every
        rank. Diverged (a UserError) when the loss or the norm is not finite: nothing non-finite reaches the weights."""
        # the stop signals each rank received, one count per kind, summed over the ranks with the loss and norm
        asked = [float(STOP.get("signal") == s) for s in STOP_SIGNALS]
        stats = torch.cat([torch.stack([loss.float(), norm.float()]), torch.tensor(asked, device=self.device)])
        if self.world > 1:
            dist.all_reduce(stats)  # summed over ranks: a stop on any rank stops all at this step, with one signal
        loss, norm, *counts = stats.tolist()
        loss, norm = loss / self.world, norm / self.world  # every rank clipped the same all-reduced gradient
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.log.event("end", step=self.step, status="diverged")
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
            raise Diverged(f"{what} is {value} at step {self.step} - training diverged, stopped before the weights "
                           f"took it; {checkpoints.after_divergence(self.saved, self.resumed)}")
        return loss, norm, next((int(s) for s, n in zip(STOP_SIGNALS, counts) if n), 0)

    def log_step(self, loss: float, norm: float, lr: float, t0: float) -> None:
        """The step's line on the terminal and in the logs (t0: when the step began)."""
        step, args, world = self.step, self.args, self.world
        dt = time.time() - t0
        # seconds per step for the eta: a moving average from step 3 on (the first steps compile)
        self.dt_avg = dt if self.dt_avg is None or step < 3 else 0.9 * self.dt_avg + 0.1 * dt
        eta = timedelta(seconds=int(self.dt_avg * max(0, self.last_step - step - 1)))
        tok_s, peak = args.total_batch_size / dt, peak_flops(self.device)
        flops_s = flops_per_token(self.raw.config, self.raw.num_params(True)) * tok_s
        mfu = flops_s / (peak * world) if peak else None
        epoch = step / self.train_data.steps_per_epoch
        # the preflight of a run near its end may step past it
        of = f"/{self.last_step}" if step < self.last_step else " (past the run's last step)"
        print0(f"step {step:5d}{of} | loss {loss:.6f} | lr {lr:.2e} | norm {norm:.4f} | "
               f"{dt * 1000:.0f} ms | {tok_s:,.0f} tok/s | mfu {'-' if mfu is None else f'{mfu:.1%}'} | "
               f"epoch {epoch:.3f} | eta {eta}")
        self.log.event("train", step=step, loss=loss, lr=lr, norm=norm, dt_ms=dt * 1000, tok_per_s=tok_s, mfu=mfu,
                       epoch=epoch, tokens=(step + 1) * args.total_batch_size, time=time.time())

    def evaluate(self, step: int) -> None:
        """Val loss, HellaSwag and samples at the steps their --*-every asks for, and at the last step."""
        args = self.args
        due = lambda every: every > 0 and (step % every == 0 or step == self.last_step)  # noqa: E731
        if due(args.eval_every) and self.val_steps:
            self.last_val = val_loss(self.compiled, self.val_data, self.val_steps, self.accum, self.rank,
                                     self.world, args.batch_size, self.device, self.autocast)
            self.last_val_step = step
            print0(f"step {step:5d} | val loss {self.last_val:.4f}")
            self.log.event("val", step=step, loss=self.last_val)
        if due(args.hellaswag_every) and self.hellaswag_examples:
            dtype = torch.bfloat16 if args.dtype == "bfloat16" else None  # the ending losses are fp32 either way
            result = hellaswag.evaluate(self.raw, self.hellaswag_examples, self.device, rank=self.rank,
                                        world_size=self.world, autocast_dtype=dtype)
            block = self.raw.config.block_size
            n = hellaswag.cut_notice(result["cut"], result["n"], block) or f"{result['n']} examples"
            print0(f"step {step:5d} | HellaSwag acc_norm {result['acc_norm']:.4f} ({n})")
            self.log.event("hellaswag", step=step, acc=result["acc"], acc_norm=result["acc_norm"], n=result["n"],
                           cut=result["cut"])
        if due(args.sample_every) and self.rank == 0:
            for text in sample_texts(self.raw, self.device, args.seed + step, self.autocast):
                print0(f"sample: {text!r}")
                self.log.event("sample", step=step, text=text)

    def save(self, path: Path | None = None) -> None:
        """Rank 0 saves everything an exact resume needs; the others wait until it is written. A path other than the
        step's model_*.pt (the preflight's) rotates nothing."""
        keep, step_file = self.args.keep_checkpoints if path is None else 0, path is None
        path = path or Path(self.args.log_dir) / f"model_{self.step:05d}.pt"
        if self.rank == 0:
            step, per_epoch = self.step, self.train_data.steps_per_epoch
            cuda = self.device.startswith("cuda")
            checkpoints.save_checkpoint(path, {
                "model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step,
                "epoch": step // per_epoch, "loader": {"epoch": step // per_epoch, "step": step % per_epoch,
                                                       "steps_per_epoch": per_epoch},
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
                "config": vars(self.args), "model_config": asdict(self.raw.config), "val_loss": self.last_val,
                "val_step": self.last_val_step,
                "total_steps": self.total_steps, "lr_join": self.lr_join, "final": step == self.total_steps}, keep)
            print0(f"saved {path}")
            self.log.event("checkpoint", step=step, path=str(path))
        if self.world > 1:
            dist.barrier()  # nobody exits while rank 0 is still writing
        if step_file:  # where a diverged run resumes (checkpoints.after_divergence)
            self.saved = path


def open_data(args: argparse.Namespace, vocab_size: int) -> tuple[ShardLoader, ShardLoader, int]:
    """The train and val loaders of --data, and the val steps there is data for; UserError when it cannot train."""
    if not Path(args.data).is_dir():
        raise UserError(f"no data folder {Path(args.data).absolute()}/ - run python fineweb.py (or fineweb.py --demo "
                        "for demo_shards/)")
    if unfinished := fineweb.unfinished_prep(args.data):
        raise UserError(unfinished)
    seqs_per_step = args.total_batch_size // args.seq_len
    train_data = ShardLoader(args.data, "train", args.seq_len, seqs_per_step, args.seed, vocab_size=vocab_size)
    if train_data.steps_per_epoch == 0:
        what = "no training shards"
        if train_data.shards:
            what = f"only {train_data.n_seqs * args.seq_len:,} tokens in training shards"
        raise UserError(f"{Path(args.data).absolute()}/ has {what}, less than one step of --total-batch-size "
                        f"{args.total_batch_size} - "
                        "run fineweb.py to write shards, or lower --total-batch-size")
    val_data = ShardLoader(args.data, "val", args.seq_len, seqs_per_step, args.seed, shuffle=False,
                           vocab_size=vocab_size)
    val_steps = min(args.val_steps, val_data.steps_per_epoch)
    if args.eval_every and not val_steps:
        print0(f"train_gpt2.py: notice: no val shard in {args.data}/ with a full batch - val loss off")
    return train_data, val_data, val_steps


def announce(run: Run, config: GPTConfig, first_step: int) -> None:
    """Print the options and the run's shape (with the other recipe's size for comparison), and log them."""
    args, cuda = run.args, run.device.startswith("cuda")
    print0(f"train_gpt2.py config: {json.dumps(vars(args))}")
    other = next(r for r in RECIPES if r != args.recipe)
    with torch.device("meta"):  # shapes only: no memory, no init
        other_params = build_model(GPTConfig(**{**asdict(config), "recipe": other})).num_params()
    print0(f"{args.recipe} recipe: {run.raw.num_params() / 1e6:.1f}M parameters ({other} at this size: "
           f"{other_params / 1e6:.1f}M) | {run.world} process(es) on {run.device} | {run.accum} micro-steps "
           f"of {args.batch_size} x {args.seq_len} per step | {run.train_data.steps_per_epoch} steps per epoch | "
           f"{run.total_steps} steps scheduled")
    device_name = torch.cuda.get_device_name(run.device) if cuda else run.device
    run.log.event("config", step=first_step, config=vars(args), model_config=asdict(config), world_size=run.world,
                  device=device_name, time=time.time())


def start_run(args: argparse.Namespace) -> Run:
    """Processes, data, model, optimizer and logs of a run, continued from a checkpoint when there is one."""
    check_args(args, int(os.environ.get("WORLD_SIZE", "1")))
    if int(os.environ.get("RANK", "0")) == 0:
        checkpoints.lock_log_dir(args.log_dir)  # before any GPU work: one run per folder, and it can write there
    rank, local_rank, world, device, is_master = setup_distributed(args.device)
    cuda = device.startswith("cuda")
    # bf16 autocast runs the matmuls (TF32 what runs outside it); the weights and optimizer state stay fp32
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    autocast = nullcontext()
    if args.dtype == "bfloat16":
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if cuda:
        torch.set_float32_matmul_precision("high")
    elif args.dtype == "bfloat16":
        print0(f"train_gpt2.py: notice: --dtype bfloat16 on {device} runs about 2x slower than float32 (a demo step on "
               "a 2-core CPU, torch 2.13: 1.2-1.6 s vs 0.72 s) - leave --dtype out for float32")
    # --init-from: (config, weights), and args.n_* take its shape
    init = checkpoints.init_weights(args) if args.init_from else None
    config = init[0] if init else GPTConfig(block_size=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                                            n_embd=args.n_embd, recipe=args.recipe)
    fineweb.agreed_shards(args.data, world)  # under torchrun: every rank sees the shards rank 0 sees
    train_data, val_data, val_steps = open_data(args, config.vocab_size)
    # the lr schedule spans all --epochs; --max-steps may stop the run before its end
    total_steps = max(1, round(args.epochs * train_data.steps_per_epoch))
    last_step = min(total_steps, args.max_steps) if args.max_steps else total_steps

    torch.manual_seed(args.seed)
    ckpt_path, ckpt, skipped = checkpoints.agreed_resume(args, config, rank, world)
    if ckpt is not None and ckpt["step"] >= last_step:  # nothing left to train: said before any GPU work
        raise AlreadyFinished(f"{ckpt_path} already trained step {ckpt['step']} of {last_step} - pass a larger "
                              "--epochs (or --max-steps) to train on, or another --log-dir to start a new run")
    raw = build_model(config)
    if init and ckpt is None:
        raw.load_state_dict(init[1])
    raw = raw.to(device)
    optimizer = make_optimizer(raw, args, device)
    if ckpt is not None:
        checkpoints.restore_state(raw, optimizer, ckpt, cuda)
    if is_master:
        checkpoints.check_free_space(args.log_dir, raw)
    # train and val run the compiled model at one shape; samples and HellaSwag use raw
    use_compile = args.compile if args.compile is not None else cuda
    compiled = torch.compile(raw) if use_compile else raw
    model = compiled
    if world > 1:
        model = nn.parallel.DistributedDataParallel(compiled, device_ids=[local_rank] if cuda else None)
    accum = args.total_batch_size // (args.batch_size * args.seq_len * world)
    log = RunLog(args.log_dir, is_master and not args.preflight, args.wandb, vars(args))
    run = Run(args, rank, world, device, autocast, train_data, val_data, val_steps, accum=accum,
              total_steps=total_steps, last_step=last_step, raw=raw, compiled=compiled, model=model,
              optimizer=optimizer, log=log)
    announce(run, config, ckpt["step"] if ckpt else 0)
    if ckpt is not None:
        resume_notices(run, ckpt_path, ckpt, skipped)
    elif init:
        print0(f"starting from the weights of {args.init_from} at step 0, with a fresh optimizer")
    if args.hellaswag_every and run.step < run.last_step:
        run.hellaswag_examples, why = hellaswag.load_for_training(args.hellaswag_data, world, device)
        if why:
            print0(f"train_gpt2.py: notice: {why} - training without HellaSwag evals")
    return run


# options that change nothing of what trains, so a resume with other values needs no notice
SESSION_OPTIONS = ("resume", "log_dir", "device", "compile", "wandb", "preflight", "preflight_steps", "gpu_hour_price",
                   "hellaswag_data", "keep_checkpoints")


def resume_notices(run: Run, path: Path, ckpt: dict, skipped: list[str]) -> None:
    """Take a resumed checkpoint's step, val loss and lr ramp into the run, and say what happened: which options
    differ from the checkpoint's (they apply from this step on)."""
    run.step, run.last_val, run.last_val_step = ckpt["step"], ckpt.get("val_loss"), ckpt.get("val_step")
    run.resumed = path
    for why in skipped:  # newer checkpoints that are damaged
        if run.rank == 0:
            print(f"train_gpt2.py: warning: {why} - resuming from {path} instead", file=sys.stderr, flush=True)
        run.log.event("resume_fallback", step=run.step, path=str(path), skipped=why)
    print0(f"resuming from {path} at step {run.step}")
    old = ckpt["config"]
    changed = {k: (old[k], v) for k, v in vars(run.args).items()
               if k in old and old[k] != v and k not in SESSION_OPTIONS}
    if changed:
        print0("train_gpt2.py: notice: options changed since that checkpoint, used from this step on: " +
               ", ".join(f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in changed.items()))
        run.log.event("options_changed", step=run.step, changed=changed)
    run.lr_join = schedule_join(ckpt, run.total_steps, run.train_data.steps_per_epoch, run.args)
    if run.lr_join and run.lr_join[0] == run.step:
        to = get_lr(run.step + run.args.warmup_steps - 1, run.total_steps, run.args)
        print0(f"the lr schedule now spans {run.total_steps} steps: ramping the lr from {run.lr_join[1]:.2e} to the "
               f"new schedule ({to:.2e}) over the next {run.args.warmup_steps} steps (--warmup-steps)")
        run.log.event("lr_ramp", step=run.step, lr_from=run.lr_join[1], lr_to=to, steps=run.args.warmup_steps)


def train(args: argparse.Namespace) -> int:
    """Train until the schedule, --max-steps or a stop signal ends it. Returns the exit code."""
    try:
        run = start_run(args)
    except AlreadyFinished as e:
        print0(f"train_gpt2.py: {e}")
        return 0
    start_time = time.time()
    run.raw.train()
    try:
        if run.step == 0:
            run.evaluate(0)
        while run.step < run.last_step:
            stop = run.train_step()
            run.step += 1
            if not stop:  # a stop saves at once: torchrun's grace period is short
                run.evaluate(run.step)
            if run.step % args.checkpoint_every == 0 or run.step == run.last_step or stop:
                run.save()
            if stop and run.step < run.last_step:
                print0(f"train_gpt2.py: stopped at step {run.step}; --resume auto continues from the checkpoint")
                run.log.event("stop", step=run.step, signal=signal.Signals(stop).name)
                run.log.event("end", step=run.step, status="interrupted")
                return 128 + stop
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"CUDA out of memory at --batch-size {args.batch_size} - lower --batch-size (gradient "
                        f"accumulation keeps the total batch at {args.total_batch_size} tokens)") from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):
            raise
        raise UserError(f"out of memory on {run.device} at --batch-size {args.batch_size}: the allocator could not get "
                        "the memory - lower --batch-size (gradient accumulation keeps --total-batch-size)") from None
    finally:
        run.log.close()
        checkpoints.release_log_dirs()
    val = "no val loss measured" if run.last_val is None else f"val loss {run.last_val:.4f} at step {run.last_val_step}"
    print0(f"finished {run.step} steps in {timedelta(seconds=int(time.time() - start_time))}; {val}")
    run.log.event("end", step=run.step, status="finished")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if args.print_paths:
        hella = args.hellaswag_data or hellaswag.CACHE_DIR / "hellaswag_val.jsonl" if args.hellaswag_every else ""
        print(args.log_dir, args.data, hella, args.preset or "", args.device, sep="\n")
        return
    # SIGHUP: the terminal of a foreground run went away. A preflight has nothing to save: it stops at once.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, interrupt if args.preflight else request_stop)
    ok = False
    try:
        code = preflight.preflight(args, start_run) if args.preflight else train(args)
        ok = True
    except UserError as e:
        print(f"train_gpt2.py: {e}", file=sys.stderr)  # one line, as common.fail says it
        code = 1
    except Interrupted as e:
        print0(f"train_gpt2.py: preflight stopped by {e} - nothing was started", file=sys.stderr)
        code = 128 + signal.Signals[str(e)]
    finally:
        checkpoints.release_log_dirs()
    if dist.is_initialized():
        leave_process_group(code, ok)
    sys.exit(code)


if __name__ == "__main__":
    main()
