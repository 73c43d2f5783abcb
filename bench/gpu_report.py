"""
The two Python halves of bench/gpu_check.sh: the synthetic inputs it runs on, and the table it ends with.

    python bench/gpu_report.py data WORK SHARD_TOKENS TRAIN_SHARDS EXAMPLES   # WORK/shards/, WORK/hellaswag.jsonl
    python bench/gpu_report.py table LOGS                                      # the results table from gpu_check's logs

The table is made from the logs alone, so it can be made again anywhere from a copy of them; a part that did not
finish shows the last line it printed.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hellaswag import synthetic_examples  # noqa: E402

import fineweb  # noqa: E402


def make_data(work: Path, n: int, shards: int, examples: int) -> None:
    """Shards of random GPT-2 ids (shard 0: val) and HellaSwag-shaped examples, as gpu_check's runs read them."""
    (work / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(shards + 1):
        fineweb.write_shard(work / "shards" / fineweb.shard_name(i), rng.integers(0, 50257, n, dtype=np.uint16))
    (work / "hellaswag.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in synthetic_examples(examples)))


def num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def failed(logs: Path, part: str) -> str | None:
    """None when the part finished, else what it ended with (its rc file and last line)."""
    rc = (logs / f"{part}.rc").read_text().strip() if (logs / f"{part}.rc").exists() else "not run"
    if rc == "0":
        return None
    log = logs / f"{part}.txt"
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    why = {"124": "timed out", "not run": "not run"}.get(rc, f"exit {rc}")
    return f"**{why}**: {lines[-1][-200:] if lines else 'no output'}"


def preflight_rows(logs: Path, recipe: str) -> list[str]:
    part = f"preflight_{recipe}"
    path = logs / f"{part}.json"
    if not path.exists():
        return [f"| preflight, {recipe}, d12 64 x 1024, compiled | {failed(logs, part) or 'no preflight.json'} |"]
    pf = json.loads(path.read_text())
    f = {k: v for k, v in pf["figures"].items() if v is not None}
    get = lambda key, fmt: num(f.get(key), fmt)  # noqa: E731
    checks = ", ".join(f"{c['name']} {c['status']}" for c in pf["checks"])
    step = (f"{get('tok_per_s', '{:,.0f}')} tok/s, MFU {get('mfu', '{:.1%}')}, {get('step_s', '{:.3f}')} s/step, "
            f"compile {get('compile_s', '{:.0f}')} s, loader wait {get('loader_wait_ms_per_step', '{:.1f}')} ms/step")
    memory = (f"{get('peak_memory_gb', '{:.1f}')} GB allocated, {get('reserved_gb', '{:.1f}')} GB reserved of "
              f"{get('device_memory_gb', '{:.1f}')} GB")
    evals = (f"val {get('val_s', '{:.1f}')} s, HellaSwag {get('hellaswag_examples_per_s', '{:,.0f}')} examples/s, "
             f"samples {get('sample_s', '{:.1f}')} s, checkpoint {get('checkpoint_save_s', '{:.1f}')} s for "
             f"{get('checkpoint_gb', '{:.2f}')} GB")
    return [f"| preflight, {recipe}, d12 64 x 1024, compiled | {'passed' if pf['passed'] else 'FAILED'}: {checks} |",
            f"| {recipe}: training step (preflight, 524,288 tokens a step) | {step} |",
            f"| {recipe}: peak memory (preflight) | {memory} |",
            f"| {recipe}: evals (preflight) | {evals} |"]


def grep_rows(logs: Path, part: str, label: str, pattern: str, row) -> list[str]:
    """One row per match of pattern in the part's log (row(match) -> the row's text), or the failure."""
    text = (logs / f"{part}.txt").read_text(errors="replace") if (logs / f"{part}.txt").exists() else ""
    rows = [f"| {label(m)} | {row(m)} |" for m in re.finditer(pattern, text, re.M)]
    why = failed(logs, part)
    return rows + ([f"| {part} | {why} |"] if why else [])


def table(logs: Path) -> str:
    head = (logs / "machine.txt").read_text().strip() if (logs / "machine.txt").exists() else "unknown machine"
    rows = [f"| what | result ({head}) |", "|---|---|"]
    for recipe in ("classic", "modern"):
        rows += preflight_rows(logs, recipe)
        rows += grep_rows(logs, f"bench_train_{recipe}",
                          lambda m, r=recipe: f"{r}: bench_train.py d12 64 x 1024, compile {m[1]}",
                          r"^compile (on|off)\s*\|\s*([\d.]+) ms/step \|\s*([\d,]+) tok/s \| mfu (\S+) \| peak (.+)$",
                          lambda m: f"{m[3]} tok/s, MFU {m[4]}, {m[2]} ms/step, peak {m[5]} allocated")
    rows += grep_rows(logs, "bench_loss", lambda m: f"loss {m[1]}, d12 64 x 1024 fwd+bwd, compile {m[2]}",
                      r"^loss (\w+)\s*\| compile (on|off)\s*\|\s*([\d.]+) ms fwd\+bwd \| peak (.+) above",
                      lambda m: f"{m[3]} ms, peak {m[4]} above weights and gradients")
    rows += grep_rows(logs, "bench_infer", lambda m: f"sampling d12, 4 x 256 new tokens, bf16, {m[1]}",
                      r"^(kv cache|full recompute)\s+([\d.]+) s\s+([\d.]+) new tok/s",
                      lambda m: f"{float(m[3]):,.0f} new tok/s ({m[2]} s)")
    rows += grep_rows(logs, "bench_hellaswag", lambda m: "HellaSwag scoring, d12, bf16, batched",
                      r"^batched \((\d+)/forward\)\s+([\d.]+) s\s+([\d.]+) examples/s",
                      lambda m: f"{float(m[3]):,.0f} examples/s: {m[2]} s for the 10,042 examples")
    rows += grep_rows(logs, "bench_resume", lambda m: f"exact resume ({m[1]} vs one run)",
                      r"^(again|resumed): largest loss difference from the one run (.+)$", lambda m: m[2])
    rows += grep_rows(logs, "bench_checkpoint", lambda m: f"checkpoint, d12 + AdamW state, {m[1]}",
                      r"^the kit's path, (\w+): (.+)$", lambda m: m[2])
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "data":
        make_data(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        print(table(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
