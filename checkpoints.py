"""
Checkpoints of train_gpt2.py, and the models the other scripts load: written durably with a CRC32 of their tensors,
read safely (weights only: nothing in a file can run code), rotated, chosen for --resume; the formats of
build-nanogpt and nanoGPT; --init-from's sources; load_model for hellaswag.py and infer.py; one run per log dir.

Operations, not the training story: train_gpt2.py calls into this file, and a learner can skip it. What it promises:

- Resume. --resume auto (the default, and what train.sh passes) continues from the newest valid checkpoint in the
  log dir, or starts fresh when there is none; --resume FILE continues from that file; --resume none starts a new run.
  The checkpoint must match the run: another --recipe, --model, --seq-len or --total-batch-size is refused. Other
  options may change on resume (--lr, --weight-decay, --grad-clip, --batch-size, the modern learning rates, ...):
  they apply from that step on, over the settings saved with the optimizer, and each change is printed and logged as
  an options_changed event. A finished run says so and exits; a larger --epochs goes on (the lr then ramps to the
  new cosine over --warmup-steps: train_gpt2.schedule_join).
- New runs never overwrite another's. A new run (--resume none, --init-from) or a --resume FILE from another folder
  does not start in a log dir that holds another run's checkpoints: it is refused in one line, so nothing of the old
  run is overwritten or rotated away. model_*.pt files that are not this kit's training checkpoints (another
  script's, weights only) are never resumed from: --init-from them into another --log-dir.
- One run per log dir: the run holds an flock on LOG_DIR/.lock, released when it exits or dies (a dead run's lock is
  taken over). A second run on that log dir stops in one line naming the holder's pid and host.
- Durable writes: a checkpoint is written to a temporary name, fsync'd, renamed into place, and the folder fsync'd,
  so a network volume keeps it. A full disk removes the partial file and leaves the earlier checkpoints untouched;
  at start a warning says when the disk holds fewer than two checkpoints.
- Damage: every checkpoint records a CRC32 of its tensors, checked on load (about a second for 124M). --resume auto
  skips a truncated or bit-flipped newest checkpoint for the one before it, with a warning on stderr and a
  resume_fallback event in metrics.jsonl; --resume FILE and infer.py refuse a damaged file.
- Divergence: no checkpoint holds NaN or inf. A run that diverges names the checkpoint to resume from with a lower
  --lr: the newest it saved, or, when it saved none since resuming, the finite one before the one it resumed from
  (after_divergence), so following the advice again and again walks back and ends.
- Rotation: --keep-checkpoints N (default 3) deletes only checkpoints that it can read and that this kit wrote, and
  never a run's last one.
- --init-from FILE | gpt2 ... gpt2-xl | a Hugging Face folder starts a new run at step 0 with a fresh optimizer and
  that model's shape and recipe (a notice names any --recipe or --n-* it overrides); --seq-len may be shorter than
  its context. Once the run has a checkpoint the same command resumes it; another --init-from there is refused.
- Formats that load (load_model, init_weights): ours (either recipe, which the checkpoint records); build-nanogpt's
  (log/model_05000.pt, a fork's checkpoints/model_EE_SSSSS.pt; its GPTConfig pickled as __main__.GPTConfig or
  model.GPTConfig; keys with or without _orig_mod. and module.); nanoGPT's ckpt.pt (with or without biases; it
  trained with exact GELU, so a note says the logits differ slightly); OpenAI's gpt2 ... gpt2-xl and Hugging Face
  GPT-2 folders. Every file is read with torch.load(weights_only=True): tensors, plain data and a stand-in for
  those GPTConfigs. A file that pickles anything else is refused with a line naming the class; load it with the
  script that wrote it and save its state_dict, or a Hugging Face folder.
"""

import argparse
import atexit
import contextlib
import errno
import fcntl
import os
import re
import shlex
import shutil
import socket
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.distributed as dist

from common import UserError, first_line
from model import GPT, HF_NAMES, MODEL_SIZES, GPTConfig, ModernGPT, build_model

# ----------------------------------------------------------------------------------------------------------------------
# reading and writing

