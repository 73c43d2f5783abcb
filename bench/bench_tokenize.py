"""
Tokenizer throughput of fineweb.py on the demo corpus cut into FineWeb-sized documents (~4,500 characters, about
a thousand tokens each), against the common approach (one document per pool task, list -> numpy per document).

    python bench/bench_tokenize.py [--workers N] [--doc-chars 4500] [--repeat 3]

Prints tokens/s in total and per worker process for each approach, and tiktoken's own speed on one thread.
"""

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fineweb  # noqa: E402


def fineweb_sized_docs(doc_chars: int, repeat: int) -> list[str]:
    """The demo corpus as one text, cut into documents of doc_chars (+-50%, deterministic), repeated."""
    text = "\n\n".join(fineweb.demo_documents())
    rng = np.random.default_rng(0)
    docs, i = [], 0
    while i < len(text):
        n = int(doc_chars * rng.uniform(0.5, 1.5))
        docs.append(text[i:i + n])
        i += n
    return docs * repeat


def _common_tokenize(doc: str) -> np.ndarray:
    """What the usual script does: one document per task, its list turned into an array on its own."""
    enc = fineweb.get_tokenizer()
    tokens = [fineweb.EOT]
    tokens.extend(enc.encode_ordinary(doc))
    return np.array(tokens).astype(np.uint16)


def run_common(docs: list[str], workers: int) -> int:
    with mp.get_context("fork").Pool(workers, initializer=fineweb.get_tokenizer) as pool:
        return sum(len(t) for t in pool.imap(_common_tokenize, docs, chunksize=16))


def run_tiktoken_alone(docs: list[str]) -> int:
    """The ceiling for one core: tiktoken's encoder alone, nothing else."""
    enc = fineweb.get_tokenizer()
    return sum(len(enc.encode_ordinary(d)) for d in docs)


def run_ours(docs: list[str], workers: int, batch_docs: int) -> int:
    return sum(len(flat) for flat, _ in fineweb.tokenized_batches(docs, workers, batch_docs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=fineweb.default_workers(), help="tokenizer processes")
    p.add_argument("--doc-chars", type=int, default=4500, help="mean document length in characters")
    p.add_argument("--repeat", type=int, default=3, help="copies of the corpus (longer, steadier timing)")
    p.add_argument("--batch-docs", type=int, default=512, help="documents per task in fineweb.py's pipeline")
    args = p.parse_args()
    fineweb.get_tokenizer()  # load once before forking, as fineweb.py does
    docs = fineweb_sized_docs(args.doc_chars, args.repeat)
    print(f"{len(docs):,} documents of ~{args.doc_chars} chars, {sum(map(len, docs)) / 1e6:.1f}M chars, "
          f"{os.cpu_count()} cores, {args.workers} workers")
    runs = [("tiktoken alone, 1 thread (the ceiling)", lambda: run_tiktoken_alone(docs), 1),
            ("common: 1 doc/task, list->numpy per doc", lambda: run_common(docs, args.workers), args.workers),
            ("fineweb.py, 1 process", lambda: run_ours(docs, 1, args.batch_docs), 1),
            (f"fineweb.py, {args.workers} processes", lambda: run_ours(docs, args.workers, args.batch_docs),
             args.workers)]
    for name, fn, procs in runs:
        t0 = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t0
        print(f"{name:42s} {n / dt / 1e6:6.2f}M tok/s total  {n / dt / procs / 1e6:6.2f}M tok/s per process"
              f"  ({n:,} tokens in {dt:.1f}s)")


if __name__ == "__main__":
    main()
