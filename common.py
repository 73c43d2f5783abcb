"""
What every script of the kit shares: the error type and its one-line exit, the --help formatter, --device, and how a
process leaves a torchrun group. Imports no torch (the functions that need it import it when called), so fineweb.py
can tokenize without it.

--device auto never trains on the CPU of a GPU machine: when nvidia-smi lists GPUs (or /dev/nvidia0 exists) and
torch sees fewer than the processes need, it stops with one line that says why and how to get a torch this driver
runs. train.sh asks the same before it starts anything:

    python common.py --check-gpus N [--device DEVICE] [--name train.sh]   # exit 0, or one line on stderr, exit 2

On a pod whose image has a torch older than 2.4 (RunPod's PyTorch 2.1 and 2.2 templates), or none this driver runs,
one command installs into this Python (the venv) the newest torch built for the driver: it reads the highest CUDA
the driver runs from nvidia-smi, picks the build (TORCH_BUILDS), says what it downloads (about 3-4 GB), runs pip
with PyTorch's index for that build, and checks in a fresh process that the new torch sees the GPUs:

    python common.py --install-torch    # nothing to install when a torch 2.4+ here sees the GPUs already

PYTORCH_WHL_URL replaces https://download.pytorch.org/whl, the folder of PyTorch's indexes (a mirror; tests).
"""

import argparse
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NoReturn


class UserError(ValueError):
    """A problem the person running the script can fix, in one line that says how. Helpers raise it; each script's
    main() turns it into `script.py: message` and exit status 1 (fail). Tracebacks are kept for bugs."""


def fail(script: str, message: object) -> NoReturn:
    """Print `script: message` on stderr and exit with status 1."""
    sys.exit(f"{script}: {message}")


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, or its type when it has none. A line longer than `limit` characters
    ends at its last whole sentence within them, or else at a whole word, with " ..." (never mid-word)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if len(line) <= limit:
        return line
    head = line[:limit + 1]
    if (end := head.rfind(". ")) > 0:
        return head[:end + 1]
    return (head[:head.rfind(" ")].rstrip(" ,;:") if " " in head else head[:limit]) + " ..."


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the module docstring as written, and each option's default (where it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """--device, the same for every script (pick_device below turns it into a device)."""
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto prefers cuda, then mps, then cpu")


# --- the GPUs of this machine, and a torch that runs them ---

# The newest torch of each of PyTorch's CUDA builds that a driver may run, up to 2.13.0 (the newest our CI runs): (the
# CUDA the driver must run at least, torch, index, about how many GB pip downloads). From PyTorch's release notes and
# support matrices (pytorch/pytorch RELEASE.md, its CUDA RFCs, pytorch.org/get-started/previous-versions): cu118 ended
# with 2.7.1, cu121 with 2.5.1, cu124 with 2.6.0, cu128 with 2.11.0 (2.12 dropped it); cu126 and cu130 go on (2.14).
# A 12.8 driver gets cu128, not the newer torch of cu126: it may run a Blackwell GPU, which cu126 has no kernels for.
# Every build here has wheels for Python 3.10 to 3.12. The sizes were measured on PyPI, which holds one build of each
# torch, on the nearest with the same CUDA: its Linux x86_64 wheels for Python 3.10, with triton and the nvidia-* CUDA
# libraries it requires (2.13.0 cu130 2.7 GB, 2.8.0 cu128 3.9 GB, 2.7.1 cu126 3.0 GB, 2.6.0 and 2.5.1 cu124 3.0-3.1
# GB); no cu118 build is on PyPI: taken as 3 GB like its neighbours.
TORCH_BUILDS = [((13, 0), "2.13.0", "cu130", 3), ((12, 8), "2.11.0", "cu128", 4), ((12, 6), "2.13.0", "cu126", 3),
                ((12, 4), "2.6.0", "cu124", 3), ((12, 1), "2.5.1", "cu121", 3), ((11, 8), "2.7.1", "cu118", 3)]
# PyTorch's indexes, one per build (PYTORCH_WHL/cu128); the environment variable PYTORCH_WHL_URL replaces it
PYTORCH_WHL = "https://download.pytorch.org/whl"
# the lowest Linux driver of each CUDA release (NVIDIA's CUDA release notes), for when nvidia-smi does not say
DRIVER_CUDA = [(580, "13.0"), (575, "12.9"), (570, "12.8"), (560, "12.6"), (555, "12.5"), (550, "12.4"),
               (545, "12.3"), (535, "12.2"), (530, "12.1"), (525, "12.0"), (520, "11.8"), (470, "11.4")]