CKPT_NAME = re.compile(r"model_(\d+)\.pt$")
OURS = ("model", "model_config", "optimizer", "step", "config")  # what every training checkpoint of ours holds


class CheckpointDamaged(UserError):
    """A file that is truncated, or whose tensors no longer match the checksum saved with them."""


class CheckpointNotFinite(CheckpointDamaged):
    """A checkpoint whose weights or optimizer state hold NaN or inf (saved after training diverged)."""


class PeerConfig:
    """Stands in for the GPTConfig dataclass that build-nanogpt pickles into its checkpoints (as __main__.GPTConfig, or
    model.GPTConfig): a weights-only load may create it and set its fields, and no code of theirs runs."""


def stand_in(name: str) -> type:
    """A PeerConfig that the weights-only unpickler allows under the pickled name "module.Class": torch 2.4 and 2.5
    look an allowed class up by its __module__ and __name__, torch 2.6 and newer by __module__ and __qualname__."""
    module, _, cls = name.rpartition(".")
    return type(cls, (PeerConfig,), {"__module__": module, "__qualname__": cls, "__doc__": PeerConfig.__doc__})


PEER_GLOBALS = [stand_in("__main__.GPTConfig"), stand_in("model.GPTConfig")]


@contextlib.contextmanager
def peer_globals() -> Iterator[None]:
    """PEER_GLOBALS allowed for the loads inside, on every torch from 2.4 (whose add_safe_globals is process-wide:
    torch.serialization.safe_globals came in 2.5), and the allowed list as it was afterwards."""
    before = list(torch.serialization.get_safe_globals())  # a copy: torch 2.4 hands out its own list
    torch.serialization.add_safe_globals(PEER_GLOBALS)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def printable(text: str) -> str:
    """text without terminal escape sequences or control characters (a file's contents must not drive the terminal)."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "", re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", text))


def list_checkpoints(log_dir: str | Path) -> list[Path]:
    """model_*.pt in the log dir, oldest first."""
    found = [p for p in Path(log_dir).glob("model_*.pt") if CKPT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_NAME.match(p.name).group(1)))


def tensors(obj) -> Iterator[torch.Tensor]:
    """Every tensor in a nested dict / list / tuple, in a fixed order (dicts keep theirs through torch.save)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict | list | tuple):
        for v in obj.values() if isinstance(obj, dict) else obj:
            yield from tensors(v)


def non_finite(obj) -> int:
    """How many floating-point tensors in a nested dict / list hold a NaN or an inf."""
    return sum(not bool(torch.isfinite(t).all()) for t in tensors(obj) if t.is_floating_point())


