"""
What every script of the kit shares: the error type and its one-line exit, the --help formatter and --device.
Imports no torch (pick_device imports it when called), so fineweb.py can tokenize without it.
"""

import argparse
import sys
from typing import NoReturn


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
    """--help shows the module docstring as written, and each option's default (where it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """--device, the same for every script (pick_device below turns it into a device)."""
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto prefers cuda, then mps, then cpu")


def pick_device(name: str) -> str:
    """--device auto|cuda|mps|cpu -> the device to use (auto prefers cuda, then mps, then cpu). UserError when the
    one asked for is not usable here."""
    import torch  # here, not at the top: tokenizing needs no torch

    mps = torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU - check nvidia-smi, or use --device cpu")
    if name == "mps" and not mps:
        raise UserError("--device mps, but this torch has no MPS support - use --device cpu")
    return name
