"""
The modern recipe's optimizer (train_gpt2.py --recipe modern): Muon for the blocks' weight matrices, stepped together
with AdamW for the rest (Optimizers). train_gpt2.py's make_optimizer builds them; classic GPT-2 uses AdamW alone.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401 (see below)

# torch.distributed.nn is imported here, before any process group exists, on purpose. Its functions take
# `group=group.WORLD` defaults, evaluated when it is first imported; the first optimizer built imports it (through
# torch._dynamo), and imported after init_process_group those defaults would keep the live group, so that
# destroy_process_group() could not end it. Its Gloo worker threads, one of them still holding the parameters of
# Muon's last broadcast, would then live on into interpreter shutdown and abort the process when they let go of them.


def orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (2-D): every singular value moved near 1, the directions kept.
    A quintic Newton-Schulz iteration X <- a X + (b A + c A^2) X with A = X X^T, started from g / |g| (so all singular
    values are <= 1). Its coefficients, from the Muon write-up, trade exactness for speed: 5 steps take each singular
    value into about [0.7, 1.2], which trains as well as an exact U V^T at the cost of a few matmuls. bf16 on CUDA."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: A is then the smaller of the two Gram matrices
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024, "MomentUm Orthogonalized by Newton-Schulz") for 2-D hidden weights: SGD with Nesterov
    momentum, whose update of each matrix is replaced by its orthogonalisation (above). A raw gradient of a weight
    matrix is dominated by a few directions; the orthogonalised one moves every direction by the same amount, which
    learns faster per token. Scaled by sqrt(max(1, rows / cols)) so that tall and wide matrices move alike.

    Under DDP every rank has the same all-reduced gradients, so each keeps the same momentum (cheap, and any rank's
    optimizer state is the whole state for a checkpoint); the orthogonalisation, the expensive part, is split:
    rank r does matrices r, r + world, ... and broadcasts its results to the others. `last_orthogonalised` counts
    the matrices this process orthogonalised in its last step."""

    def __init__(self, params, lr: float, momentum: float = 0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self.last_orthogonalised = 0

    @torch.no_grad()
    def step(self) -> None:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.last_orthogonalised = 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for i, p in enumerate(params):
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                if i % world == rank:  # this rank's share
                    update = orthogonalise(p.grad.add(buf, alpha=group["momentum"]))  # Nesterov: look one step ahead
                    p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)
                    self.last_orthogonalised += 1
            if world > 1:
                for work in [dist.broadcast(p, src=i % world, async_op=True) for i, p in enumerate(params)]:
                    work.wait()


class Optimizers:
    """Several optimizers stepped, zeroed, saved and loaded as one (modern: Muon and AdamW)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
