"""Data prep in a Python without torch (a RunPod image's Python before the setup, or any Python 3.10+ with only the
light packages of requirements.txt): fineweb.py tokenizes and downloads, and hellaswag.py --download fetches its
split, each against its local stand-in. That Python is this one less torch: a venv whose site-packages links to every
package of this one but torch's, so `import torch` fails there as it does where torch was never installed."""

import json
import re
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest
from test_fineweb import DOCS, expected_stream, read_all, write_jsonl
from test_hellaswag import FixtureHandler, make_examples
from test_pretokenized import Hub, env_for, make_files, same_as_hub

import hellaswag

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torchless(tmp_path_factory) -> str:
    """The path of a Python with every package of this one but torch."""
    root = tmp_path_factory.mktemp("torchless")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = str(root / "bin" / "python")
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", where], capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if re.split(r"[-.]", entry.name)[0] not in ("torch", "torchgen", "functorch"):
            (site / entry.name).symlink_to(entry)
    probe = subprocess.run([python, "-c", "import numpy, tqdm; import torch"], capture_output=True, text=True)
    assert probe.stderr.strip().endswith("ModuleNotFoundError: No module named 'torch'"), probe.stderr
    return python


def run(python: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


# --- hellaswag.py ---

@pytest.fixture
def hellaswag_server():
    from http.server import ThreadingHTTPServer
    server = ThreadingHTTPServer(("127.0.0.1", 0), FixtureHandler)
    server.files = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_hellaswag_download_needs_no_torch(torchless, tmp_path, hellaswag_server):
    body = "".join(json.dumps(ex) + "\n" for ex in make_examples(hellaswag.SPLITS["val"][0]))
    hellaswag_server.files["hellaswag_val.jsonl"] = body.encode()
    url = f"http://127.0.0.1:{hellaswag_server.server_address[1]}/data/hellaswag_{{split}}.jsonl"
    cache = tmp_path / "hellaswag"
    r = run(torchless, "hellaswag.py", "--download", "--cache-dir", str(cache), "--url", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"hellaswag.py: {cache / 'hellaswag_val.jsonl'} holds the 10042 examples of the val split\n"
    assert (cache / "hellaswag_val.jsonl").read_bytes() == body.encode()

    hellaswag_server.files.clear()  # a rerun keeps the file it has and asks for nothing
    assert run(torchless, "hellaswag.py", "--download", "--cache-dir", str(cache), "--url", url).stdout == r.stdout


def test_hellaswag_download_that_fails_is_one_line(torchless, tmp_path, hellaswag_server):
    url = f"http://127.0.0.1:{hellaswag_server.server_address[1]}/data/hellaswag_{{split}}.jsonl"
    r = run(torchless, "hellaswag.py", "--download", "--cache-dir", str(tmp_path), "--url", url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("hellaswag.py: could not download HellaSwag (")


def test_hellaswag_scoring_without_torch_is_one_line(torchless, tmp_path):
    data = tmp_path / "hs.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in make_examples(2)))
    r = run(torchless, "hellaswag.py", "--data", str(data), "--device", "cpu")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("hellaswag.py: No module named 'torch' - scoring needs torch: activate the venv (only "
                        "--download works without it)\n")


def test_hellaswag_download_imports_no_torch_where_one_is_installed(tmp_path, hellaswag_server):
    """An image's old torch is never imported for a download (torch 2.1 next to numpy 2 would print pages of
    warnings, if it imported at all)."""
    hellaswag_server.files["hellaswag_val.jsonl"] = b"{}\n"
    url = f"http://127.0.0.1:{hellaswag_server.server_address[1]}/data/hellaswag_{{split}}.jsonl"
    code = ("import sys, hellaswag\n"
            "try:\n"
            f"    hellaswag.main(['--download', '--cache-dir', {str(tmp_path)!r}, '--url', {url!r}])\n"
            "finally:\n"
            "    print('torch imported:', 'torch' in sys.modules)\n")
    r = run(sys.executable, "-c", code)
    assert r.returncode == 1 and "gave 1 examples, expected 10042" in r.stderr  # the download ran
    assert r.stdout == "torch imported: False\n"


# --- fineweb.py ---

def test_fineweb_tokenizes_local_files_without_torch(torchless, tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out"
    r = run(torchless, "fineweb.py", "--dataset", str(src), "--out", str(out), "--shard-size", "200", "--workers", "2",
            env={**env_for("http://127.0.0.1:9", tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_all(out)[1], expected_stream(DOCS))


def test_fineweb_pretokenized_download_needs_no_torch(torchless, tmp_path):
    hub = Hub(make_files())
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "edu_fineweb10B"
        env = env_for(hub.endpoint, tmp_path / "hf")
        r = run(torchless, "fineweb.py", "--pretokenized", "--out", str(out), env=env)
        assert r.returncode == 0, r.stderr
        assert same_as_hub(out, hub, list(make_files()))
    finally:
        hub.release.set()
        hub.shutdown()
        hub.server_close()
