"""
train_gpt2.py --preflight: every part of the real job once, at its real shapes and on its real hardware, before the
hours are paid. A few real optimizer steps (compile, step time, tok/s, MFU, memory), each eval once, a checkpoint of
the real size written and read back, free disk, ranks agreeing; then one screen and LOG_DIR/preflight.json with the
whole run's time and cost. train.sh runs it, attached, before it detaches a run, and starts nothing when a check fails
(./train.sh --no-preflight skips it). Alone: python train_gpt2.py --preflight ..., or torchrun ... train_gpt2.py
--preflight ... with the options of the run it checks.

The screen of a CPU run of the demo preset (python train_gpt2.py --preset demo --preflight --log-dir /tmp/pf_demo
--resume none, after the quickstart; a 2-core machine, no network, so no HellaSwag):

    preflight: custom (3.4M parameters), 1 process(es) on cpu, float32, compile off
      pass  shards      6 shards, 1,063,448 train + 262,144 val tokens; start, middle and end of each read: ...
      pass  train steps 4 steps of 1 x 8 x 64 tokens per process, finite loss
      off   memory      not measured on cpu
      pass  val         val loss 10.4966, as in training, 4.8 s
      off   hellaswag   off: no HellaSwag data, the run trains without it
      pass  sample      with the KV cache, as in training, 10.1 s
      pass  checkpoint  0.04 GB written in 0.2 s (172 MB/s), read back equal, deleted
      pass  disk        65.3 GB free in /tmp/pf_demo/; the run keeps up to 4 checkpoint(s) of 0.04 GB
      figures: compile 0 s | step 2.081 s | tok/s 246 | loader wait 0.1 ms/step | val 4.8 s | checkpoint 0.2 s
      estimate: 519 steps in 0:20:09 (train 0:18:00, val 0:00:57, sample 0:01:10, checkpoints 0:00:01) | ...
    preflight passed - written to /tmp/pf_demo/preflight.json

Each check says pass, FAIL (with the reason and what to do) or off (turned off by an option, or not measurable here):
  shards       reads the start, middle and end of every shard: 1-D uint16, ids below GPT-2's vocabulary
  train steps  real optimizer steps at the run's --batch-size and accumulation, on real batches; the loss is finite
  memory       on a GPU, the peak against the card; when short, it names a --batch-size that should fit
  val, hellaswag, sample
               as training runs them (val through the compiled model)
  checkpoint   one of the real size written into the log dir as preflight_checkpoint.pt (never resumed from), read
               back, compared and deleted
  disk         the free space against the checkpoints the run keeps (--keep-checkpoints)
  ranks agree  with several processes, the parameters of every rank are the same
figures: compile time, seconds and tokens/s per step, MFU on a GPU (against the card's dense bf16 peak, from
model.peak_flops), the time a step waited for data, peak memory, eval and checkpoint times.
estimate: the wall-clock to --max-steps or the end of --epochs from where the run starts (a resumed run counts from
its checkpoint), with its evals and checkpoints; the GPU-hours; the cost with --gpu-hour-price or GPU_HOUR_PRICE set
(GPU_HOUR_PRICE=2.69 ./train.sh). A preflight writes no model_*.pt and no log.txt or metrics.jsonl line;
LOG_DIR/preflight.json holds what the screen shows.

train_gpt2.py hands in its start_run; the Run it returns brings train_step, evaluate and save, so this file
imports nothing of the trainer.
"""

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import fineweb
from checkpoints import read_checkpoint, release_log_dirs
from common import UserError, first_line
from fineweb import GPT2_VOCAB
from model import flops_per_token, peak_flops

PREFLIGHT_CKPT = "preflight_checkpoint.pt"  # not model_*.pt: --resume auto never picks it, rotation never counts it
PREFLIGHT_HELLASWAG = 64  # HellaSwag examples the preflight scores, split over the ranks
SHARD_SAMPLE = 1 << 20  # tokens read from the start, middle and end of each shard


@dataclass
class Preflight:
    """The checks (name, "pass" | "FAIL" | "off", reason) and measured figures of a preflight."""
    checks: list
    figures: dict

    def check(self, name: str, ok: bool | None, reason: str) -> bool:
        self.checks.append((name, "off" if ok is None else "pass" if ok else "FAIL", reason))
        return bool(ok) or ok is None

    def attempt(self, name: str, fn: Callable[[], str]) -> bool:
        """Run fn (which returns the reason it passed); an error a person can act on fails the check."""
        at = len(self.checks)  # checks fn makes come after this one
        try:
            ok, reason = True, fn()
        except torch.cuda.OutOfMemoryError:
            ok, reason = False, (f"CUDA out of memory at --batch-size {self.figures['batch_size']} - "
                                 "lower --batch-size (accumulation keeps --total-batch-size)")
        except (UserError, OSError, RuntimeError) as e:
            ok, reason = False, first_line(e)
        self.checks.insert(at, (name, "pass" if ok else "FAIL", reason))
        return ok


