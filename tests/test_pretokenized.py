"""fineweb.py --pretokenized: the real huggingface_hub download code against a stand-in of the Hub on 127.0.0.1.

The stand-in answers as the Hub does for what the download asks: the dataset's info with its files' sizes and LFS
SHA-256 (GET /api/datasets/REPO/revision/REV?blobs=true), each file's metadata (HEAD /datasets/REPO/resolve/REV/FILE:
a redirect to another host with X-Repo-Commit, X-Linked-Etag and X-Linked-Size), and the file's bytes from that other
host ("localhost", as the Hub's CDN is not huggingface.co), with Range for a resumed transfer. Errors carry the Hub's
X-Error-Code. It serves four tiny llm.c shards under the dataset's real file names, and can misbehave on demand.
"""

import collections
import errno
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import as_at_a_terminal

import fineweb

ROOT = Path(__file__).resolve().parents[1]
REPO = fineweb.PRETOKENIZED
FIRST, SECOND = "1" * 40, "2" * 40  # two commits of the dataset
VAL, T1, T2, T3 = ("finewebedu_val_000000.bin", "finewebedu_train_000001.bin", "finewebedu_train_000002.bin",
                   "finewebedu_train_000003.bin")
TOKENS = {VAL: 3000, T1: 5000, T2: 5000, T3: 2500}


def bin_shard(tokens: np.ndarray) -> bytes:
    """An llm.c shard: 256 int32 (magic, version, token count, zeros), then the tokens as uint16."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = [fineweb.BIN_MAGIC, fineweb.BIN_VERSION, len(tokens)]
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


def make_files(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {name: bin_shard(rng.integers(0, fineweb.GPT2_VOCAB, n)) for name, n in TOKENS.items()}


def flipped(data: bytes) -> bytes:
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


class Hub(http.server.ThreadingHTTPServer):
    """The stand-in Hub. `commits` maps each commit to its files; "main" is `main`. Misbehaviour, per file name:
    `flips` (times still to serve it with one byte flipped), `served` (other bytes served instead; their size is in
    the resolve headers too when `served_in_headers`), `before_body` (called before its bytes go out), `drops` (times
    still to drop the connection 1 kB before its end), `hold` (its body stops halfway, `reached` is set, and it waits
    for `release`)."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.commits, self.main = {FIRST: dict(files)}, FIRST
        self.flips: collections.Counter = collections.Counter()
        self.drops: collections.Counter = collections.Counter()
        self.served: dict[str, bytes] = {}
        self.served_in_headers = True
        self.before_body: dict[str, object] = {}
        self.hold: str | None = None
        self.reached, self.release = threading.Event(), threading.Event()
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.ranges: list[tuple[str, str]] = []  # (file, Range header) of every ranged request for a file
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def downloads(self) -> collections.Counter:
        """How many times each file's bytes were asked for."""
        with self.lock:
            return collections.Counter(p.rsplit("/", 1)[1] for m, p in self.log if m == "GET" and p.startswith("/cdn/"))


class HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Hub

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer()

    def do_GET(self) -> None:
        self.answer()

    def answer(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        with self.server.lock:
            self.server.log.append((self.command, path))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            self.info(m[1], m[2] or "main", "blobs=true" in url.query.lower())
        elif m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self.resolve(m[1], m[2], m[3])
        elif m := re.fullmatch(r"/cdn/([0-9a-f]{40})/(.+)", path):
            self.cdn(m[1], m[2])
        else:  # e.g. /api/agent-harnesses, which huggingface_hub asks for and does without
            self.send(404, {})

    def send(self, status: int, headers: dict, body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def fail(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self.send(status, {**headers, **({"X-Repo-Commit": commit} if commit else {})},
                  json.dumps({"error": message}).encode())

    def commit(self, repo: str, revision: str) -> str | None:
        """The commit a revision names, or None after answering the Hub's error."""
        if repo != REPO:
            self.fail(404, "RepoNotFound", "Repository not found")
            return None
        commit = self.server.main if revision == "main" else revision
        if commit not in self.server.commits:
            self.fail(404, "RevisionNotFound", "Invalid rev id")
            return None
        return commit

    def info(self, repo: str, revision: str, blobs: bool) -> None:
        if (commit := self.commit(repo, revision)) is None:
            return
        siblings = [{"rfilename": ".gitattributes", **({"size": 2460, "blobId": "a" * 40} if blobs else {})}]
        for name, data in self.server.commits[commit].items():
            lfs = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            meta = {"size": len(data), "blobId": "b" * 40, "lfs": lfs} if blobs else {}
            siblings.append({"rfilename": name, **meta})
        body = {"_id": "0" * 24, "id": REPO, "author": REPO.split("/")[0], "sha": commit, "private": False,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "lastModified": "2024-07-01T00:00:00.000Z", "createdAt": "2024-07-01T00:00:00.000Z"}
        self.send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def resolve(self, repo: str, revision: str, name: str) -> None:
        """An LFS file: a redirect to the CDN, with the file's metadata on the redirect itself."""
        if (commit := self.commit(repo, revision)) is None:
            return
        files = self.server.commits[commit]
        if name not in files:
            self.fail(404, "EntryNotFound", f"{name} does not exist on main", commit)
            return
        data = self.server.served.get(name, files[name]) if self.server.served_in_headers else files[name]
        sha = hashlib.sha256(data).hexdigest()
        self.send(302, {"Location": f"http://localhost:{self.server.server_address[1]}/cdn/{commit}/{name}",
                        "X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                        "ETag": '"' + "c" * 40 + '"'})

    def cdn(self, commit: str, name: str) -> None:
        hub = self.server
        data = hub.served.get(name, hub.commits[commit][name])
        with hub.lock:
            if self.command == "GET" and hub.flips[name] > 0:
                hub.flips[name] -= 1
                data = flipped(data)
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(m[1])
            with hub.lock:
                hub.ranges.append((name, m[0]))
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": f'"{commit}"'}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if self.command == "HEAD":
            self.send(200, headers, b"")  # (Content-Length 0 here is not the file's: nothing asks the CDN HEAD)
            return
        if name in hub.before_body:
            hub.before_body[name]()
        with hub.lock:
            drop = hub.drops[name] > 0
            hub.drops[name] -= drop
        if name != hub.hold and not drop:
            self.send(206 if start else 200, headers, data[start:])
            return
        self.send_response(200)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data[:len(data) - 1024] if drop else data[:len(data) // 2])
            self.wfile.flush()
            if drop:  # the connection breaks: the client has most of the file and a promise of all of it
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            hub.reached.set()
            hub.release.wait(120)
            self.wfile.write(data[len(data) // 2:])
        except OSError:  # the client went away
            pass


@pytest.fixture
def hub():
    server = Hub(make_files())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def env_for(endpoint: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost", **extra}


def fetch(endpoint: str, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """python fineweb.py --pretokenized --out OUT ARGS, against the Hub at `endpoint`."""
    cmd = [sys.executable, str(ROOT / "fineweb.py"), "--pretokenized", "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env_for(endpoint, out.parent / "hf_home", **env))


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("fineweb.py: "), proc.stderr
    return lines[-1]


def shards_in(out: Path) -> list[str]:
    """What training would read."""
    return [p.name for split in ("val", "train") for p in fineweb.list_shards(out, split)]


def copies_of(name: str, out: Path) -> list[Path]:
    """Files in `out` or below that hold bytes of shard `name` (huggingface_hub's empty .lock and small .metadata
    files name it too)."""
    return [p for p in out.rglob(f"{name}*") if p.is_file() and p.suffix not in (".lock", ".metadata")]


def same_as_hub(out: Path, hub: Hub, names: list[str], commit: str = FIRST) -> bool:
    return all((out / n).read_bytes() == hub.commits[commit][n] for n in names)


# ----------------------------------------------------------------------------------------------------------------------
# the checks

def test_check_bin_shard_finds_each_kind_of_damage(tmp_path):
    rng = np.random.default_rng(1)
    good = bin_shard(rng.integers(0, fineweb.GPT2_VOCAB, 3000))
    path = tmp_path / T1

    def check(data: bytes, listed: bytes = good) -> str | None:
        path.write_bytes(data)
        return fineweb.check_bin_shard(path, len(listed), hashlib.sha256(listed).hexdigest())

    assert check(good) is None
    assert check(flipped(good)) == "its SHA-256 is not the one the Hub lists"
    assert check(good[:-2]) == f"it has {len(good) - 2:,} bytes, the Hub lists {len(good):,}"
    bad_magic = b"\0\0\0\0" + good[4:]
    assert check(bad_magic, bad_magic) == "it is not an llm.c token shard (bad magic or version in its header)"
    long_count = bin_shard(np.zeros(3001))[:1024] + good[1024:]
    assert check(long_count, long_count) == "its header says 3,001 tokens, which is not its size of 7,024 bytes"
    not_gpt2 = bin_shard(np.r_[rng.integers(0, 100, 2999), 50257])  # listed as it is: only the ids tell
    assert check(not_gpt2, not_gpt2) == "it holds token id 50257, not a GPT-2 id (below 50257)"


def test_max_tokens_picks_the_val_shard_and_the_first_train_shards_that_hold_that_many():
    files = {n: {"size": 1024 + 2 * t} for n, t in TOKENS.items()}
    assert fineweb.pick_files(files, None) == [VAL, T1, T2, T3]
    assert fineweb.pick_files(files, 1) == fineweb.pick_files(files, 5000) == [VAL, T1]
    assert fineweb.pick_files(files, 5001) == [VAL, T1, T2]
    assert fineweb.pick_files(files, 10**12) == [VAL, T1, T2, T3]


def test_huggingface_hubs_per_file_bars_feed_the_one_bar_plain_or_xet():
    """The tqdm class fetch_shard hands huggingface_hub adds each file's bytes written to the one bar over all files,
    from a plain HTTP download and from an Xet one (whose reporter also counts bytes received: not added twice)."""
    import io
    import logging
    import types

    from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter
    from tqdm import tqdm
    bar = tqdm(total=10_000, file=io.StringIO())
    file_bar = fineweb._bar_into(bar)
    with file_bar(total=1000, initial=0, desc="plain", unit="B", unit_scale=True) as plain:  # as http_get makes it
        plain.update(600)
        plain.update_transfer(600)
    assert bar.n == 600
    report = types.SimpleNamespace(total_bytes=1000, total_bytes_completed=300, total_transfer_bytes_completed=250,
                                   total_bytes_completion_rate=None, total_transfer_bytes_completion_rate=None)
    with XetDownloadProgressReporter(reconstruction_desc="xet", total=1000, log_level=logging.INFO,
                                     tqdm_class=file_bar) as xet:
        xet.update_progress(report)
    assert bar.n == 900


def test_training_refuses_a_folder_with_both_kinds_of_shards_in_one_line(tmp_path, hub):
    fineweb.write_shard(tmp_path / fineweb.shard_name(0), np.arange(5))
    fineweb.write_shard(tmp_path / fineweb.shard_name(1), np.arange(5))
    assert shards_in(tmp_path) == ["edufineweb_val_000000.npy", "edufineweb_train_000001.npy"]
    (tmp_path / T2).write_bytes(hub.commits[FIRST][T2])
    for split in ("train", "val"):
        with pytest.raises(fineweb.UserError, match=r"holds both \.npy shards .* and \.bin shards"):
            fineweb.list_shards(tmp_path, split)
    # and neither way of filling a folder writes into one that holds the other kind
    assert "holds shards tokenized by fineweb.py" in one_line_error(fetch(hub.endpoint, tmp_path))
    (tmp_path / fineweb.shard_name(0)).unlink()
    (tmp_path / fineweb.shard_name(1)).unlink()
    docs = tmp_path.parent / "docs.txt"
    docs.write_text("some text\n")
    proc = subprocess.run([sys.executable, str(ROOT / "fineweb.py"), "--dataset", str(docs), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "holds .bin shards downloaded with --pretokenized" in one_line_error(proc)
    assert hub.downloads() == {}


# ----------------------------------------------------------------------------------------------------------------------
# downloads

def test_full_download_checks_every_shard_and_a_rerun_fetches_only_what_went_missing(tmp_path, hub):
    out = tmp_path / "edu_fineweb10B"
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == (f"{out}: 4 shards from {REPO} (revision {FIRST[:12]}), each "
                                                    "checked: 3,000 val tokens and 12,500 train tokens")
    assert shards_in(out) == [VAL, T1, T2, T3] and same_as_hub(out, hub, [VAL, T1, T2, T3])
    assert hub.downloads() == {VAL: 1, T1: 1, T2: 1, T3: 1}
    assert sorted(p.name for p in out.iterdir()) == sorted([fineweb.PRETOKENIZED_STATE, VAL, T1, T2, T3])
    assert json.loads((out / fineweb.PRETOKENIZED_STATE).read_text())["revision"] == FIRST
    assert ("GET", f"/api/datasets/{REPO}") in hub.log  # the first run asks for the newest revision

    requests = len(hub.log)
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0 and f"{out}: already complete (4 shards checked)" in proc.stdout
    assert len(hub.log) == requests  # not one request

    (out / T1).write_bytes((out / T1).read_bytes()[:-100])  # a copy cut short
    (out / T3).unlink()
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0, proc.stderr
    assert f"{out}: 1 finished shards damaged ({T1}); fetching them again" in proc.stdout
    assert hub.downloads() == {VAL: 1, T1: 2, T2: 1, T3: 2}
    assert same_as_hub(out, hub, [VAL, T1, T2, T3])


def test_ctrl_c_midway_keeps_finished_shards_and_the_rerun_never_fetches_them_again(tmp_path, hub):
    out = tmp_path / "out"
    hub.hold = T2
    cmd = [sys.executable, str(ROOT / "fineweb.py"), "--pretokenized", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env_for(hub.endpoint, tmp_path / "hf_home"), start_new_session=True,
                            preexec_fn=as_at_a_terminal)
    try:
        assert hub.reached.wait(120), "the download never reached the third shard"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (f"fineweb.py: interrupted; 2 finished shards kept in {out}. "
                                               "Run the same command again to resume.")
    assert shards_in(out) == [VAL, T1]  # half of T2 came down: nowhere training or a rerun would take it as whole
    assert not copies_of(T2, out)
    # training refuses the half-downloaded folder (it would train on a part, on a shorter schedule)
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt2.py"), "--data", str(out), "--log-dir",
                           str(tmp_path / "log"), "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"train_gpt2.py: the download of {out}/ is unfinished (2 of 4 shards here, as .pretokenized.json says) - "
        f"finish it with: python fineweb.py --pretokenized --out {out}"]

    hub.hold = None
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0, proc.stderr
    assert f"{out}: resuming: 2 of 4 shards already here" in proc.stdout
    assert hub.downloads() == {VAL: 1, T1: 1, T2: 2, T3: 1}
    assert same_as_hub(out, hub, [VAL, T1, T2, T3]) and not (out / fineweb.STAGING).exists()
    assert fineweb.unfinished_prep(out) is None


def test_a_connection_dropped_midway_through_a_shard_resumes_where_it_stopped(tmp_path, hub):
    """huggingface_hub asks for the rest of the file from the last block it wrote (a Range request: its blocks are
    10 MB, so this shard is 24 MB); the shard is whole and passes its check."""
    big = bin_shard(np.random.default_rng(2).integers(0, fineweb.GPT2_VOCAB, 12_000_000))
    hub.commits[FIRST][T2] = big
    hub.drops[T2] = 1
    out = tmp_path / "out"
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0, proc.stderr
    [(name, ranged)] = hub.ranges
    assert name == T2 and 0 < int(ranged.removeprefix("bytes=").removesuffix("-")) < len(big) - 1024
    assert hub.downloads() == {VAL: 1, T1: 1, T2: 2, T3: 1}
    assert same_as_hub(out, hub, [VAL, T1, T2, T3])


def test_a_shard_with_one_flipped_byte_is_deleted_and_fetched_again_once(tmp_path, hub):
    hub.flips[T2] = 1
    out = tmp_path / "out"
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0, proc.stderr
    assert (f"fineweb.py: {T2} failed its check (its SHA-256 is not the one the Hub lists); deleted, fetching it "
            "again") in proc.stderr
    assert hub.downloads() == {VAL: 1, T1: 1, T2: 2, T3: 1}
    assert same_as_hub(out, hub, [VAL, T1, T2, T3])

    hub.flips[T3] = 2  # damaged on the Hub itself: twice, then one line
    out = tmp_path / "out2"
    last = one_line_error(fetch(hub.endpoint, out))
    assert last == (f"fineweb.py: {T3} failed its check twice (its SHA-256 is not the one the Hub lists), so the copy "
                    f"on the Hub looks damaged; nothing of it was kept. Tell the owner of {REPO}, or tokenize "
                    f"FineWeb-Edu yourself: python fineweb.py; 3 finished shards kept in {out}. Run the same command "
                    "again to resume.")
    assert shards_in(out) == [VAL, T1, T2]
    assert not copies_of(T3, out)


@pytest.mark.parametrize("headers", [True, False])
def test_a_file_of_the_wrong_size_is_fetched_again_then_one_line(tmp_path, hub, headers):
    """The file the Hub serves is 2 bytes longer than its listing says: in the size the Hub's headers give too (our
    check catches it), or only in the bytes sent (huggingface_hub's own size check catches it)."""
    hub.served[T1] = hub.commits[FIRST][T1] + b"\0\0"
    hub.served_in_headers = headers
    out = tmp_path / "out"
    last = one_line_error(fetch(hub.endpoint, out))
    size = len(hub.commits[FIRST][T1])
    why = f"it has {size + 2:,} bytes, the Hub lists {size:,}" if headers else \
        f"Consistency check failed: file should be of size {size} but has size {size + 2} ("
    assert last.startswith(f"fineweb.py: {T1} failed its check twice ({why}")
    assert "so the copy on the Hub looks damaged; nothing of it was kept" in last
    assert last.endswith(f"1 finished shards kept in {out}. Run the same command again to resume.")
    assert shards_in(out) == [VAL]
    assert not copies_of(T1, out)
    assert hub.downloads()[T1] == 2


def test_full_disk_found_before_starting(tmp_path, hub):
    """The disk check: the files' real sizes from the Hub against the free space, before any file is fetched."""
    out = tmp_path / "out"
    code = ("import collections, shutil, sys; sys.path.insert(0, sys.argv[1]); import fineweb\n"
            "usage = collections.namedtuple('usage', 'total used free')\n"
            "shutil.disk_usage = lambda path: usage(10**9, 10**9 - 30000, 30000)\n"
            f"fineweb.main(['--pretokenized', '--out', {str(out)!r}])")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=300,
                          env=env_for(hub.endpoint, tmp_path / "hf_home"))
    need = sum(len(d) for d in hub.commits[FIRST].values())
    assert one_line_error(proc) == (f"fineweb.py: not enough disk space: {out} has 30.0 kB free, the 4 shards still "
                                    f"to download need {fineweb._size(need)}; free some space or use a bigger volume")
    assert hub.downloads() == {}


def test_disk_full_midway_on_a_tiny_tmpfs_then_the_rerun_continues(tmp_path, hub):
    """A real full disk: another writer fills a 128 kB tmpfs while the third shard comes down (where this test may
    mount one, as root; skipped elsewhere)."""
    small = tmp_path / "small"
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=128k,nr_inodes=1000", "tmpfs", str(small)]
    mount = subprocess.run(mount, capture_output=True) if os.geteuid() == 0 and shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        pytest.skip("needs root and the right to mount a tmpfs")
    try:
        out = small / "out"

        def fill_the_disk():
            with open(small / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 1024)
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC

        hub.before_body[T2] = fill_the_disk
        last = one_line_error(fetch(hub.endpoint, out))
        assert last.startswith(f"fineweb.py: downloading {T2}: disk full: {out} has ")
        assert last.endswith(f"free; free some space; 2 finished shards kept in {out}. Run the same command again to "
                             "resume.")
        assert shards_in(out) == [VAL, T1]
        assert not copies_of(T2, out)

        (small / "filler").unlink()
        del hub.before_body[T2]
        proc = fetch(hub.endpoint, out)
        assert proc.returncode == 0, proc.stderr
        assert hub.downloads() == {VAL: 1, T1: 1, T2: 2, T3: 1}
        assert same_as_hub(out, hub, [VAL, T1, T2, T3])
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_offline_a_missing_dataset_and_hf_hub_offline_each_get_one_line(tmp_path, hub):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    last = one_line_error(fetch(closed, tmp_path / "o1"))
    assert last.startswith(f"fineweb.py: cannot reach the Hugging Face Hub at {closed} (")
    assert last.endswith("); check the network connection")
    last = one_line_error(fetch(hub.endpoint, tmp_path / "o2", HF_HUB_OFFLINE="1"))
    assert last == "fineweb.py: HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it and run again"
    last = one_line_error(fetch(hub.endpoint, tmp_path / "o3", "--dataset", "someone/renamed-dataset"))
    assert last == ("fineweb.py: dataset someone/renamed-dataset is not on the Hugging Face Hub (renamed, removed or "
                    "private?); give its new name with --dataset, or tokenize FineWeb-Edu yourself: python fineweb.py")
    for o in ("o1", "o2", "o3"):
        assert list((tmp_path / o).iterdir()) == []  # nothing written, so nothing pinned either

    # a network that drops between runs: the rerun says so in one line, and keeps what it has
    out = tmp_path / "o4"
    assert fetch(hub.endpoint, out, "--max-tokens", "1").returncode == 0
    last = one_line_error(fetch(closed, out))
    assert last.startswith(f"fineweb.py: cannot reach the Hugging Face Hub at {closed} (")
    assert shards_in(out) == [VAL, T1]


def test_the_revision_is_pinned_and_max_tokens_grows_the_download(tmp_path, hub):
    out = tmp_path / "out"
    proc = fetch(hub.endpoint, out, "--max-tokens", "5000")
    assert proc.returncode == 0, proc.stderr
    assert shards_in(out) == [VAL, T1] and "3,000 val tokens and 5,000 train tokens" in proc.stdout
    assert fineweb.unfinished_prep(out) is None  # the subset asked for is all there
    (out / T1).unlink()
    assert fineweb.unfinished_prep(out) == (f"the download of {out}/ is unfinished (1 of 2 shards here, as "
                                            f".pretokenized.json says) - finish it with: python fineweb.py "
                                            f"--pretokenized --out {out} --max-tokens 5000")

    hub.commits[SECOND], hub.main = make_files(seed=1), SECOND  # the dataset moves on
    hub.log.clear()
    proc = fetch(hub.endpoint, out)
    assert proc.returncode == 0, proc.stderr
    assert same_as_hub(out, hub, [VAL, T1, T2, T3], commit=FIRST)  # nothing of the new commit mixed in
    resolved = {p.split("/resolve/")[1].split("/")[0] for _, p in hub.log if "/resolve/" in p}
    assert resolved == {FIRST}
    assert all(not p.startswith("/api/datasets/") or p.endswith(f"/revision/{FIRST}") for _, p in hub.log)

    del hub.commits[FIRST]  # the pinned revision is gone: one line, and the folder kept as it is
    (out / T3).unlink()
    last = one_line_error(fetch(hub.endpoint, out))
    assert last == (f"fineweb.py: revision {FIRST} of {REPO}, the one this download started with and pins, is gone "
                    "from the Hub; use another --out to download its newest revision")
    assert shards_in(out) == [VAL, T1, T2]
    assert "(3 of 4 shards here" in fineweb.unfinished_prep(out)


def test_train_gpt2_trains_on_the_downloaded_shards(tmp_path, hub):
    out = tmp_path / "edu_fineweb10B"
    assert fetch(hub.endpoint, out).returncode == 0
    log_dir = tmp_path / "log"
    cmd = [sys.executable, str(ROOT / "train_gpt2.py"), "--data", str(out), "--log-dir", str(log_dir),
           "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
           "--total-batch-size", "256", "--max-steps", "4", "--warmup-steps", "2", "--eval-every", "2",
           "--val-steps", "2", "--hellaswag-every", "0", "--sample-every", "0", "--checkpoint-every", "100",
           "--device", "cpu", "--no-compile"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    vals = [r for r in records if r["event"] == "val"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    assert vals and all(np.isfinite(r["loss"]) for r in vals)
