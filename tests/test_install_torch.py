"""python common.py --install-torch: the torch build picked for each driver, and a real pip install from a stand-in of
PyTorch's index on 127.0.0.1 (PYTORCH_WHL_URL) into a throwaway venv, with the stand-in nvidia-smi on PATH. The torch
installed is a stand-in too: a tiny wheel made here, whose torch.cuda.device_count() is the stand-in's FAKE_GPUS."""

import base64
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from test_gpus import gpu_env, one_line

import common

ROOT = Path(__file__).resolve().parents[1]


# --- which build, for which driver ---

@pytest.mark.parametrize("cuda, build", [
    ("13.0", ("2.13.0", "cu130", 3)),
    ("12.9", ("2.11.0", "cu128", 4)),  # no newer cu129 build than 2.9.1: cu128 is newer
    ("12.8", ("2.11.0", "cu128", 4)),  # 570.195.03, the driver of a RunPod H100 host
    ("12.6", ("2.13.0", "cu126", 3)),
    ("12.4", ("2.6.0", "cu124", 3)),
    ("12.2", ("2.5.1", "cu121", 3)),  # 535
    ("12.0", ("2.7.1", "cu118", 3)),  # 525: no cu120 build; cu118 runs on it
    ("11.8", ("2.7.1", "cu118", 3)),
    ("11.4", None),  # 470: no torch 2.4+
])
def test_the_newest_build_the_drivers_cuda_runs_is_picked(cuda, build):
    assert common.torch_build(cuda) == build


@pytest.mark.parametrize("driver, cuda", [("570.195.03", "12.8"), ("535.183.01", "12.2"), ("525.147.05", "12.0"),
                                          ("470.256.02", "11.4"), ("418.67", None)])
def test_without_cuda_in_nvidia_smis_header_the_drivers_version_tells_it(monkeypatch, driver, cuda):
    for key, value in gpu_env(FAKE_DRIVER=driver, FAKE_CUDA="").items():
        monkeypatch.setenv(key, value)
    assert common.nvidia_driver() == (driver, cuda)


def test_the_index_url_can_be_replaced(monkeypatch):
    monkeypatch.setenv("PYTORCH_WHL_URL", "http://127.0.0.1:8000/whl/")
    assert common.torch_install_command("12.8") == "pip install torch==2.11.0 --index-url http://127.0.0.1:8000/whl/cu128"


# --- the command, end to end ---

def fake_torch_wheel(folder: Path, version: str, cuda: str) -> Path:
    """A wheel of a stand-in torch: its version, the CUDA it was built for, and the GPUs it sees: FAKE_TORCH_SEES, else
    as many as the stand-in nvidia-smi lists (FAKE_GPUS)."""
    info = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": ("import os\nfrom types import SimpleNamespace\n\n"
                              f"__version__ = {version!r}\nversion = SimpleNamespace(cuda={cuda!r})\n"
                              "seen = os.environ.get('FAKE_TORCH_SEES', os.environ.get('FAKE_GPUS', '1'))\n"
                              "cuda = SimpleNamespace(device_count=lambda: int(seen))\n"),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