def check_shards(args: argparse.Namespace, pf: Preflight) -> bool:
    """Every shard opens as 1-D uint16, and the tokens read from its start, middle and end are GPT-2 ids."""
    tokens, names = {"train": 0, "val": 0}, []
    for split in tokens:
        for path in fineweb.list_shards(args.data, split):
            try:
                shard = fineweb.read_shard(path)
            except (UserError, OSError, ValueError) as e:
                return pf.check("shards", False, f"{path.name}: {first_line(e)} - rebuild it with fineweb.py")
            for start in sorted({0, max(0, len(shard) // 2 - SHARD_SAMPLE // 2), max(0, len(shard) - SHARD_SAMPLE)}):
                window = np.asarray(shard[start:start + SHARD_SAMPLE])
                if window.size and int(window.max()) >= GPT2_VOCAB:
                    return pf.check("shards", False, f"{path.name} holds token id {int(window.max())}, not below "
                                                     f"GPT-2's {GPT2_VOCAB} - rebuild it with fineweb.py")
            tokens[split] += len(shard)
            names.append(path)
    pf.figures.update(train_tokens=tokens["train"], val_tokens=tokens["val"], shards=len(names))
    return pf.check("shards", bool(tokens["train"]),
                    f"{len(names)} shards, {tokens['train']:,} train + {tokens['val']:,} val tokens; start, middle "
                    f"and end of each read: 1-D uint16, ids < {GPT2_VOCAB}" if tokens["train"] else
                    f"no training shards in {Path(args.data).absolute()}/ - run fineweb.py")


def preflight_steps(run, pf: Preflight) -> str:
    """A few real optimizer steps: compile time, step time, tok/s, MFU, loader wait, peak device memory."""
    args, cuda, times = run.args, run.device.startswith("cuda"), []
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    run.train_data.wait_s = 0.0
    for _ in range(args.preflight_steps):
        t0 = time.perf_counter()
        run.train_step()  # ends with the step's one host sync, so the time is the step's
        times.append(time.perf_counter() - t0)
        run.step += 1
    step_s = statistics.median(times[1:])
    tok_s, peak = args.total_batch_size / step_s, peak_flops(run.device)
    pf.figures.update(compile_s=max(0.0, times[0] - step_s), step_s=step_s, tok_per_s=tok_s,
                      mfu=flops_per_token(run.raw.config, run.raw.num_params(True)) * tok_s / (peak * run.world)
                      if peak else None, loader_wait_ms_per_step=1000 * run.train_data.wait_s / len(times))
    if cuda:
        used, total = torch.cuda.max_memory_reserved(run.device), torch.cuda.get_device_properties(run.device)
        pf.figures.update(peak_memory_gb=torch.cuda.max_memory_allocated(run.device) / 1e9,
                          reserved_gb=used / 1e9, device_memory_gb=total.total_memory / 1e9)
        pf.check("memory", used < 0.95 * total.total_memory, memory_advice(run, used, total.total_memory))
    else:
        pf.check("memory", None, f"not measured on {run.device}")
    return f"{len(times)} steps of {run.accum} x {args.batch_size} x {args.seq_len} tokens per process, finite loss"


def memory_advice(run, used: int, total: int) -> str:
    """The peak against the card, and the largest --batch-size that should fit when the headroom is short."""
    state = 16 * run.raw.num_params()  # fp32 weights, gradients and AdamW's two moments
    per_seq = max(1, (used - state) / run.args.batch_size)
    fits = [b for b in range(1, run.accum * run.args.batch_size + 1)
            if run.accum * run.args.batch_size % b == 0 and state + b * per_seq < 0.9 * total]
    text = f"peak {used / 1e9:.1f} GB reserved of {total / 1e9:.1f} GB, headroom {(total - used) / 1e9:.1f} GB"
    if used >= 0.9 * total:
        text += f" - short: --batch-size {max(fits) if fits else 1} should fit"
    return text


def timed_eval(run, name: str, key: str, examples: list, pf: Preflight) -> str:
    """One eval as training runs it (Run.evaluate with only this one due), timed; val twice when compiled, as its
    first call compiles. Returns what it measured."""
    others = {k: 0 for k in ("eval_every", "hellaswag_every", "sample_every") if k != key}
    view = replace(run, args=argparse.Namespace(**{**vars(run.args), **others}), last_step=run.step,
                   hellaswag_examples=examples)
    times = []
    for _ in range(2 if name == "val" and run.compiled is not run.raw else 1):
        t0 = time.perf_counter()
        view.evaluate(run.step)
        times.append(time.perf_counter() - t0)
    pf.figures[f"{name}_s"] = times[-1]
    what = {"val": f"val loss {view.last_val or 0:.4f}", "sample": "with the KV cache",
            "hellaswag": f"{len(examples)} examples over {run.world} rank(s)"}[name]
    first = f" ({times[0]:.1f} s the first time: it compiles)" if len(times) > 1 else ""
    return f"{what}, as in training, {times[-1]:.1f} s{first}"


def preflight_evals(run, pf: Preflight) -> None:
    """Val loss (through the compiled model), HellaSwag on a few examples split over the ranks, and samples."""
    examples = (run.hellaswag_examples or [])[:PREFLIGHT_HELLASWAG]
    for name, key in (("val", "eval_every"), ("hellaswag", "hellaswag_every"), ("sample", "sample_every")):
        if not getattr(run.args, key) or name == "val" and not run.val_steps:
            pf.check(name, None, f"off (--{key.replace('_', '-')} 0, or no val shard)")
        elif name == "hellaswag" and not examples:
            pf.check(name, None, "off: no HellaSwag data, the run trains without it")
        else:
            pf.attempt(name, lambda: timed_eval(run, name, key, examples, pf))  # noqa: B023 (called at once)
    if "hellaswag_s" in pf.figures:
        pf.figures["hellaswag_examples_per_s"] = len(examples) / pf.figures["hellaswag_s"]


def same(a, b) -> bool:
    """Whether two checkpoint values (nested dicts / lists of tensors and plain data) are equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def preflight_checkpoint(run, pf: Preflight) -> str:
    """Rank 0 writes a checkpoint of the real size into the log dir, times it, reads it back, compares, deletes it;
    then the free space against the checkpoints the run keeps."""
    args, path = run.args, Path(run.args.log_dir) / PREFLIGHT_CKPT
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        replace(run, world=1).save(path)  # world=1: the barrier is the preflight's, so no rank waits alone
        save_s, size = time.perf_counter() - t0, path.stat().st_size
        back = read_checkpoint(path)
        if not (same(back["model"], run.raw.state_dict()) and same(back["optimizer"], run.optimizer.state_dict())):
            raise UserError(f"{path} read back differs from what was saved - check the volume")
    finally:
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
    pf.figures.update(checkpoint_gb=size / 1e9, checkpoint_save_s=save_s)
    return f"{size / 1e9:.2f} GB written in {save_s:.1f} s ({size / 1e6 / save_s:.0f} MB/s), read back equal, deleted"


def check_disk(run, pf: Preflight, start: int) -> bool:
    """Free space in the log dir against the checkpoints the run keeps (--keep-checkpoints and the final one)."""
    args, size = run.args, pf.figures["checkpoint_gb"] * 1e9
    saves = (run.last_step - start) // args.checkpoint_every + 1
    kept = min(args.keep_checkpoints + 1, saves) if args.keep_checkpoints else saves
    free = shutil.disk_usage(args.log_dir).free
    return pf.check("disk", free > kept * size, f"{free / 1e9:.1f} GB free in {args.log_dir}/; the run keeps up to "
                                                f"{kept} checkpoint(s) of {size / 1e9:.2f} GB" +
                    ("" if free > kept * size else " - free some space, or lower --keep-checkpoints"))


def ranks_agree(run) -> str:
    """Under DDP: every rank holds the same parameters (per-tensor sums all-gathered and compared)."""
    sums = torch.stack([torch.stack([p.double().sum(), p.double().abs().sum()]) for p in run.raw.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(run.world)]
    dist.all_gather(gathered, sums)
    differ = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
    if differ:
        raise UserError(f"rank(s) {differ} hold parameters that differ from rank 0's after the steps")
    return f"{run.world} ranks hold identical parameters after the steps"


def estimate(run, pf: Preflight, start: int) -> dict:
    """Wall-clock, GPU-hours and cost of the whole run from `start`, from the measured figures."""
    args, f = run.args, pf.figures
    steps = range(start + 1, run.last_step + 1)
    evals = lambda every: every and sum(s % every == 0 or s == run.last_step for s in steps) + (start == 0)  # noqa: E731
    parts = {"train": len(steps) * f.get("step_s", 0) + f.get("compile_s", 0),
             "val": evals(args.eval_every) * f.get("val_s", 0),
             "hellaswag": evals(args.hellaswag_every) * len(run.hellaswag_examples or []) /
             f.get("hellaswag_examples_per_s", float("inf")),
             "sample": evals(args.sample_every) * f.get("sample_s", 0),
             "checkpoints": (len(steps) // args.checkpoint_every + 1) * f.get("checkpoint_save_s", 0)}
    total = sum(parts.values())
    gpu_hours = total * run.world / 3600
    return dict(steps=len(steps), seconds=total, parts=parts, gpu_hours=gpu_hours, gpu_hour_price=args.gpu_hour_price,
                cost=gpu_hours * args.gpu_hour_price if args.gpu_hour_price else None)


def print_preflight(run, pf: Preflight, est: dict | None) -> None:
    """One screen: the checks, the figures, the estimate."""
    f, hms = pf.figures, lambda s: str(timedelta(seconds=int(s)))
    print(f"\npreflight: {run.args.model} ({run.raw.num_params() / 1e6:.1f}M parameters), {run.world} process(es) "
           f"on {f['device_name']}, {run.args.dtype}, compile {'on' if run.compiled is not run.raw else 'off'}")
    for name, status, reason in pf.checks:
        print(f"  {status:4}  {name:11} {reason}")
    shown = [("compile", "compile_s", "{:.0f} s"), ("step", "step_s", "{:.3f} s"), ("tok/s", "tok_per_s", "{:,.0f}"),
             ("MFU", "mfu", "{:.1%}"), ("loader wait", "loader_wait_ms_per_step", "{:.1f} ms/step"),
             ("peak memory", "peak_memory_gb", "{:.1f} GB"), ("val", "val_s", "{:.1f} s"),
             ("HellaSwag", "hellaswag_examples_per_s", "{:.0f} examples/s"),
             ("checkpoint", "checkpoint_save_s", "{:.1f} s")]
    print("  figures: " + " | ".join(f"{label} {fmt.format(f[key])}" for label, key, fmt in shown
                                      if f.get(key) is not None))
    if est is not None:
        parts = ", ".join(f"{k} {hms(v)}" for k, v in est["parts"].items() if v)
        cost = f" | cost {est['cost']:,.2f} at {est['gpu_hour_price']} per GPU-hour" if est["cost"] is not None else \
            " | cost: pass --gpu-hour-price or set GPU_HOUR_PRICE"
        print(f"  estimate: {est['steps']:,} steps in {hms(est['seconds'])} ({parts}) | {est['gpu_hours']:.1f} "
               f"GPU-hours{cost}")
    failed = [name for name, status, _ in pf.checks if status == "FAIL"]
    print(f"preflight {'FAILED: ' + ', '.join(failed) if failed else 'passed'} - written to "
           f"{Path(run.args.log_dir) / 'preflight.json'}")


def preflight(args: argparse.Namespace, start_run: Callable) -> int:
    """--preflight: run every part of the real job once at its real shapes, check it, time it, estimate the whole
    run; print one screen and LOG_DIR/preflight.json. Leaves no checkpoint, log.txt or metrics.jsonl line.
    Returns 1 when a check failed."""
    pf = Preflight([], {"batch_size": args.batch_size})
    if not Path(args.data).is_dir() or not check_shards(args, pf):
        raise UserError(pf.checks[-1][2] if pf.checks else f"no data folder {Path(args.data).absolute()}/ - run "
                        "python fineweb.py")
    if unfinished := fineweb.unfinished_prep(args.data):
        raise UserError(unfinished)
    run = start_run(args)
    start = run.step
    pf.figures.update(steps_per_epoch=run.train_data.steps_per_epoch, total_steps=run.total_steps,
                      world_size=run.world, device_name=torch.cuda.get_device_name(run.device)
                      if run.device.startswith("cuda") else run.device)
    run.raw.train()
    if pf.attempt("train steps", lambda: preflight_steps(run, pf)):
        preflight_evals(run, pf)
        if run.rank == 0 and pf.attempt("checkpoint", lambda: preflight_checkpoint(run, pf)):
            check_disk(run, pf, start)
        if run.world > 1:
            dist.barrier()
            pf.attempt("ranks agree", lambda: ranks_agree(run))
    failed = torch.tensor(sum(status == "FAIL" for _, status, _ in pf.checks), device=run.device)
    if run.world > 1:
        dist.all_reduce(failed)  # every rank reaches this: a rank that failed alone still fails the preflight
    est = estimate(run, pf, start) if "step_s" in pf.figures else None
    if run.rank == 0:
        if failed.item() and not any(status == "FAIL" for _, status, _ in pf.checks):
            pf.check("other ranks", False, f"{int(failed.item())} check(s) failed on other ranks - see their output")
        report = dict(passed=not failed.item(), checks=[dict(zip(("name", "status", "reason"), c)) for c in pf.checks],
                      figures=pf.figures, estimate=est, config=vars(args))
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.log_dir) / "preflight.json").write_text(json.dumps(report, indent=1) + "\n")
        print_preflight(run, pf, est)
    release_log_dirs()
    return 1 if failed.item() else 0
