"""
What every script of the kit shares: the error type and its one-line exit, the --help formatter, --device, and how a
process leaves a torchrun group. Imports no torch (the functions that need it import it when called), so fineweb.py
can tokenize without it.

--device auto never trains on the CPU of a GPU machine: when nvidia-smi lists GPUs (or /dev/nvidia0 exists) and
torch sees fewer than the processes need, it stops with one line that says why and how to get a torch this driver
runs. train.sh asks the same before it starts anything:

    python common.py --check-gpus N [--device DEVICE] [--name train.sh]   # exit 0, or one line on stderr, exit 2
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

# PyTorch's builds per CUDA version (pytorch.org/get-started/previous-versions), one for each CUDA a driver may run at
# most: (that CUDA at least, torch, index). 2.8.0 is the default RunPod image's torch; 2.9.1 has a cu130 build, 2.6.0
# cu118 and cu124 builds, 2.5.1 a cu121 build. Each has wheels for Python 3.10 to 3.12 and is a torch the kit runs.
TORCH_BUILDS = [((13, 0), "2.9.1", "cu130"), ((12, 8), "2.8.0", "cu128"), ((12, 6), "2.8.0", "cu126"),
                ((12, 4), "2.6.0", "cu124"), ((12, 1), "2.5.1", "cu121"), ((11, 8), "2.6.0", "cu118")]
# the lowest Linux driver of each CUDA release (NVIDIA's CUDA release notes), for when nvidia-smi does not say
DRIVER_CUDA = [(580, "13.0"), (570, "12.8"), (560, "12.6"), (550, "12.4"), (530, "12.1"), (520, "11.8")]


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


def torch_install_command(cuda: str) -> str | None:
    """The pip command that installs a torch built for a driver that runs CUDA up to `cuda` ("12.8"); None when no
    torch 2.4+ runs on it."""
    have = tuple(int(x) for x in cuda.split("."))
    for need, version, index in TORCH_BUILDS:
        if have >= need:
            return f"pip install torch=={version} --index-url https://download.pytorch.org/whl/{index}"
    return None


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
    p.add_argument("--check-gpus", type=int, required=True, metavar="N",
                   help="exit 0 when torch sees N GPUs or the machine has none; else one line on stderr, exit 2")
    p.add_argument("--device", default="auto", choices=["", "auto", "cuda", "mps", "cpu"],
                   help="train_gpt2.py's --device; empty is auto; mps and cpu need no check")
    p.add_argument("--name", default="common.py", help="the script named at the start of that line")
    args = p.parse_args(argv)
    shortfall = gpu_shortfall(args.check_gpus) if args.device in ("", "auto", "cuda") else None
    if shortfall:
        print(f"{args.name}: {shortfall}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