def tensor_checksum(state: dict) -> int:
    """A CRC32 of each tensor's bytes, on all cores (zlib lets go of the GIL), then one of those CRCs in order: about
    1 to 2 GB/s per core (bench/bench_checkpoint.py)."""
    crc = lambda t: zlib.crc32(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # noqa: E731
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        return zlib.crc32(np.array(list(pool.map(crc, tensors(state))), dtype=np.uint32).tobytes())


def load_error(e: Exception) -> str:
    """Why torch could not load a file, in brief: the exception's type and the first sentence of its message, or the
    weights-only unpickler's own reason (past torch's advice about weights_only, which does not apply here)."""
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
    sentence, more, _ = (detail.group(1).strip() if detail else first_line(e, 200)).partition(". ")
    return printable(f"{type(e).__name__}: {sentence}{'.' if more else ''}")


def load_file(path: str | Path, mmap: bool = False) -> object:
    """torch.load with weights_only=True, so nothing in the file can run code; PeerConfig is allowed under the names
    other scripts pickle their GPTConfig as. UserError naming the global it refused, or when this torch cannot do the
    load (a version gap is never taken for damage: resume and rotation leave such files alone); CheckpointDamaged
    otherwise."""
    try:
        with peer_globals():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        refused = re.search(r"GLOBAL (\S+) (was not an allowed global|whose module \S+ is blocked)", str(e))
        if refused:
            raise UserError(f"could not load {path}: it pickles {printable(refused.group(1))}, which a safe "
                            "(weights-only) load refuses - save its state_dict, or a Hugging Face folder, instead") \
                from None
        if isinstance(e, AttributeError | TypeError | ImportError | NotImplementedError):  # not the file: this torch
            raise UserError(f"could not load {path} with torch {torch.__version__} ({load_error(e)}) - this kit "
                            "needs torch 2.4 or newer") from None
        raise CheckpointDamaged(f"could not load {path}: truncated or not a checkpoint ({load_error(e)})") from None


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint of this script with its checksum verified, or UserError (CheckpointDamaged: damaged)."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in OURS):
        raise UserError(f"{path} is not a train_gpt2.py training checkpoint (it needs {', '.join(OURS)}) - "
                        "--init-from starts a new run from its weights")
    if "checksum" in ckpt and tensor_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointDamaged(f"{path} is damaged: its tensors do not match the checksum saved with them")
    if bad := non_finite([ckpt["model"], ckpt["optimizer"]]):
        raise CheckpointNotFinite(f"{path} holds NaN or inf in {bad} tensors (saved after training diverged)")
    return ckpt


def newest_finite(log_dir: str | Path, before: int | None = None) -> Path | None:
    """The newest checkpoint in the log dir (of a step before `before`, if given) that loads, matches its checksum and
    holds finite numbers only."""
    for path in reversed(list_checkpoints(log_dir)):
        if before is not None and int(CKPT_NAME.match(path.name).group(1)) >= before:
            continue
        try:
            read_checkpoint(path)
            return path
        except UserError:
            continue
    return None


def after_divergence(saved: Path | None, resumed: Path | None) -> str:
    """Where to go on once training diverged, as the end of its one-line message. The checkpoint to resume from with
    a lower --lr is the newest one this run saved. When it saved none since it resumed from a checkpoint, that one
    led straight to the divergence and may be blown up though finite (a huge --lr wrecks the weights a step before
    the gradient norm overflows), so the advice names the newest finite one before it, and once none is left, a new
    run: each time the advice is followed and the run diverges again before saving, it names an older checkpoint."""
    if saved is None and resumed is not None:
        step = (head_of(resumed) or {}).get("step")
        older = newest_finite(resumed.parent, before=step) if isinstance(step, int) else None
        why = f"{resumed.resolve()} led straight to it"
        if older is None:
            return f"{why} and no finite checkpoint before it is left - start a new run with a lower --lr in another " \
                   "--log-dir"
        return f"{why}, so it may be blown up though finite; {after_divergence(older, None)}"
    if saved is None:
        return "no checkpoint was saved before it - rerun with a lower --lr"
    return f"the last good checkpoint is {saved.resolve()}; lower --lr and resume from it (--resume " \
           f"{shlex.quote(str(saved.resolve()))})"


def head_of(path: Path) -> dict | None:
    """A checkpoint's small entries, without reading its tensors (mmap); None when it cannot be read."""
    try:
        head = load_file(path, mmap=True)
    except UserError:
        return None
    return head if isinstance(head, dict) else None


def is_disk_full(e: BaseException | None) -> bool:
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def save_checkpoint(path: Path, state: dict, keep: int) -> None:
    """Write durably: a temp file, fsync'd, renamed over the name, then the folder fsync'd (so a network filesystem
    cannot lose the rename), with a CRC32 of the tensors that loading verifies. A full disk is a UserError with the
    sizes, the temp file removed, older checkpoints untouched. Then delete all but the newest `keep` checkpoints,
    only ones this script wrote and can read, and never one that ends an lr schedule (state["final"]: the last step of
    its --epochs; where a --max-steps stops is not one, so chained --max-steps runs rotate)."""
    if path.exists() and (head := head_of(path)) is not None and any(k not in head for k in OURS):
        raise UserError(f"{path} is another script's checkpoint - not overwriting it; pass another --log-dir")
    if bad := non_finite([state["model"], state.get("optimizer")]):
        raise UserError(f"not saving {path}: {bad} tensors of the model or optimizer hold NaN or inf - training "
                        "diverged; lower --lr and resume from the checkpoint before it")
    state = {**state, "checksum": tensor_checksum(state)}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not is_disk_full(e):
            raise
        need, free = sum(t.nbytes for t in tensors(state)), shutil.disk_usage(path.parent).free
        raise UserError(f"disk full: {path} needs about {need / 1e6:,.0f} MB and {path.parent} has "
                        f"{free / 1e6:,.0f} MB free - free some space and rerun (--resume auto continues from the "
                        "last checkpoint saved)") from None
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    for old in list_checkpoints(path.parent)[:-keep] if keep > 0 else []:
        head = head_of(old)
        if old != path and head is not None and all(k in head for k in OURS) and not head.get("final"):
            old.unlink(missing_ok=True)


def check_free_space(log_dir: str, model: GPT) -> None:
    """Warn when the log dir has room for fewer than two checkpoints (weights and AdamW's two moments)."""
    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(log_dir).free
    if free < 2 * need:
        print(f"train_gpt2.py: warning: {log_dir} has {free / 1e6:,.0f} MB free, room for fewer than two checkpoints "
              f"of about {need / 1e6:,.0f} MB - free some space before the first save", file=sys.stderr)


def find_resume(args: argparse.Namespace, config: GPTConfig) -> tuple[Path | None, dict | None, list[str]]:
    """The checkpoint to continue from (--resume auto: the newest one that loads; a path; or none), and the damaged
    newer ones passed over. A new run (--resume none, or --init-from) never starts in a log dir that holds another
    run's checkpoints: its saves would overwrite theirs and rotation would delete the rest. UserError then, when the
    one named cannot be resumed from or does not fit the options, and when --resume auto meets model_*.pt files it
    cannot resume from and no good checkpoint of ours before them."""
    log_dir, path, ckpt, skipped, foreign = Path(args.log_dir), None, None, [], []
    present = sorted(p.name for p in log_dir.glob("model_*.pt"))
    held = f"{log_dir.absolute()}/ holds the checkpoints of a run ({', '.join(present[-3:])})"
    if args.resume == "none" and present:
        raise UserError(f"{held}; --resume none would start a new run over them - pass another --log-dir (or move "
                        "them away), or --resume auto to continue that run")
    if args.resume not in ("auto", "none"):
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such file - pass a model_*.pt, auto or none")
        if present and Path(args.resume).resolve().parent != log_dir.resolve():
            raise UserError(f"{held}; continuing {args.resume} there would mix two runs - pass an empty --log-dir")
        try:
            path, ckpt = Path(args.resume), read_checkpoint(Path(args.resume))
        except UserError as e:
            raise UserError(f"--resume: {e}") from None
    ours = set(list_checkpoints(log_dir)) if args.resume == "auto" else set()
    others = [p for p in log_dir.glob("model_*.pt") if p not in ours] if args.resume == "auto" else []
    for candidate in reversed(list_checkpoints(log_dir)) if args.resume == "auto" else []:
        try:
            path, ckpt = candidate, read_checkpoint(candidate)
            break
        except CheckpointDamaged as e:
            skipped.append(str(e))
        except UserError:
            foreign.append(candidate)
    if foreign or others or (skipped and ckpt is None):
        names = ", ".join(p.name for p in sorted(foreign + others)) or "; ".join(skipped)
        raise UserError(f"{log_dir.absolute()}/ holds checkpoints that --resume auto cannot continue from ({names}) - "
                        "start from their weights with --init-from FILE, or from scratch with --resume none, "
                        "either with another --log-dir")
    if ckpt is not None and args.init_from and ckpt["config"].get("init_from") != args.init_from:
        raise UserError(f"{held}, started from {ckpt['config'].get('init_from') or 'scratch'}; --init-from "
                        f"{args.init_from} starts a new run - pass another --log-dir, or leave out --init-from to "
                        "continue that run")
    if ckpt is not None and {"recipe": "classic", **ckpt["model_config"]} != asdict(config):  # older: no recipe
        raise UserError(f"{path} holds a model {ckpt['model_config']}, but the options ask for {asdict(config)} - "
                        "pass the same --recipe/--model/--n-*/--seq-len/--init-from, or another --log-dir for a new "
                        "run")
    if ckpt is not None and ckpt["config"].get("total_batch_size") != args.total_batch_size:
        raise UserError(f"{path} was trained with --total-batch-size {ckpt['config'].get('total_batch_size')}; "
                        "resume with the same value (the data position is counted in steps)")
    return path, ckpt, skipped


def restore_state(raw: GPT, optimizer: torch.optim.Optimizer, ckpt: dict, cuda: bool) -> None:
    """The weights, optimizer state and random state of a checkpoint, for an exact resume."""
    raw.load_state_dict(ckpt["model"])
    # The optimizer's state holds the moments and the settings they were saved with (lr, weight decay, ...). This
    # run's options win over those settings, so a changed --weight-decay, --embed-lr or --head-lr applies from here.
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, options in zip(optimizer.param_groups, settings):
        group.update(options)
    torch.set_rng_state(ckpt["rng"]["torch"])
    if cuda and len(ckpt["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def agreed_resume(args: argparse.Namespace, config: GPTConfig, rank: int,
                  world: int) -> tuple[Path | None, dict | None, list[str]]:
    """find_resume on rank 0, which tells the others the file, its step and checksum: every rank resumes from the
    same checkpoint, or none. A rank that cannot read that file, or reads another (a --log-dir on a disk of its own
    node), is a UserError naming the shared-disk requirement; an error of rank 0's choice is raised on every rank."""
    if world == 1:
        return find_resume(args, config)
    decided = [None, None, None, None]  # the checkpoint as the options name it, its step and checksum, rank 0's error
    if rank == 0:
        try:
            path, ckpt, skipped = find_resume(args, config)
            if ckpt is not None:
                decided[:3] = [str(path), ckpt["step"], ckpt.get("checksum")]
        except UserError as e:
            decided[3] = e
    dist.broadcast_object_list(decided, src=0)
    name, step, checksum, error = decided
    if error is not None:
        raise error
    if rank == 0:
        return path, ckpt, skipped
    if name is None:
        return None, None, []
    where = f"rank {rank} on {socket.gethostname()}"
    shared = ("- the --log-dir must be on storage every node sees (a shared disk or network volume): every rank "
              "resumes from rank 0's checkpoints")
    if not Path(name).is_file():
        raise UserError(f"{where} cannot see {Path(name).absolute()}, the checkpoint rank 0 resumes from {shared}")
    ckpt = read_checkpoint(Path(name))
    if (ckpt["step"], ckpt.get("checksum")) != (step, checksum):
        raise UserError(f"{where} reads another file at {Path(name).absolute()} (step {ckpt['step']}) than rank 0 "
                        f"(step {step}) {shared}")
    return Path(name), ckpt, []


def peer_weights(ckpt: object, path: Path) -> tuple[GPTConfig, dict, str | None]:
    """(config, state dict for GPT, a note or None) from a checkpoint of this script, of build-nanogpt ({'model',
    'config': GPTConfig, 'step', 'val_loss'}) or of nanoGPT (ckpt.pt: {'model', 'model_args', ...})."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(f"could not load {path}: no 'model' state dict in it - pass a checkpoint of train_gpt2.py, "
                        "build-nanogpt or nanoGPT, a Hugging Face GPT-2 folder, or gpt2")
    # keys saved from a torch.compile'd or DDP-wrapped model carry these prefixes; attn.bias is a causal-mask buffer
    state = {re.sub(r"^((_orig_mod|module)\.)+", "", k): v for k, v in ckpt["model"].items()}
    state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    note, fields = None, ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")
    if isinstance(ckpt.get("model_config"), dict):
        config = GPTConfig(**ckpt["model_config"])
    elif isinstance(ckpt.get("config"), PeerConfig):  # build-nanogpt: the same model, tanh GELU included
        config = GPTConfig(**{f: getattr(ckpt["config"], f) for f in fields if hasattr(ckpt["config"], f)})
    elif isinstance(ckpt.get("model_args"), dict):  # nanoGPT: bias=False means no biases, i.e. zero ones here
        config = GPTConfig(**{f: ckpt["model_args"][f] for f in fields if f in ckpt["model_args"]})
        if not ckpt["model_args"].get("bias", True):
            for k, v in GPT(config).state_dict().items():
                if k.endswith(".bias"):
                    state.setdefault(k, torch.zeros_like(v))
        note = (f"{path} is a nanoGPT checkpoint, trained with exact GELU; this model uses GPT-2's tanh approximation, "
                "so its logits differ slightly from nanoGPT's")
    else:
        raise UserError(f"could not load {path}: a format this script does not know (keys: "
                        f"{printable(', '.join(map(str, list(ckpt)[:8])))}) - see the README's 'which formats load'")
    return config, state, note


def hub_unreachable() -> bool:
    """Whether the Hugging Face Hub is out of reach (no connection, no proxy): its client would retry for half a
    minute, so load_file_model then goes offline at once and uses the cache."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
        return False
    except OSError:
        return not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def load_file_model(spec: str, device: str | torch.device = "cpu") -> tuple[GPT | ModernGPT, dict]:
    """load_model of one checkpoint file, OpenAI name or Hugging Face folder."""
    path = Path(spec)
    hub = spec in HF_NAMES and not path.exists()
    if hub and "HF_HUB_OFFLINE" not in os.environ and hub_unreachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # read when from_pretrained first imports huggingface_hub
    if hub or path.is_dir() and (path / "config.json").exists():
        try:
            return GPT.from_pretrained(spec).to(device).eval(), {}
        except OSError as e:  # no network and not cached, or an incomplete folder
            if hub:
                raise UserError(f"could not download the {spec} weights from the Hugging Face Hub ({first_line(e)}) - "
                                "connect to the internet once (they are cached), or pass a folder made with "
                                "save_pretrained") from None
            raise UserError(f"could not load {spec}: {first_line(e)}") from None
    if not path.is_file():
        raise UserError(f"no such file or folder: {spec} - pass a model_*.pt from train_gpt2.py, a log dir, a Hugging "
                        f"Face GPT-2 folder or one of {', '.join(HF_NAMES)}")
    ckpt = load_file(path)
    if isinstance(ckpt, dict) and "checksum" in ckpt and tensor_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointDamaged(f"{path} is damaged: its tensors do not match the checksum saved with them")
    config, state, note = peer_weights(ckpt, path)
    if bad := non_finite(state):
        raise CheckpointNotFinite(f"{path} holds NaN or inf in {bad} of its weight tensors (saved after training "
                                  "diverged) - use an earlier checkpoint")
    try:
        model = build_model(config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"could not load {spec}: its weights do not fit train_gpt2's model "
                        f"({type(e).__name__}: {printable(first_line(e))})") from None
    if note:
        print(f"note: {note}", file=sys.stderr)
    return model.to(device).eval(), ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}


# a checkpoint file name of ours (model_SSSSS.pt) or of a build-nanogpt fork (model_EE_SSSSS.pt)
ANY_CKPT_NAME = re.compile(r"model_(\d+)(?:_(\d+))?\.pt$")


def newest_first(folder: Path) -> list[Path]:
    """The model_*.pt in a log dir (or a fork's checkpoints/ folder), newest (highest step, or epoch and step) first."""
    found = [(tuple(int(g) for g in m.groups() if g), p) for p in folder.glob("model_*.pt")
             if (m := ANY_CKPT_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def model_files(spec: str) -> list[str]:
    """What load_model tries for spec, in order: a log dir (or a checkpoints/ folder) gives its model_*.pt newest
    first; anything else is itself."""
    path = Path(spec)
    if not path.is_dir() or (path / "config.json").exists():
        return [spec]
    found = [str(p) for p in newest_first(path)]
    if not found:
        raise UserError(f"{spec} holds no model_*.pt checkpoint and no config.json - pass a checkpoint file, a "
                        "train_gpt2.py log dir or a Hugging Face GPT-2 folder")
    return found


def load_newest(spec: str, device: str | torch.device = "cpu",
                script: str = "train_gpt2.py") -> tuple[GPT | ModernGPT, dict, str]:
    """load_model, and the file it loaded. A log dir gives its newest checkpoint that loads: an unreadable newest one
    (a save cut short by a full disk or a killed pod, or non-finite) is passed over for the one before, with a notice
    that starts with the script's name."""
    candidates = model_files(spec)
    for i, candidate in enumerate(candidates):
        try:
            return *load_file_model(candidate, device), candidate
        except UserError as e:
            if i == len(candidates) - 1:
                raise
            print(f"{script}: notice: {e} - skipping it for the checkpoint before", file=sys.stderr)


def load_model(spec: str, device: str | torch.device = "cpu",
               script: str = "train_gpt2.py") -> tuple[GPT | ModernGPT, dict]:
    """(GPT or ModernGPT, as its recipe says, in eval mode on device, its training config or {}) from a checkpoint
    of this script, build-nanogpt or nanoGPT, a log dir (its newest checkpoint), an OpenAI name (gpt2 ... gpt2-xl)
    or a Hugging Face GPT-2 folder; UserError when it cannot. (hellaswag.py, infer.py and --init-from use it.)"""
    return load_newest(spec, device, script)[:2]


def init_weights(args: argparse.Namespace) -> tuple[GPTConfig, dict]:
    """--init-from: (config, weights) of that model cut to --seq-len positions; args' --n-* take its shape."""
    model, _ = load_model(args.init_from)
    c = model.config
    if args.seq_len > c.block_size:
        raise UserError(f"--seq-len {args.seq_len} is longer than the {c.block_size} positions of {args.init_from} - "
                        f"pass --seq-len {c.block_size} or less")
    shape = dict(recipe=c.recipe, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd)
    unused = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in shape.items() if getattr(args, k) != v]
    if unused and int(os.environ.get("RANK", "0")) == 0:
        print(f"train_gpt2.py: notice: --init-from {args.init_from} is a {c.recipe}-recipe model of {c.n_layer} "
              f"layers, {c.n_head} heads, {c.n_embd} wide, and trains as that ({', '.join(unused)} not used)",
              flush=True)
    vars(args).update(shape)
    args.model = next((name for name, d in MODEL_SIZES.items() if d == (c.n_layer, c.n_head, c.n_embd)), "custom")
    state = model.state_dict()
    if "transformer.wpe.weight" in state:  # learned positions (classic); the modern recipe's rotary ones have none
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:args.seq_len]
    return replace(c, block_size=args.seq_len), state


# ----------------------------------------------------------------------------------------------------------------------
# one run per log dir

LOCK_NAME = ".lock"
LOCKS = []  # how to release each log-dir lock this process holds (release_log_dirs)


def release_log_dirs() -> None:
    """Give up the log-dir locks of this process: at the end of a run or preflight, and at exit."""
    while LOCKS:
        LOCKS.pop()()


def lock_log_dir(log_dir: str) -> None:
    """One run per log folder: LOG_DIR/.lock names this process (pid and host) and holds an flock, which the kernel
    drops when the process dies, so a stale lock file is simply taken over; a second run stops at once, naming the
    first. Also checks that the folder can be read and written. release_log_dirs() removes the lock file."""
    path = Path(log_dir) / LOCK_NAME
    for _ in range(3):  # again if the file was removed or replaced while we waited for its lock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError("no read and write permission")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--log-dir {log_dir} cannot be used ({printable(first_line(e))}) - pass a folder "
                            "you can read and write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = printable(os.read(fd, 200).decode(errors="replace")) or "a process starting up"
            os.close(fd)
            raise UserError(f"{Path(log_dir).absolute()}/ is in use by another training run ({other}) - wait for it "
                            "or stop it, or pass another --log-dir") from None
        except OSError:  # a filesystem without flock: the file still names us
            pass
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:
        raise UserError(f"{log_dir}/{LOCK_NAME} keeps changing - another run is starting there; pass another --log-dir")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    except OSError as e:
        path.unlink(missing_ok=True)
        os.close(fd)
        why = "the disk is full" if is_disk_full(e) else printable(first_line(e))
        raise UserError(f"--log-dir {log_dir} cannot be used ({why}) - free some space, or pass another --log-dir") \
            from None
    LOCKS.append(lambda: (path.unlink(missing_ok=True), os.close(fd)))  # unlink while still holding the lock
    atexit.register(release_log_dirs)