def nvidia_smi(*args: str) -> str:
    """nvidia-smi's output, or "" when it is missing, fails or hangs."""
    try:
        proc = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def nvidia_gpus() -> int:
    """How many NVIDIA GPUs this machine has: the GPUs `nvidia-smi -L` lists, else the /dev/nvidiaN devices."""
    listed = sum(line.startswith("GPU ") for line in nvidia_smi("-L").splitlines())
    return listed or sum(bool(re.fullmatch(r"nvidia\d+", p.name)) for p in Path("/dev").glob("nvidia*"))


def nvidia_driver() -> tuple[str | None, str | None]:
    """(driver version, the highest CUDA it runs) from nvidia-smi's header, e.g. ("570.195.03", "12.8"); None for
    what it does not say."""
    header = nvidia_smi()
    driver = re.search(r"Driver Version:\s*([\d.]+)", header)
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", header)
    driver = driver.group(1) if driver else None
    if cuda:
        return driver, cuda.group(1)
    major = int(driver.split(".")[0]) if driver else 0
    return driver, next((c for d, c in DRIVER_CUDA if major >= d), None)


def torch_build(cuda: str) -> tuple[str, str, int] | None:
    """(torch version, index, GB to download) of the newest torch built for a driver that runs CUDA up to `cuda`
    ("12.8"); None when no torch 2.4+ runs on it."""
    have = tuple(int(x) for x in cuda.split(".")[:2])
    return next(((version, index, gb) for need, version, index, gb in TORCH_BUILDS if have >= need), None)


def torch_index(index: str) -> str:
    """The URL of one of PyTorch's indexes ("cu128"), under PYTORCH_WHL_URL when set (a mirror; tests)."""
    return f"{os.environ.get('PYTORCH_WHL_URL', PYTORCH_WHL).rstrip('/')}/{index}"


def torch_install_command(cuda: str) -> str | None:
    """The pip command that installs a torch built for a driver that runs CUDA up to `cuda` ("12.8"); None when no
    torch 2.4+ runs on it."""
    build = torch_build(cuda)
    return build and f"pip install torch=={build[0]} --index-url {torch_index(build[1])}"


def gpu_shortfall(processes: int) -> str | None:
    """None when torch sees a GPU for each of `processes` or this machine has no NVIDIA GPU; else one line: torch's
    version and its CUDA, the driver's, and what to do."""
    import torch

    with warnings.catch_warnings():  # a CUDA build on an older driver warns here; the line below says it better
        warnings.simplefilter("ignore")
        seen = torch.cuda.device_count()
    gpus = nvidia_gpus() if seen < processes else 0
    if not gpus:
        return None
    driver, cuda = nvidia_driver()
    built = torch.version.cuda
    what = (f"torch {torch.__version__} (CUDA {built}{': a CPU build' if built is None else ''}) sees {seen} of this "
            f"machine's {gpus} GPU(s), needed by {processes} process(es); driver {driver or 'unknown'} runs CUDA "
            f"{cuda or 'unknown'} at most")
    too_new = built is not None and cuda is not None and \
        tuple(int(x) for x in built.split(".")[:2]) > tuple(int(x) for x in cuda.split("."))
    if built is None or too_new:
        if cuda is None:
            return f"{what} - install a torch built for the CUDA of nvidia-smi's header (or pass --device cpu)"
        command = torch_install_command(cuda)
        if command is None:
            return f"{what} - no torch 2.4+ runs on a driver older than CUDA 11.8: use a pod with a newer driver"
        return f"{what} - install a torch this driver runs: {command} (or pass --device cpu)"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen < gpus and hidden is not None:
        return f"{what} - CUDA_VISIBLE_DEVICES={hidden} hides the others: unset it, or start fewer processes"
    if seen:
        return f"{what} - start at most {seen} process(es), one per GPU"
    try:
        torch.cuda.init()
        reason = "no reason given"
    except Exception as e:  # torch's own words for why CUDA does not start
        reason = first_line(e)
    return f"{what} - torch says: {reason}"


def pick_device(name: str, processes: int = 1) -> str:
    """--device auto|cuda|mps|cpu -> the device to use (auto prefers cuda, then mps, then cpu). UserError when the
    one asked for is not usable here, and for auto or cuda on a machine with NVIDIA GPUs when torch sees fewer than
    `processes` (the processes on this machine, one GPU each)."""
    import torch  # here, not at the top: tokenizing needs no torch

    mps = torch.backends.mps.is_available()
    if name in ("auto", "cuda"):
        shortfall = gpu_shortfall(processes)
        if shortfall:
            raise UserError(shortfall)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU - check nvidia-smi, or use --device cpu")
    if name == "mps" and not mps:
        raise UserError("--device mps, but this torch has no MPS support - use --device cpu")
    return name


