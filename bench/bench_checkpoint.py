"""
Cost of the checkpoint checksum: save and load time of a training checkpoint (weights and AdamW state) of a --model
size, with and without checkpoints.py's CRC32 of the tensors (a random model; the disk is --dir's); then the kit's
own path as training takes it: save_checkpoint (checksum, fsync, rename) of the state on --device, and
read_checkpoint (checksum verified) with the weights and optimizer state loaded back onto --device.

    python bench/bench_checkpoint.py                    # d12 (124M): a checkpoint of about 1.5 GB in a temp folder
    python bench/bench_checkpoint.py --model d24 --dir /workspace/tmp
    python bench/bench_checkpoint.py --device cuda      # the model and optimizer on the GPU, as in training

Prints the seconds of each, best of --repeat, and the checksum's own time and rate.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoints import read_checkpoint, save_checkpoint, tensor_checksum, tensors  # noqa: E402
from model import GPT, MODEL_SIZES, GPTConfig  # noqa: E402


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def load_back(ckpt: dict, model: GPT, optimizer: torch.optim.Optimizer) -> None:
    """What a resume does with a checkpoint: the weights and the optimizer state onto the model's device."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d12", choices=list(MODEL_SIZES), help="size (random init, vocab 50304)")
    p.add_argument("--model-dims", default=None, help="n_layer,n_head,n_embd instead of --model (e.g. 2,2,64)")
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp folder)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the best is printed")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model and optimizer live")
    args = p.parse_args()

    n_layer, n_head, n_embd = (tuple(int(v) for v in args.model_dims.split(",")) if args.model_dims
                               else MODEL_SIZES[args.model])
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device == "cuda")
    model(torch.zeros(1, 8, dtype=torch.long, device=args.device))[0].sum().backward()
    optimizer.step()  # creates the two moment buffers per parameter
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1,
             "model_config": asdict(model.config), "config": {}}  # what read_checkpoint asks of a training one
    size = sum(t.nbytes for t in tensors(state))
    print(f"{args.model_dims or args.model}: {model.num_params() / 1e6:.1f}M parameters, checkpoint tensors "
          f"{size / 1e9:.2f} GB")

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = Path(d) / "model.pt"
        kit_save = best_of(args.repeat, lambda: save_checkpoint(path, state, keep=0))
        kit_load = best_of(args.repeat, lambda: load_back(read_checkpoint(path), model, optimizer))
        plain_save = best_of(args.repeat, lambda: torch.save(state, path))
        summed_save = best_of(args.repeat, lambda: torch.save({**state, "checksum": tensor_checksum(state)}, path))
        plain_load = best_of(args.repeat, lambda: torch.load(path, map_location="cpu", weights_only=True))
        summed_load = best_of(args.repeat, lambda: tensor_checksum(torch.load(path, map_location="cpu",
                                                                              weights_only=True)))
    crc = best_of(args.repeat, lambda: tensor_checksum(state))
    print(f"the kit's path, {args.device}: save_checkpoint {kit_save:.2f} s ({size / kit_save / 1e9:.2f} GB/s), "
          f"read_checkpoint + load onto {args.device} {kit_load:.2f} s")
    for what, plain, summed in (("save", plain_save, summed_save), ("load", plain_load, summed_load)):
        print(f"{what}: {plain:.2f} s without the checksum, {summed:.2f} s with it (+{summed - plain:.2f} s)")
    print(f"checksum alone: {crc:.2f} s = {size / crc / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
