"""
Exact resume, measured: train_gpt2.py trains N steps in one run (twice, for the run-to-run noise of the device),
and N/2 + N/2 with a stop and a resume from the checkpoint in between; the per-step training losses of the runs
are compared. Each run is its own train_gpt2.py process (the real path: checkpoint written, read back, RNG and
loader state restored), in a temp folder.

    python bench/bench_resume.py --data edu_fineweb10B -- --model d12 --batch-size 16 --total-batch-size 16384
    python bench/bench_resume.py --data demo_shards --steps 6 -- --preset demo          # the CPU demo model

Prints the losses of each run, then the largest difference of the resumed run and of the second uninterrupted run
from the first: a resume that is exact shows no more difference than two uninterrupted runs (on CUDA some kernels
add in a varying order, so even those can differ in the last bits).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(log_dir: Path, max_steps: int, args: argparse.Namespace) -> None:
    cmd = [sys.executable, str(ROOT / "train_gpt2.py"), "--data", args.data, "--log-dir", str(log_dir),
           "--max-steps", str(max_steps), "--recipe", args.recipe, "--eval-every", "0", "--hellaswag-every", "0",
           "--sample-every", "0", "--warmup-steps", "2", *args.train_options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_resume.py: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")


def losses(log_dir: Path) -> dict[int, float]:
    """step -> training loss, from the run's metrics.jsonl (every run that wrote to this log dir)."""
    events = (json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines())
    return {e["step"]: e["loss"] for e in events if e.get("event") == "train"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder of token shards, as train_gpt2.py --data")
    p.add_argument("--steps", type=int, default=8, help="N: optimizer steps of each run (the resume is at N/2)")
    p.add_argument("--recipe", default="classic", choices=["classic", "modern"], help="train_gpt2.py --recipe")
    p.add_argument("train_options", nargs="*", help="train_gpt2.py options for every run (after --)")
    args = p.parse_args()
    half = args.steps // 2
    with tempfile.TemporaryDirectory() as tmp:
        one, again, resumed = Path(tmp, "one"), Path(tmp, "again"), Path(tmp, "resumed")
        train(one, args.steps, args)
        train(again, args.steps, args)
        train(resumed, half, args)
        train(resumed, args.steps, args)  # --resume auto: continues from model_{half}.pt
        runs = {"one run": losses(one), "again": losses(again), "resumed": losses(resumed)}
    print(f"{args.recipe} | {args.steps} steps, resumed at step {half} | train_gpt2.py {' '.join(args.train_options)}")
    for name, run in runs.items():
        print(f"{name:8} " + " ".join(f"{run.get(s, float('nan')):.6f}" for s in range(args.steps)))
    for name in ("again", "resumed"):
        diff = max(abs(runs[name].get(s, float("inf")) - runs["one run"][s]) for s in range(args.steps))
        after = max(abs(runs[name].get(s, float("inf")) - runs["one run"][s]) for s in range(half, args.steps))
        print(f"{name}: largest loss difference from the one run {diff:.3g} (from step {half} on: {after:.3g})"
              f"{' - identical' if diff == 0 else ''}")


if __name__ == "__main__":
    main()