# --- a torch this driver runs, installed in one command: python common.py --install-torch ---

def torch_in(python: str) -> tuple[str, str, int]:
    """(version, the CUDA it was built for or "None", the GPUs it sees) of the torch that `python` imports, asked in a
    fresh process. UserError with the last line of its error when it imports none."""
    code = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count())"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{python} -c 'import torch' failed: {first_line(e)}") from None
    fields = proc.stdout.split()
    if proc.returncode or len(fields) != 3:
        raise UserError(f"{python} cannot import torch: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return fields[0], fields[1], int(fields[2])


def install_torch() -> str:
    """Install into this Python the newest torch built for this machine's NVIDIA driver (torch_build), with pip from
    PyTorch's index for it, unless a torch 2.4+ here sees its GPUs already; then check it in a fresh process. Returns
    the line that says how it ended; UserError when the machine has no NVIDIA GPU or its driver no build, or when pip
    or the torch it installed fails."""
    gpus = nvidia_gpus()
    if not gpus:
        raise UserError("this machine has no NVIDIA GPU (nvidia-smi lists none): nothing to install - on a CPU, "
                        "pip install -r requirements.txt brings torch")
    try:
        version, built, seen = torch_in(sys.executable)
    except UserError:
        version, built, seen = "", "", 0
    if seen and tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= (2, 4):
        return f"torch {version} (CUDA {built}) sees {seen} of this machine's {gpus} GPU(s): nothing to install"
    driver, cuda = nvidia_driver()
    build = torch_build(cuda) if cuda else None
    if build is None:
        raise UserError(f"driver {driver or 'unknown'} runs CUDA {cuda or 'unknown'} at most, and no torch 2.4+ is "
                        "built for a CUDA older than 11.8 - use a pod with a newer driver")
    version, index, gb = build
    command = [sys.executable, "-m", "pip", "install", f"torch=={version}", "--index-url", torch_index(index)]
    print(f"common.py: driver {driver} runs CUDA {cuda} at most: torch {version} built for {index} goes into "
          f"{sys.prefix}, about {gb} GB to download (torch and the nvidia-* CUDA libraries it needs)", flush=True)
    print(f"common.py: running {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode:
        raise UserError(f"pip could not install torch {version} from {torch_index(index)} (its output is above)")
    version, built, seen = torch_in(sys.executable)
    if seen < gpus:
        raise UserError(f"torch {version} (CUDA {built}) is installed but sees {seen} of this machine's {gpus} "
                        f"GPU(s) - python common.py --check-gpus {gpus} says why")
    return f"torch {version} (CUDA {built}) sees all {gpus} GPU(s) of this machine: ready"


def leave_process_group(code: int, ok: bool) -> None:
    """End this process's part in the process group (ok: the run ended as planned on every rank; else this rank
    failed alone, and its peers may be waiting in a collective: torchrun ends them). torch before 2.8 can hang or
    abort while it tears down a Gloo group (a worker thread letting go of a tensor waits for the GIL, which the main
    thread holds while it joins them; fixed in torch 2.8): there a Gloo process leaves through os._exit(code), after
    a barrier when ok, with its output flushed (the log-dir lock is already released)."""
    import torch
    import torch.distributed as dist
    if dist.get_backend() == "gloo" and tuple(map(int, torch.__version__.split(".")[:2])) < (2, 8):
        if ok:
            dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if ok:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="common.py", formatter_class=HelpFormatter, description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--check-gpus", type=int, metavar="N",
                      help="exit 0 when torch sees N GPUs or the machine has none; else one line on stderr, exit 2")
    what.add_argument("--install-torch", action="store_true",
                      help="pip install into this Python the newest torch built for this machine's NVIDIA driver "
                           "(about 3-4 GB), unless a torch 2.4+ here sees the GPUs already")
    p.add_argument("--device", default="auto", choices=["", "auto", "cuda", "mps", "cpu"],
                   help="with --check-gpus: train_gpt2.py's --device; empty is auto; mps and cpu need no check")
    p.add_argument("--name", default="common.py", help="with --check-gpus: the script named at the start of the line")
    args = p.parse_args(argv)
    if args.install_torch:
        try:
            print(f"common.py: {install_torch()}")
        except UserError as e:
            fail("common.py", e)
        except KeyboardInterrupt:
            fail("common.py", "stopped - run python common.py --install-torch again to install torch")
        return
    shortfall = gpu_shortfall(args.check_gpus) if args.device in ("", "auto", "cuda") else None
    if shortfall:
        print(f"{args.name}: {shortfall}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
