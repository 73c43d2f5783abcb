"""plots.ipynb: its parsing and plotting functions (the notebook's first code cell), and the notebook run headless."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "plots.ipynb"


@pytest.fixture(scope="module")
def nb() -> dict:
    """The names the notebook's first code cell defines."""
    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    namespace: dict = {}
    exec(compile(cell.source, "plots.ipynb:functions", "exec"), namespace)
    return namespace


def write_log_txt(log_dir: Path, lines: list[str]) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "log.txt").write_text("".join(line + "\n" for line in lines))


def write_metrics(log_dir: Path, records: list[dict], torn_tail: str = "") -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn_tail)


def handmade_run(log_dir: Path, steps: int = 30, mfu: bool = True) -> None:
    """A log dir in the train_gpt2.py format: metrics.jsonl and log.txt."""
    records = [{"event": "config", "step": 0, "config": {"model": "d12"}}]
    lines = []
    for s in range(steps):
        loss = 10.0 - 0.2 * s
        records.append({"event": "train", "step": s, "loss": loss, "lr": 6e-4 * min(1, (s + 1) / 10), "norm": 1.5,
                        "dt_ms": 100.0, "tok_per_s": 5000.0 + s, "mfu": 0.4 if mfu else None, "epoch": 0,
                        "tokens": 1024 * (s + 1), "time": 1.7e9 + s})
        lines.append(f"{s} train {loss:.6f}")
        if s % 10 == 0:
            records += [{"event": "val", "step": s, "loss": loss + 0.1},
                        {"event": "hellaswag", "step": s, "acc": 0.25, "acc_norm": 0.26 + s / 1000, "n": 10042}]
            lines += [f"{s} val {loss + 0.1:.4f}", f"{s} hella {0.26 + s / 1000:.4f}"]
    records.append({"event": "end", "step": steps - 1, "status": "finished"})
    write_metrics(log_dir, records)
    write_log_txt(log_dir, lines)


def test_log_txt_gives_train_val_and_hellaswag_and_a_repeated_step_keeps_its_last_value(nb, tmp_path):
    write_log_txt(tmp_path, ["0 train 10.950000", "0 val 10.9500", "0 hella 0.2500", "1 train 9.500000",
                             "step 2 | loss 9.1 | lr 6e-4", "garbage", "", "1 train 9.400000", "250 val 6.1200"])
    series = nb["parse_log_txt"](tmp_path / "log.txt")
    assert series == {"train": {0: 10.95, 1: 9.4}, "val": {0: 10.95, 250: 6.12}, "hella": {0: 0.25}}


def test_metrics_jsonl_gives_every_series_and_skips_null_mfu_and_a_torn_last_line(nb, tmp_path):
    write_metrics(tmp_path, [
        {"event": "config", "step": 0, "config": {}},
        {"event": "train", "step": 0, "loss": 10.9, "lr": 6e-6, "norm": 12.0, "tok_per_s": 900.0, "mfu": None},
        {"event": "train", "step": 1, "loss": 9.8, "lr": 1.2e-5, "norm": 8.0, "tok_per_s": 1000.0, "mfu": None},
        {"event": "val", "step": 1, "loss": 9.9},
        {"event": "hellaswag", "step": 1, "acc": 0.24, "acc_norm": 0.255, "n": 100},
        {"event": "sample", "step": 1, "text": "Hello"},
        {"event": "checkpoint", "step": 1, "path": "log/model_00001.pt"},
    ], torn_tail='{"event": "train", "step": 2, "lo')
    s = nb["parse_metrics"](tmp_path / "metrics.jsonl")
    assert s["train"] == {0: 10.9, 1: 9.8} and s["val"] == {1: 9.9} and s["hella"] == {1: 0.255}
    assert s["lr"] == {0: 6e-6, 1: 1.2e-5} and s["norm"] == {0: 12.0, 1: 8.0}
    assert s["tok_per_s"] == {0: 900.0, 1: 1000.0} and s["mfu"] == {}


def test_load_run_reads_a_log_txt_only_dir_and_says_when_there_is_no_log(nb, tmp_path):
    write_log_txt(tmp_path / "other", ["0 train 11.0", "10 train 7.0", "5 val 8.0"])
    run = nb["load_run"](tmp_path / "other")
    assert run["name"] == "other" and list(run["train"]) == [0, 10] and run["val"] == {5: 8.0}
    assert run["lr"] == {} and run["mfu"] == {}
    with pytest.raises(FileNotFoundError, match="neither metrics.jsonl nor log.txt"):
        nb["load_run"](tmp_path / "nothing")


def test_smoothing_keeps_a_constant_and_follows_a_step(nb):
    assert nb["smooth"]([3.0] * 5) == pytest.approx([3.0] * 5)
    out = nb["smooth"]([10.0] * 50 + [4.0] * 200)
    assert out[0] == pytest.approx(10.0) and out[-1] == pytest.approx(4.0, abs=1e-6) and out[55] > 4.0


def test_plot_without_mfu_or_hellaswag_still_writes_a_png(nb, tmp_path):
    write_metrics(tmp_path, [{"event": "train", "step": s, "loss": 5.0 - s / 10, "lr": 1e-3, "norm": 1.0,
                              "tok_per_s": 100.0, "mfu": None} for s in range(5)])
    fig = nb["plot_runs"]([nb["load_run"](tmp_path)], tmp_path / "plots.png")
    nb["plt"].close(fig)
    assert (tmp_path / "plots.png").stat().st_size > 10_000
    assert "step 4" in nb["summary"](nb["load_run"](tmp_path))


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def execute_notebook(log_dirs: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LOG_DIR=log_dirs)
    env.pop("DISPLAY", None)
    before = NOTEBOOK.read_bytes()
    r = subprocess.run([str(Path(sys.executable).parent / "jupyter"), "execute", str(NOTEBOOK)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert NOTEBOOK.read_bytes() == before  # executing never writes outputs into the committed notebook
    return r


def test_notebook_runs_headless_on_a_demo_run_and_writes_a_png(demo_run, tmp_path):
    log_dir = tmp_path / "demo"  # the run's logs, copied so the shared fixture stays as it was
    log_dir.mkdir()
    for name in ("log.txt", "metrics.jsonl"):
        shutil.copy(Path(demo_run) / name, log_dir / name)
    r = execute_notebook(str(log_dir), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (log_dir / "plots.png").stat().st_size > 10_000


def test_notebook_overlays_several_comma_separated_log_dirs(tmp_path):
    handmade_run(tmp_path / "epoch1", mfu=False)
    write_log_txt(tmp_path / "epoch2", [f"{s} train {4.0 - s / 100:.6f}" for s in range(30, 60)])
    r = execute_notebook(f"{tmp_path / 'epoch1'},{tmp_path / 'epoch2'}", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "epoch1" / "plots.png").stat().st_size > 10_000
    assert not (tmp_path / "epoch2" / "plots.png").exists()


def test_notebook_with_a_missing_log_dir_fails_with_a_message(tmp_path):
    r = execute_notebook(str(tmp_path / "nope"), tmp_path)
    assert r.returncode != 0 and "neither metrics.jsonl nor log.txt" in r.stderr
