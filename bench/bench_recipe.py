"""
--recipe classic vs --recipe modern on the demo shards: the same model size, seed, batch and number of steps, on CPU.
Each recipe trains in its own train_gpt2.py process (the real training path); the val-loss curves come from their
metrics.jsonl.

    python fineweb.py --demo --out demo_shards && python bench/bench_recipe.py           # the demo preset, 519 steps
    python bench/bench_recipe.py --steps 200 --eval-every 10                              # quicker
    python bench/bench_recipe.py -- --muon-lr 0.03                                        # options for both runs

Prints both val-loss curves, the step at which modern first reaches classic's final val loss (and what fraction of
the steps that is), the training time per step of each, and modern's val loss at classic's whole training time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

import train_gpt2  # noqa: E402


def start(recipe: str, args: argparse.Namespace, log_dir: Path, steps_per_epoch: int) -> subprocess.Popen:
    """Start training one recipe (one thread with --parallel, where both run at once)."""
    cmd = [sys.executable, str(ROOT / "train_gpt2.py"), "--preset", "demo", "--recipe", recipe, "--data", args.data,
           "--log-dir", str(log_dir), "--resume", "none", "--epochs", repr(args.steps / steps_per_epoch),
           "--eval-every", str(args.eval_every), "--val-steps", str(args.val_steps), "--sample-every", "0",
           "--hellaswag-every", "0", "--checkpoint-every", str(10 * args.steps), "--keep-checkpoints", "1",
           "--device", "cpu", "--no-compile", *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.parallel else None
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def finish(recipe: str, proc: subprocess.Popen, log_dir: Path) -> dict:
    """Wait for a run; its val: {step: loss}, dt: [seconds of each step], time: training seconds before each step
    (evals excluded) and its parameter count line."""
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"bench_recipe.py: the {recipe} run failed:\n{out[-1500:]}{err[-1500:]}")
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["loss"] for r in records if r["event"] == "val"}
    dt = [r["dt_ms"] / 1000 for r in records if r["event"] == "train"]
    time = [sum(dt[:i]) for i in range(len(dt) + 1)]  # time[s]: training seconds before step s (evals excluded)
    params = next(line for line in out.splitlines() if " parameters " in line).split(" | ")[0]
    return dict(val=val, dt=dt, time=time, params=params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_shards", help="shards from fineweb.py --demo")
    p.add_argument("--steps", type=int, default=519, help="optimizer steps of each run (the lr schedules span them)")
    p.add_argument("--eval-every", type=int, default=10, help="val loss every N steps")
    p.add_argument("--val-steps", type=int, default=8, help="val batches of 512 tokens")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="train both at once, one thread each, so that on a shared machine both see the same load "
                        "(--no-parallel: one after the other, all threads)")
    p.add_argument("extra", nargs="*", help="after --: more train_gpt2.py options for both runs")
    args = p.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"bench_recipe.py: no {args.data}/ - run python fineweb.py --demo --out {args.data}")
    demo = train_gpt2.get_args(["--preset", "demo"])
    loader = train_gpt2.ShardLoader(args.data, "train", demo.seq_len, demo.total_batch_size // demo.seq_len, 0)
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        procs = {}
        for recipe in ("classic", "modern"):
            procs[recipe] = start(recipe, args, Path(tmp) / recipe, loader.steps_per_epoch)
            if not args.parallel:
                res[recipe] = finish(recipe, procs[recipe], Path(tmp) / recipe)
        for recipe in procs if args.parallel else ():
            res[recipe] = finish(recipe, procs[recipe], Path(tmp) / recipe)
    classic, modern = res["classic"], res["modern"]
    target = classic["val"][max(classic["val"])]
    how = "both at once, one thread each" if args.parallel else "one after the other"
    print(f"demo preset (4 layers, 4 heads, 64 wide, 8 x 64 tokens per step), {args.steps} steps, seed 1337, CPU, "
          f"{how}, torch {torch.__version__}")
    print(modern["params"])
    print(f"{'step':>6} {'classic val':>12} {'modern val':>11}")
    for step in sorted(classic["val"]):
        print(f"{step:6d} {classic['val'][step]:12.4f} {modern['val'].get(step, float('nan')):11.4f}")
    reached = next((s for s in sorted(modern["val"]) if modern["val"][s] <= target), None)
    if reached is None:
        print(f"modern never reached classic's final val loss {target:.4f}")
    else:
        print(f"modern reaches classic's final val loss {target:.4f} at step {reached} of {args.steps} "
              f"({reached / args.steps:.0%} of the steps), after {modern['time'][reached]:.1f} s of training "
              f"vs classic's {classic['time'][-1]:.1f} s")
    ms = {r: statistics.median(res[r]["dt"]) * 1000 for r in res}
    print(f"median step time: classic {ms['classic']:.0f} ms, modern {ms['modern']:.0f} ms "
          f"({ms['modern'] / ms['classic']:.2f}x)")
    budget = classic["time"][-1]
    at = max((s for s in modern["val"] if modern["time"][s] <= budget), default=None)
    if at is not None:
        print(f"at classic's training time ({budget:.1f} s): modern val {modern['val'][at]:.4f} (step {at}) vs "
              f"classic's final {target:.4f}")


if __name__ == "__main__":
    main()
