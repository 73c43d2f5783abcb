"""
What fineweb.py --pretokenized spends on this machine besides the download itself: writing a shard to disk and
checking it (fineweb.check_bin_shard: SHA-256, header, size, every token id). The download cannot be measured from
here (no route to the Hugging Face Hub); on a pod it is the network's speed.

    python bench/bench_data.py [--tokens 100000000] [--dir DIR] [--repeat 2]

Writes one llm.c .bin shard of --tokens random GPT-2 ids (100M: a real shard, 200 MB) into --dir (default: a
temporary folder; give one on the disk you care about, e.g. the pod's volume), then prints MB/s for: writing it
(with fsync), the full check, SHA-256 alone, and the cheap look a rerun gives a finished shard. The file is removed.
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fineweb  # noqa: E402


def write_bin(path: Path, tokens: np.ndarray) -> None:
    """An llm.c shard, written and synced as huggingface_hub's download and fineweb.py's move leave it."""
    header = np.zeros(fineweb.BIN_HEADER_INTS, dtype="<i4")
    header[:3] = [fineweb.BIN_MAGIC, fineweb.BIN_VERSION, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").data)
        f.flush()
        os.fsync(f.fileno())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(fineweb.CHECK_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=100_000_000, help="tokens in the shard (100M: a real one)")
    p.add_argument("--dir", default=None, help="where to write it (default: a temporary folder)")
    p.add_argument("--repeat", type=int, default=2, help="times each step runs; the best time is shown")
    args = p.parse_args()
    tokens = np.random.default_rng(0).integers(0, fineweb.GPT2_VOCAB, args.tokens, dtype=np.uint16)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "finewebedu_train_000001.bin"
        write = min(timed(lambda: write_bin(path, tokens)) for _ in range(args.repeat))
        size = path.stat().st_size
        sha = sha256_of(path)
        check = min(timed(lambda: fineweb.check_bin_shard(path, size, sha)) for _ in range(args.repeat))
        digest = min(timed(lambda: sha256_of(path)) for _ in range(args.repeat))
        look = min(timed(lambda: fineweb._whole(path, size)) for _ in range(args.repeat))
        assert fineweb.check_bin_shard(path, size, sha) is None
        print(f"one shard of {args.tokens:,} tokens ({size / 1e6:.0f} MB) in {folder}, {os.cpu_count()} cores, "
              f"best of {args.repeat}")
        for name, dt in [("write + fsync", write), ("check_bin_shard (SHA-256, header, size, ids)", check),
                         ("SHA-256 alone", digest)]:
            print(f"{name:46s} {size / dt / 1e6:6.0f} MB/s  ({dt * 1000:6.0f} ms)")
        print(f"{'a rerun: its look at a finished shard':46s} {look * 1000:6.2f} ms (header and size only)")
        full = 2 * 9_954_000_000  # FineWeb-Edu 10B's bytes: 100M val + 98 x 100M + 53,989,344 train tokens
        print(f"at these rates, all {full / 1e9:.1f} GB: {full / (size / write):.0f} s to write, "
              f"{full / (size / check):.0f} s to check (each shard checked after its download)")


if __name__ == "__main__":
    main()