class Index(http.server.SimpleHTTPRequestHandler):
    """Serves the folder of the stand-in indexes and notes each path asked for."""

    def do_GET(self):
        self.server.asked.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def pytorch_index(tmp_path):
    """A stand-in for PyTorch's indexes (PEP 503 "simple" pages): cu128 and cu126, each holding a stand-in torch of
    the version TORCH_BUILDS names. Yields (its URL, the paths asked for)."""
    for index, version, cuda in (("cu128", "2.11.0+cu128", "12.8"), ("cu126", "2.13.0+cu126", "12.6")):
        folder = tmp_path / "whl" / index / "torch"
        folder.mkdir(parents=True)
        wheel = fake_torch_wheel(folder, version, cuda)
        href = wheel.name.replace("+", "%2B")
        (folder / "index.html").write_text(f'<!DOCTYPE html>\n<a href="{href}">{wheel.name}</a>\n')
    handler = functools.partial(Index, directory=str(tmp_path / "whl"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.asked = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.asked
    server.shutdown()
    server.server_close()


@pytest.fixture
def venv(tmp_path) -> Path:
    """A throwaway venv with pip and no torch: the Python that --install-torch installs into."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    return tmp_path / "venv" / "bin" / "python"


def install_env(url: str, **fake: str) -> dict:
    """The stand-in GPU machine, PyTorch's index at `url`, and a pip that reads no config of this machine's."""
    env = {k: v for k, v in gpu_env(**fake).items() if not k.startswith("PIP_") and "proxy" not in k.lower()}
    return {**env, "PYTORCH_WHL_URL": url, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "NO_PROXY": "127.0.0.1"}


def install_torch(python: Path | str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(ROOT / "common.py"), "--install-torch"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_install_torch_pip_installs_the_build_for_the_driver_and_checks_it_sees_the_gpus(venv, pytorch_index):
    url, asked = pytorch_index
    env = install_env(url, FAKE_GPUS="8")  # the stand-in's H100s on driver 570.195.03, CUDA 12.8
    r = install_torch(venv, env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("common.py: ")]
    assert lines[0] == (f"common.py: driver 570.195.03 runs CUDA 12.8 at most: torch 2.11.0 built for cu128 goes "
                        f"into {venv.parent.parent}, about 4 GB to download (torch and the nvidia-* CUDA libraries "
                        "it needs)")
    assert lines[1] == f"common.py: running {venv} -m pip install torch==2.11.0 --index-url {url}/cu128"
    assert lines[-1] == "common.py: torch 2.11.0+cu128 (CUDA 12.8) sees all 8 GPU(s) of this machine: ready"
    assert "/cu128/torch/" in asked and not any(p.startswith("/cu126") for p in asked)
    installed = subprocess.run([str(venv), "-c", "import torch; print(torch.__file__)"], capture_output=True, text=True)
    assert installed.stdout.startswith(str(venv.parent.parent))  # in the venv, by pip

    asked.clear()  # a second run finds it and installs nothing
    again = install_torch(venv, env)
    assert (again.returncode, again.stderr, asked) == (0, "", [])
    assert again.stdout == ("common.py: torch 2.11.0+cu128 (CUDA 12.8) sees 8 of this machine's 8 GPU(s): nothing to "
                            "install\n")


def test_a_cuda_12_6_driver_gets_the_cu126_build(venv, pytorch_index):
    url, asked = pytorch_index
    r = install_torch(venv, install_env(url, FAKE_DRIVER="560.35.03", FAKE_CUDA="12.6"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == ("common.py: torch 2.13.0+cu126 (CUDA 12.6) sees all 1 GPU(s) of this machine: "
                                         "ready")
    assert "/cu126/torch/" in asked and not any(p.startswith("/cu128") for p in asked)


def test_a_torch_that_sees_fewer_gpus_after_the_install_is_one_line(venv, pytorch_index):
    url, _ = pytorch_index
    r = install_torch(venv, install_env(url, FAKE_GPUS="8", FAKE_TORCH_SEES="0"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == ("common.py: torch 2.11.0+cu128 (CUDA 12.8) is installed but sees 0 of "
                                                 "this machine's 8 GPU(s) - python common.py --check-gpus 8 says why")


# --- the refusals: one line, and pip never runs ---

def test_a_pip_that_fails_is_one_line_after_its_output(venv, pytorch_index):
    url, _ = pytorch_index
    r = install_torch(venv, install_env(url, FAKE_DRIVER="580.65.06", FAKE_CUDA="13.0"))  # no cu130 stand-in index
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (f"common.py: pip could not install torch 2.13.0 from {url}/cu130 (its "
                                                 "output is above)")


def test_a_driver_older_than_cuda_11_8_is_refused_in_one_line_and_nothing_is_installed(pytorch_index):
    url, asked = pytorch_index
    r = install_torch(sys.executable, install_env(url, FAKE_DRIVER="470.256.02", FAKE_CUDA="11.4"))
    if r.returncode == 0:
        pytest.skip(f"this Python's torch sees a GPU: {r.stdout}")
    assert (r.returncode, r.stdout, asked) == (1, "", [])
    assert one_line(r.stderr) == ("common.py: driver 470.256.02 runs CUDA 11.4 at most, and no torch 2.4+ is built for "
                                  "a CUDA older than 11.8 - use a pod with a newer driver")


def test_a_machine_without_nvidia_gpus_installs_nothing(pytorch_index):
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    url, asked = pytorch_index
    for env in (install_env(url, FAKE_GPUS="0"), {**install_env(url), "PATH": os.defpath}):  # nvidia-smi: none, absent
        r = install_torch(sys.executable, env)
        assert (r.returncode, r.stdout, asked) == (1, "", [])
        assert one_line(r.stderr) == ("common.py: this machine has no NVIDIA GPU (nvidia-smi lists none): nothing to "
                                      "install - on a CPU, pip install -r requirements.txt brings torch")
