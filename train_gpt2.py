"""
GPT-2 (124M and up): the model, and its training loop (one process, or torchrun DDP on one or many nodes).

    python fineweb.py --demo && python train_gpt2.py --preset demo     # a small model on CPU in about two minutes
    torchrun --standalone --nproc_per_node=8 train_gpt2.py             # GPT-2 124M on edu_fineweb10B/ (10B tokens)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py --resume log/model_18882.pt --epochs 2   # a second epoch

Writes LOG_DIR/model_{step:05d}.pt checkpoints, LOG_DIR/log.txt and LOG_DIR/metrics.jsonl. SIGTERM or Ctrl-C finish
the current step, save a checkpoint and exit; `--resume auto` (the default) continues from the newest checkpoint.
"""

import argparse
import atexit
import errno
import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F

import fineweb
import hellaswag
from fineweb import GPT2_VOCAB, UserError, first_line

# ----------------------------------------------------------------------------------------------------------------------
# model

# --model name -> (n_layer, n_head, n_embd) of GPT-2 124M, 350M, 774M and 1.5B
MODEL_SIZES = {"d12": (12, 12, 768), "d24": (24, 16, 1024), "d36": (36, 20, 1280), "d48": (48, 25, 1600)}
HF_NAMES = {"gpt2": "d12", "gpt2-medium": "d24", "gpt2-large": "d36", "gpt2-xl": "d48"}
# the Linear weights that Hugging Face GPT-2 stores transposed (as Conv1D, (in, out))
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    block_size: int = 1024  # max sequence length
    vocab_size: int = 50304  # GPT2_VOCAB padded to a multiple of 128 for faster matmuls; the padding ids never occur
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    recipe: str = "classic"  # classic: GPT-2 (class GPT); modern: rotary, RMSNorm, ReLU², ... (class ModernGPT)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: "KVCache | None",
                     layer: int) -> torch.Tensor:
    """Causal attention of q, k, v (B, nh, T, hs) -> (B, nh, T, hs). With a cache (generation) this layer's keys and
    values are stored at the cache's position, and the queries attend to every earlier position as well."""
    if cache is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    start, T = cache.pos, q.size(2)  # keys and values of earlier positions come from the cache (see KVCache below)
    cache.k[layer, :, :, start:start + T], cache.v[layer, :, :, start:start + T] = k, v
    k, v = cache.k[layer, :, :, :start + T], cache.v[layer, :, :, :start + T]
    if T == 1:  # one new token attends to everything so far
        return F.scaled_dot_product_attention(q, k, v)
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)  # query i: keys to start+i
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE = True  # GPT-2 init scales residual projections by 1/sqrt(2 * n_layer)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = causal_attention(q, k, v, cache, layer)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)  # pre-LayerNorm residual blocks
        return x + self.mlp(self.ln_2(x))


def hub_unreachable() -> bool:
    """Whether the Hugging Face Hub is out of reach (no connection, no proxy): its client would retry for half a
    minute, so from_pretrained then goes offline at once and uses the cache."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
        return False
    except OSError:
        return not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits (N, vocab) against targets (N,) (-1 = ignored), in fp32 a chunk of rows at a time;
    the gradient is made in the same pass and kept in the logits' dtype. So no fp32 (N, vocab) tensor ever exists:
    F.cross_entropy under autocast upcasts all the logits and keeps an fp32 log-softmax for backward, about 26 GB
    at 64 x 1024 x 50304 (the bf16 logits and their gradient here: 13 GB)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        valid = targets != -1
        count = valid.sum().clamp(min=1)
        grad, total = torch.empty_like(logits), torch.zeros((), device=logits.device)
        for s in range(0, logits.size(0), chunk):
            y, keep = targets[s:s + chunk].clamp(min=0).unsqueeze(1), valid[s:s + chunk].unsqueeze(1)
            logp = logits[s:s + chunk].float().log_softmax(dim=-1)  # (chunk, vocab) fp32, the only one alive
            total = total - (logp.gather(1, y) * keep).sum()
            g = logp.exp_().scatter_add_(1, y, -torch.ones_like(y, dtype=logp.dtype))  # softmax - one-hot
            grad[s:s + chunk] = g * keep / count
        ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied token embedding / output head
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02 * (2 * self.config.n_layer) ** -0.5 if getattr(module, "RESIDUAL_SCALE", False) else 0.02
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # the tied weight counts once
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden(self, idx: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final hidden states (B, T, C), the input of the output layer. With a cache,
        idx continues the cached positions and the cache is advanced."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        assert start + T <= self.config.block_size, f"{start + T} positions exceed block_size {self.config.block_size}"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: "KVCache | None" = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab), and the mean cross-entropy when targets (B, T) are given.
        With a cache (generation) only the last position's logits (B, 1, vocab) are computed."""
        x = self.hidden(idx, cache)
        if cache is not None:
            return self.lm_head(x[:, -1:]), None
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        logits2d, targets1d = logits.view(-1, logits.size(-1)), targets.reshape(-1)
        if logits.dtype == torch.float32:  # nothing to upcast: the fused kernel is faster (CPU, fp32 runs)
            return logits, F.cross_entropy(logits2d, targets1d, ignore_index=-1)
        return logits, ChunkedCrossEntropy.apply(logits2d, targets1d)  # bf16 logits: no fp32 copy of them all

    @classmethod
    def from_pretrained(cls, name_or_dir: str) -> "GPT":
        """Hugging Face GPT2LMHeadModel weights: a hub name such as 'gpt2' (downloaded once; the cache only when the
        Hub cannot be reached), or a save_pretrained folder. Raises OSError when neither works."""
        if name_or_dir in HF_NAMES and "HF_HUB_OFFLINE" not in os.environ and hub_unreachable():
            os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported, just below
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        c, sd_hf = hf.config, hf.state_dict()
        model = cls(GPTConfig(c.n_positions, c.vocab_size, c.n_layer, c.n_head, c.n_embd))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                src = sd_hf[k]
                if k.endswith(CONV1D_WEIGHTS):  # HF stores these as Conv1D: (in, out), not Linear's (out, in)
                    src = src.t()
                assert src.shape == v.shape, f"shape mismatch for {k}: {tuple(src.shape)} vs {tuple(v.shape)}"
                v.copy_(src)
        return model


# ----------------------------------------------------------------------------------------------------------------------
# model, modern recipe (--recipe modern): the same width and depth as GPT, with the changes that speedrun work on
# GPT-2 124M found to reach the same loss in fewer tokens. Each piece below says what it is and why.

class Rotary(nn.Module):
    """Rotary position embeddings (RoPE, Su et al. 2021), instead of learned positions: each pair of a query's or
    key's channels is rotated by an angle proportional to the position, at a different frequency per pair, so the
    dot product of a query and a key depends on their distance only. Nothing is learned; the angles of all
    block_size positions are computed once (non-persistent buffers: not in checkpoints)."""

    def __init__(self, head_size: int, block_size: int, base: float = 10000.0):
        super().__init__()
        freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs / 2,)
        angle = torch.outer(torch.arange(block_size, dtype=torch.float32), freq)  # (block_size, hs / 2)
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, nh, T, hs) at positions start .. start + T - 1 -> rotated, the same shape."""
        T = x.size(2)
        cos, sin = self.cos[start:start + T].to(x.dtype), self.sin[start:start + T].to(x.dtype)  # (T, hs / 2)
        x1, x2 = x.chunk(2, dim=-1)  # channel i is paired with channel i + hs / 2
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class ModernAttention(nn.Module):
    """Causal self-attention with rotary positions and QK-norm: queries and keys are RMS-normalised per head before
    the rotation, which bounds the attention logits and lets the larger Muon learning rates train stably. Separate
    q, k, v matrices (not one fused c_attn) so that Muon orthogonalises each on its own."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        C, hs = config.n_embd, config.n_embd // config.n_head
        self.c_q = nn.Linear(C, C, bias=False)
        self.c_k = nn.Linear(C, C, bias=False)
        self.c_v = nn.Linear(C, C, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(hs), nn.RMSNorm(hs)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.c_proj.ZERO_INIT = True
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor, rotary: Rotary, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (m(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for m in (self.c_q, self.c_k, self.c_v))  # (B, nh, T, hs)
        start = cache.pos if cache is not None else 0  # generation continues the positions of the cache
        q, k = rotary(self.q_norm(q), start).to(v.dtype), rotary(self.k_norm(k), start).to(v.dtype)  # autocast: bf16
        y = causal_attention(q, k, v, cache, layer)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class ReLU2MLP(nn.Module):
    """MLP with ReLU² (relu(x)**2, So et al. 2021, "Primer") instead of GELU: as cheap, and a little better."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.c_proj.ZERO_INIT = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class ModernBlock(nn.Module):
    """Pre-norm residual block as in GPT, with RMSNorm (scale only: no mean, no bias) instead of LayerNorm."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.RMSNorm(config.n_embd)
        self.attn = ModernAttention(config)
        self.ln_2 = nn.RMSNorm(config.n_embd)
        self.mlp = ReLU2MLP(config)

    def forward(self, x: torch.Tensor, rotary: Rotary, cache: "KVCache | None" = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, cache, layer)
        return x + self.mlp(self.ln_2(x))


class ModernGPT(nn.Module):
    """The modern recipe's model; the same interface as GPT (hidden, lm_head, forward, num_params), so sampling,
    HellaSwag, checkpoints and training use either. Besides the pieces above: the token embedding is RMS-normalised
    before the first block, the head is untied from the embedding (each gets its own learning rate), and the head
    and every residual projection (c_proj) start at zero, so each block starts as the identity and the first steps
    predict the uniform distribution instead of random logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            ln_e=nn.RMSNorm(config.n_embd),
            h=nn.ModuleList([ModernBlock(config) for _ in range(config.n_layer)]),
            ln_f=nn.RMSNorm(config.n_embd),
        ))
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.ZERO_INIT = True
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            if getattr(module, "ZERO_INIT", False):
                torch.nn.init.zeros_(module.weight)
            else:  # half the std that keeps activations at unit scale: the residual stream starts small
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.5 * module.in_features ** -0.5)
        elif isinstance(module, nn.Embedding):  # RMS-normalised right after the lookup: only directions matter
            torch.nn.init.normal_(module.weight, mean=0.0, std=1.0)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wte.weight.numel() if non_embedding else n  # the lookup is no matmul; the head is

    def hidden(self, idx: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final hidden states (B, T, C); with a cache, as GPT.hidden."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        assert start + T <= self.config.block_size, f"{start + T} positions exceed block_size {self.config.block_size}"
        x = self.transformer.ln_e(self.transformer.wte(idx))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, self.rotary, cache, i)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: "KVCache | None" = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As GPT.forward."""
        x = self.hidden(idx, cache)
        if cache is not None:
            return self.lm_head(x[:, -1:]), None
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


RECIPES = {"classic": GPT, "modern": ModernGPT}  # GPTConfig.recipe -> the model class


def build_model(config: GPTConfig) -> GPT | ModernGPT:
    return RECIPES[config.recipe](config)


# ----------------------------------------------------------------------------------------------------------------------
# sampling

class KVCache:
    """Keys and values of every layer for incremental decoding: (n_layer, B, nh, block_size, hs) each."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # positions past `pos` are never read
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, vocab) of the last position -> next token ids (B, 1): greedy for top_k 1 or temperature 0, else
    sampled among the top_k likeliest tokens (all when None), then the fewest of those whose mass reaches top_p."""
    logits = logits[:, :GPT2_VOCAB].float()  # never sample the padding ids
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    values, ids = torch.topk(logits / temperature, min(top_k or GPT2_VOCAB, GPT2_VOCAB), dim=-1)  # (B, k), sorted
    if top_p is not None and top_p < 1.0:
        probs = values.softmax(dim=-1)
        values = values.masked_fill(probs.cumsum(dim=-1) - probs > top_p, float("-inf"))  # mass before it > top_p
    return ids.gather(-1, torch.multinomial(values.softmax(dim=-1), 1, generator=generator))


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = 50, top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token (B, 1) max_new_tokens times, continuing idx (B, T). With use_cache the prompt is run once
    and each new token costs one position of compute. Past block_size the window is cropped to the last block_size
    tokens and each step is a full forward (positions shift, so cached keys no longer apply), as full recompute."""
    block = model.config.block_size
    cache = None
    device = next(model.parameters()).device
    autocast = torch.is_autocast_enabled(device.type)  # the cache holds keys in the dtype attention runs in
    dtype = torch.get_autocast_dtype(device.type) if autocast else next(model.parameters()).dtype
    for _ in range(max_new_tokens):
        if use_cache and idx.size(1) <= block:
            if cache is None:
                cache = KVCache(model.config, idx.size(0), device, dtype)
                logits, _ = model(idx, cache=cache)
            else:
                logits, _ = model(idx[:, -1:], cache=cache)
        else:
            logits, _ = model(idx[:, -block:])
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
        yield nxt


# ----------------------------------------------------------------------------------------------------------------------
# data

class ShardLoader:
    """Sequences of seq_len + 1 tokens at stride seq_len inside each memory-mapped shard (inputs and shifted targets).

    An epoch is every sequence once, in a seeded per-epoch order: a permutation of the shards, and inside each
    shard a permutation of its sequences (shuffle=False keeps file order, for validation). Step s of an epoch
    takes the sequences [s * N, (s + 1) * N), N = seqs_per_step; micro-step m of rank r takes its B of them at
    (m * world_size + r) * B. So a step's global batch is the same for any number of processes, ranks never
    overlap, and the position in the data is just the step number. batch() reads the next micro-batch ahead in a
    background thread (its pages may come from a cold network volume), and adds the time it waited to wait_s."""

    def __init__(self, folder: str, split: str, seq_len: int, seqs_per_step: int, seed: int, shuffle: bool = True,
                 vocab_size: int = GPTConfig.vocab_size):
        try:
            self.paths = fineweb.list_shards(folder, split)
            self.shards = [fineweb.read_shard(p) for p in self.paths]  # memmaps: nothing read
        except (ValueError, OSError) as e:
            raise UserError(f"bad shard: {first_line(e)} - rebuild it with fineweb.py") from None
        self.T, self.N, self.seed, self.shuffle, self.vocab_size = seq_len, seqs_per_step, seed, shuffle, vocab_size
        self.counts = np.array([(len(s) - 1) // seq_len if len(s) else 0 for s in self.shards], dtype=np.int64)
        self.n_seqs = int(self.counts.sum())
        self.steps_per_epoch = self.n_seqs // seqs_per_step  # the remainder (< one step) is left out each epoch
        self._epoch, self._order, self._ends, self._perms = -1, None, None, {}
        self._ahead: tuple[tuple, Future] | None = None  # (the batch() arguments it is for, its tokens)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="shard-read-ahead")
        self.wait_s = 0.0  # seconds batch() spent waiting for tokens

    def _layout(self, epoch: int) -> None:
        """The shard order of this epoch, and where each shard's sequences end in it."""
        if epoch != self._epoch:
            n = len(self.shards)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._epoch, self._order, self._ends, self._perms = epoch, order, np.cumsum(self.counts[order]), {}

    def _perm(self, shard: int) -> np.ndarray:
        """The order of one shard's sequences in the current epoch (a few cached: ranks walk shards in order)."""
        if shard not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(next(iter(self._perms)))
            count = int(self.counts[shard])
            rng = np.random.default_rng([self.seed, self._epoch, shard])
            self._perms[shard] = rng.permutation(count) if self.shuffle else np.arange(count)
        return self._perms[shard]

    def sequences(self, step: int, micro: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
        """The (B, T + 1) uint16 tokens of one micro-step of one rank; step counts from the start of training."""
        epoch, s = divmod(step, self.steps_per_epoch)
        self._layout(epoch)
        first = s * self.N + (micro * world_size + rank) * batch_size
        assert first + batch_size <= (s + 1) * self.N, "micro-batches overrun the step: check the accumulation"
        out = np.empty((batch_size, self.T + 1), dtype=np.uint16)
        for b, i in enumerate(range(first, first + batch_size)):
            k = int(np.searchsorted(self._ends, i, side="right"))  # position of the shard in this epoch's order
            shard = int(self._order[k])
            j = int(self._perm(shard)[i - (self._ends[k - 1] if k else 0)])  # sequence index inside the shard
            out[b] = self.shards[shard][j * self.T: j * self.T + self.T + 1]
            if out[b].max() >= self.vocab_size:  # on CUDA an embedding index past the vocab kills every rank
                raise UserError(f"{self.paths[shard]} holds token id {out[b].max()}, but the model's vocabulary has "
                                f"{self.vocab_size} - rebuild the shard with fineweb.py, or it was not made with "
                                "the GPT-2 tokenizer")
        return out

    def batch(self, step: int, micro: int, rank: int, world_size: int, batch_size: int,
              device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) int64 on device; pinned memory and an async copy on CUDA. Starts reading the
        micro-batch after this one (the next step's first after the last micro-step)."""
        t0, key = time.perf_counter(), (step, micro, rank, world_size, batch_size)
        ahead, self._ahead = self._ahead, None
        tokens = ahead[1].result() if ahead else None  # always waited for: sequences() is not run twice at once
        if ahead is None or ahead[0] != key:
            tokens = self.sequences(*key).astype(np.int64)
        self.wait_s += time.perf_counter() - t0
        more = micro + 1 < self.N // (world_size * batch_size)
        nxt = (step, micro + 1) if more else (step + 1, 0)
        self._ahead = (nxt + key[2:], self._reader.submit(lambda: self.sequences(*nxt, *key[2:]).astype(np.int64)))
        buf = torch.from_numpy(tokens)
        buf = buf.pin_memory().to(device, non_blocking=True) if device.startswith("cuda") else buf.to(device)
        return buf[:, :-1], buf[:, 1:]


# ----------------------------------------------------------------------------------------------------------------------
# optimisation

# --- the modern recipe's optimizer: Muon for the hidden matrices, AdamW for the rest, warmup-stable-decay lr ---

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


def make_modern_optimizer(model: ModernGPT, args: argparse.Namespace, device: str) -> Optimizers:
    """Muon at --muon-lr for the blocks' matrices; AdamW (no weight decay) at --embed-lr for the token embedding and
    at --head-lr for the head and the RMSNorm gains. Each group's lr_scale is its lr over --muon-lr: the schedule
    (get_lr) gives the Muon lr of a step, and train_step scales it for each group."""
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    gains = [p for p in model.parameters() if p.dim() < 2]
    adam = torch.optim.AdamW([
        dict(params=[model.transformer.wte.weight], lr=args.embed_lr, lr_scale=args.embed_lr / args.muon_lr),
        dict(params=[model.lm_head.weight, *gains], lr=args.head_lr, lr_scale=args.head_lr / args.muon_lr)],
        betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, fused=device.startswith("cuda"))
    muon = Muon([dict(params=hidden, lr_scale=1.0)], lr=args.muon_lr)
    return Optimizers(adam, muon)


def wsd_lr(step: int, total_steps: int, args: argparse.Namespace) -> float:
    """Warmup-stable-decay: linear warmup over --warmup-steps, --muon-lr until the last --cooldown fraction of
    total_steps, then linear decay to zero. (A second epoch, a larger total, returns to the stable lr.)"""
    if step < args.warmup_steps:
        return args.muon_lr * (step + 1) / args.warmup_steps
    decay_start = total_steps * (1 - args.cooldown)
    if step < decay_start:
        return args.muon_lr
    return args.muon_lr * max(0.0, (total_steps - step) / max(1.0, total_steps - decay_start))


def make_optimizer(model: GPT, args: argparse.Namespace, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D parameters only (not on biases and LayerNorms); fused on CUDA. (The modern
    recipe: make_modern_optimizer below.)"""
    if model.config.recipe == "modern":
        return make_modern_optimizer(model, args, device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.startswith("cuda"))


def get_lr(step: int, total_steps: int, args: argparse.Namespace, join: tuple[int, float] | None = None) -> float:
    """Linear warmup, then cosine decay to 10% of --lr at total_steps (and 10% after); the modern recipe: wsd_lr.
    join = (step, lr): a run continued on a longer schedule ramps linearly from the lr it ended with to this
    schedule over --warmup-steps."""
    min_lr = 0.1 * args.lr
    if getattr(args, "recipe", "classic") == "modern":
        lr = wsd_lr(step, total_steps, args)
    elif step < args.warmup_steps:
        lr = args.lr * (step + 1) / args.warmup_steps
    elif step >= total_steps:
        lr = min_lr
    else:
        progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
        lr = min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - min_lr)
    if join is not None and join[0] <= step < join[0] + args.warmup_steps:
        lr = join[1] + (lr - join[1]) * (step - join[0] + 1) / args.warmup_steps
    return lr


def schedule_join(ckpt: dict, total_steps: int, steps_per_epoch: int,
                  args: argparse.Namespace) -> tuple[int, float] | None:
    """Where a resumed run's lr schedule changed (a larger --epochs after the end of a run): (step, the lr it last
    trained with), for get_lr's ramp; a ramp still under way continues. None when the schedule is the same."""
    step, old = ckpt["step"], argparse.Namespace(**ckpt["config"])
    old_join = tuple(ckpt["lr_join"]) if ckpt.get("lr_join") else None
    old_total = ckpt.get("total_steps") or max(1, round(old.epochs * steps_per_epoch))
    if old_total == total_steps:
        return old_join
    last_lr = get_lr(step - 1, old_total, old, old_join)
    return (step, last_lr) if step > 0 and not math.isclose(last_lr, get_lr(step, total_steps, args)) else None


def train_step(model: nn.Module, raw: GPT, optimizer: torch.optim.Optimizer, next_batch: Callable, accum: int,
               autocast, grad_clip: float, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `accum` micro-batches from next_batch(micro) -> (x, y). Returns the step's mean loss
    and the gradient norm before clipping, as device tensors (no host sync here)."""
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    loss_sum = torch.zeros((), device=next(raw.parameters()).device)
    for micro in range(accum):
        x, y = next_batch(micro)
        if ddp:  # all-reduce the gradients only after the last micro-step
            model.require_backward_grad_sync = micro == accum - 1
        with autocast:
            _, loss = model(x, y)
        loss = loss / accum  # the accumulated gradient is the mean over the whole step's tokens
        loss_sum += loss.detach()
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip or math.inf)  # 0: measured, not clipped
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the modern recipe's groups have their own lr (classic: 1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, norm


# Dense bf16 FLOP/s by a part of the GPU's name, for MFU; the first match wins, so variants come before their family.
# NVIDIA's datasheets give these with sparsity (twice as much): H100 SXM 1979, PCIe 1513, NVL 1671; H200 1979, NVL 1671.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200 NVL": 835e12, "H200": 989e12,
                   "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "RTX 4090": 165e12,
                   "RTX 3090": 71e12}


def peak_flops(device: str, name: str | None = None) -> float | None:
    """The dense bf16 peak of a CUDA device (or of a GPU called name), None when unknown."""
    if name is None and not device.startswith("cuda"):
        return None
    name = name or torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(config: GPTConfig, n_params: int) -> int:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) plus 12 L H Q T for attention."""
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.block_size


# ----------------------------------------------------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def val_loss(model: nn.Module, loader: ShardLoader, steps: int, accum: int, rank: int, world_size: int,
             batch_size: int, device: str, autocast) -> float:
    """Mean loss over the first `steps` val batches of the training batch shape (so a compiled model does not
    recompile); the sequences are split over the ranks like a training step, and the result all-reduced."""
    total = torch.zeros((), device=device)
    for step in range(steps):
        for micro in range(accum):
            x, y = loader.batch(step, micro, rank, world_size, batch_size, device)
            with autocast:
                _, loss = model(x, y)
            total += loss.float()
    if world_size > 1:
        dist.all_reduce(total)  # SUM: gloo has no AVG
    return total.item() / (steps * accum * world_size)


SAMPLE_PROMPT = "Hello, I'm a language model,"


def sample_texts(model: GPT, device: str, seed: int, autocast, n: int = 2, max_new_tokens: int = 32) -> list[str]:
    """A few short continuations of SAMPLE_PROMPT from the uncompiled model (varying shapes: no recompiles)."""
    enc = fineweb.get_tokenizer()
    prompt = enc.encode(SAMPLE_PROMPT)
    idx = torch.tensor([prompt] * n, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast:
        new = list(generate(model, idx, min(max_new_tokens, model.config.block_size - len(prompt)), top_k=50,
                            generator=generator))
    rows = torch.cat(new, dim=1).tolist() if new else [[] for _ in range(n)]
    return [enc.decode(prompt + row) for row in rows]


def load_hellaswag_examples(path: str | None, world: int, device: str) -> tuple[list | None, str | None]:
    """(examples, None), or (None, why not) when the data is missing and cannot be downloaded. Under DDP every rank
    loads it (downloads are atomic per process) and they agree: HellaSwag runs only if every rank has it."""
    try:
        examples, why = hellaswag.load_examples(path), None
    except hellaswag.HellaSwagUnavailable as e:
        examples, why = None, str(e).replace("--data FILE", "--hellaswag-data FILE")  # the option's name here
    if world > 1:
        ready = torch.tensor(int(examples is not None), device=device)
        dist.all_reduce(ready)  # a rank without the data would skip collectives the others wait in
        if ready.item() < world:
            examples, why = None, why or "HellaSwag data missing on another process"
    return examples, why


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints

CKPT_NAME = re.compile(r"model_(\d+)\.pt$")
OURS = ("model", "model_config", "optimizer", "step", "config")  # what every training checkpoint of ours holds


class CheckpointDamaged(UserError):
    """A file that is truncated, or whose tensors no longer match the checksum saved with them."""


class PeerConfig:
    """Stands in for the GPTConfig dataclass that build-nanogpt pickles into its checkpoints (as __main__.GPTConfig, or
    model.GPTConfig): a weights-only load may create it and set its fields, and no code of theirs runs."""


PEER_GLOBALS = [(PeerConfig, "__main__.GPTConfig"), (PeerConfig, "model.GPTConfig")]


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


def tensor_checksum(state: dict) -> int:
    """A CRC32 of each tensor's bytes, on all cores (zlib lets go of the GIL), then one of those CRCs in order: about
    1 to 2 GB/s per core (bench/bench_checkpoint.py)."""
    crc = lambda t: zlib.crc32(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # noqa: E731
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        return zlib.crc32(np.array(list(pool.map(crc, tensors(state))), dtype=np.uint32).tobytes())


def load_file(path: str | Path, mmap: bool = False) -> object:
    """torch.load with weights_only=True, so nothing in the file can run code; PeerConfig is allowed under the names
    other scripts pickle their GPTConfig as. UserError naming the global it refused; CheckpointDamaged otherwise."""
    try:
        with torch.serialization.safe_globals(PEER_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if refused:
            raise UserError(f"could not load {path}: it pickles {printable(refused.group(1))}, which a safe "
                            "(weights-only) load refuses - save its state_dict, or a Hugging Face folder, instead") \
                from None
        raise CheckpointDamaged(f"could not load {path}: truncated or not a checkpoint ({type(e).__name__}: "
                                f"{printable(first_line(e))[:200]})") from None


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint of this script with its checksum verified, or UserError (CheckpointDamaged: damaged)."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in OURS):
        raise UserError(f"{path} is not a train_gpt2.py training checkpoint (it needs {', '.join(OURS)}) - "
                        "--init-from starts a new run from its weights")
    if "checksum" in ckpt and tensor_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointDamaged(f"{path} is damaged: its tensors do not match the checksum saved with them")
    return ckpt


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
    only ones this script wrote and can read, and never the one a run ended with (state["final"])."""
    if path.exists() and (head := head_of(path)) is not None and any(k not in head for k in OURS):
        raise UserError(f"{path} is another script's checkpoint - not overwriting it; pass another --log-dir")
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
    newer ones passed over. UserError when the one named cannot be resumed from or does not fit the options, and
    when --resume auto meets model_*.pt files it cannot resume from and no good checkpoint of ours before them."""
    path, ckpt, skipped, foreign = None, None, [], []
    if args.resume not in ("auto", "none"):
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such file - pass a model_*.pt, auto or none")
        try:
            path, ckpt = Path(args.resume), read_checkpoint(Path(args.resume))
        except UserError as e:
            raise UserError(f"--resume: {e}") from None
    ours = set(list_checkpoints(args.log_dir)) if args.resume == "auto" else set()
    others = [p for p in Path(args.log_dir).glob("model_*.pt") if p not in ours] if args.resume == "auto" else []
    for candidate in reversed(list_checkpoints(args.log_dir)) if args.resume == "auto" else []:
        try:
            path, ckpt = candidate, read_checkpoint(candidate)
            break
        except CheckpointDamaged as e:
            skipped.append(str(e))
        except UserError:
            foreign.append(candidate)
    if foreign or others or (skipped and ckpt is None):
        names = ", ".join(p.name for p in sorted(foreign + others)) or "; ".join(skipped)
        raise UserError(f"{args.log_dir}/ holds checkpoints that --resume auto cannot continue from ({names}) - "
                        "start from their weights with --init-from FILE, or from scratch with --resume none, "
                        "either with another --log-dir")
    if ckpt is not None and {"recipe": "classic", **ckpt["model_config"]} != asdict(config):  # older: no recipe
        raise UserError(f"{path} holds a model {ckpt['model_config']}, but the options ask for {asdict(config)} - "
                        "pass the same --recipe/--model/--n-*/--seq-len/--init-from, or --resume none")
    if ckpt is not None and ckpt["config"].get("total_batch_size") != args.total_batch_size:
        raise UserError(f"{path} was trained with --total-batch-size {ckpt['config'].get('total_batch_size')}; "
                        "resume with the same value (the data position is counted in steps)")
    return path, ckpt, skipped


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


def load_model(spec: str, device: str | torch.device = "cpu") -> tuple[GPT | ModernGPT, dict]:
    """(GPT or ModernGPT, as its recipe says, in eval mode on device, its training config or {}) from a checkpoint
    of this script, build-nanogpt or
    nanoGPT, an OpenAI name (gpt2 ... gpt2-xl) or a Hugging Face GPT-2 folder; UserError when it cannot.
    (hellaswag.py, infer.py and --init-from use it.)"""
    path = Path(spec)
    hub = spec in HF_NAMES and not path.exists()
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
        raise UserError(f"no such file or folder: {spec} - pass a model_*.pt from train_gpt2.py, a Hugging Face "
                        f"GPT-2 folder or one of {', '.join(HF_NAMES)}")
    ckpt = load_file(path)
    if isinstance(ckpt, dict) and "checksum" in ckpt and tensor_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointDamaged(f"{path} is damaged: its tensors do not match the checksum saved with them")
    config, state, note = peer_weights(ckpt, path)
    try:
        model = build_model(config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"could not load {spec}: its weights do not fit train_gpt2's model "
                        f"({type(e).__name__}: {printable(first_line(e))})") from None
    if note:
        print(f"note: {note}", file=sys.stderr)
    return model.to(device).eval(), ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}


def init_weights(args: argparse.Namespace) -> tuple[GPTConfig, dict]:
    """--init-from: (config, weights) of that model cut to --seq-len positions; args' --n-* take its shape."""
    model, _ = load_model(args.init_from)
    c = model.config
    if args.seq_len > c.block_size:
        raise UserError(f"--seq-len {args.seq_len} is longer than the {c.block_size} positions of {args.init_from} - "
                        f"pass --seq-len {c.block_size} or less")
    args.n_layer, args.n_head, args.n_embd, args.recipe = c.n_layer, c.n_head, c.n_embd, c.recipe
    args.model = next((name for name, d in MODEL_SIZES.items() if d == (c.n_layer, c.n_head, c.n_embd)), "custom")
    state = model.state_dict()
    if "transformer.wpe.weight" in state:  # learned positions (classic); the modern recipe's rotary ones have none
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:args.seq_len]
    return replace(c, block_size=args.seq_len), state

# ----------------------------------------------------------------------------------------------------------------------
# run plumbing: devices, processes, logs, signals

def print0(*args, **kwargs) -> None:
    """print on the process that logs (rank 0)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def pick_device(name: str) -> str:
    """--device auto|cuda|mps|cpu -> the device to use (auto prefers cuda, then mps, then cpu). UserError when the
    one asked for is not usable here. (hellaswag.py and infer.py use it too.)"""
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU - check nvidia-smi, or use --device cpu")
    if name == "mps" and not mps:
        raise UserError("--device mps, but this torch has no MPS support - use --device cpu")
    return name


def setup_distributed(device: str) -> tuple[int, int, int, str, bool]:
    """(rank, local rank, world size, device, is_master). Under torchrun: NCCL on CUDA, Gloo elsewhere; the
    device comes from LOCAL_RANK (the process on this node), the data slice from RANK of WORLD_SIZE."""
    device = pick_device(device)
    if "RANK" not in os.environ:
        return 0, 0, 1, device, True
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world, device, rank == 0


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
            raise UserError(f"{log_dir}/ is in use by another training run ({other}) - wait for it or stop it, "
                            "or pass another --log-dir") from None
        except OSError:  # a filesystem without flock: the file still names us
            pass
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:
        raise UserError(f"{log_dir}/{LOCK_NAME} keeps changing - another run is starting there; pass another --log-dir")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    LOCKS.append(lambda: (path.unlink(missing_ok=True), os.close(fd)))  # unlink while still holding the lock
    atexit.register(release_log_dirs)


class RunLog:
    """LOG_DIR/log.txt (one line per train/val/hella value) and LOG_DIR/metrics.jsonl (one JSON object per event),
    appended, never truncated; optionally Weights & Biases. Only the master process writes."""

    TEXT = {"train": "{step} train {loss:.6f}", "val": "{step} val {loss:.4f}",
            "hellaswag": "{step} hella {acc_norm:.4f}"}

    def __init__(self, log_dir: str, active: bool, wandb_project: str | None, config: dict):
        self.active, self.wandb, self.dir = active, None, Path(log_dir)
        if not active:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if wandb_project:
            try:
                import wandb
                self.wandb = wandb.init(project=wandb_project, config=config, dir=str(self.dir))
            except ImportError:
                raise UserError("--wandb needs the wandb package: pip install wandb") from None

    def close(self) -> None:
        """Flush Weights & Biases (its summary holds each series' last value)."""
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def event(self, event: str, **fields) -> None:
        if not self.active:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"event": event, **fields}) + "\n")
        if event in self.TEXT:
            with open(self.dir / "log.txt", "a") as f:
                f.write(self.TEXT[event].format(**fields) + "\n")
        if self.wandb is not None:
            numbers = {f"{event}/{k}": v for k, v in fields.items() if isinstance(v, (int, float)) and k != "step"}
            if numbers:
                self.wandb.log(numbers, step=fields.get("step"))


STOP = {}  # the signal (SIGTERM / SIGINT) that asked training to stop, set by request_stop


def request_stop(signum: int, frame) -> None:
    STOP.setdefault("signal", signum)
    signal.signal(signum, signal.SIG_DFL)  # a second one stops at once, without a checkpoint
    print(f"train_gpt2.py: {signal.Signals(signum).name} - finishing this step, then saving a checkpoint", flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# config

PRESETS = {  # a preset only changes defaults: an explicit flag always wins
    "demo": dict(data="demo_shards", n_layer=4, n_head=4, n_embd=64, batch_size=8, seq_len=64, total_batch_size=512,
                 epochs=0.25, lr=1e-2, warmup_steps=20, eval_every=50, val_steps=4, hellaswag_every=100_000,
                 sample_every=100, checkpoint_every=100, log_dir="log/demo")}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fineweb.HelpFormatter,
                                epilog="Defaults reproduce GPT-2 124M on FineWeb-Edu 10B tokens.")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="demo: a small model on demo_shards/ (fineweb.py --demo), CPU, 2 minutes; sets defaults only")
    # data
    p.add_argument("--data", default="edu_fineweb10B", help="folder of token shards from fineweb.py (or llm.c .bin)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence; the model's block_size")
    # model
    p.add_argument("--model", choices=list(MODEL_SIZES), default=None, help="GPT-2 size by depth (default: d12)")
    p.add_argument("--n-layer", type=int, default=None, help="layers (default: from --model)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads (default: from --model)")
    p.add_argument("--n-embd", type=int, default=None, help="embedding width (default: from --model)")
    p.add_argument("--recipe", choices=list(RECIPES), default="classic",
                   help="classic: GPT-2 with AdamW and cosine lr; modern: rotary, RMSNorm, QK-norm, ReLU², untied "
                        "head, Muon + AdamW, warmup-stable-decay lr (class ModernGPT)")
    # optimisation
    p.add_argument("--batch-size", type=int, default=64, help="sequences per micro-batch and process; lower it on OOM")
    p.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step (by accumulation)")
    p.add_argument("--epochs", type=float, default=1.0,
                   help="passes over the training shards that the lr schedule spans (a fraction trains on part)")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps, the schedule unchanged (0 = run all --epochs)")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate; cosine decay to 10%% of it")
    p.add_argument("--warmup-steps", type=int, default=715, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on 2-D parameters")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0 = off)")
    p.add_argument("--muon-lr", type=float, default=0.02, help="modern: Muon lr of the blocks' matrices (the "
                   "logged lr; --lr and --weight-decay are classic's)")
    p.add_argument("--embed-lr", type=float, default=0.3, help="modern: AdamW lr of the token embedding")
    p.add_argument("--head-lr", type=float, default=0.008, help="modern: AdamW lr of the head and the RMSNorm gains")
    p.add_argument("--cooldown", type=float, default=0.4,
                   help="modern: the last fraction of the steps, over which the lr decays linearly to zero")
    p.add_argument("--seed", type=int, default=1337, help="seed for the weights and the data order")
    # evaluation and logs
    p.add_argument("--eval-every", type=int, default=250, help="val loss every N steps (0 = off)")
    p.add_argument("--val-steps", type=int, default=20, help="val batches of --total-batch-size tokens each")
    p.add_argument("--hellaswag-every", type=int, default=250, help="HellaSwag accuracy every N steps (0 = off)")
    p.add_argument("--hellaswag-data", default=None,
                   help="hellaswag_val.jsonl (default: hellaswag.py's location, downloaded if missing)")
    p.add_argument("--sample-every", type=int, default=250, help="print a few samples every N steps (0 = off)")
    p.add_argument("--log-dir", default="log", help="checkpoints, log.txt and metrics.jsonl")
    p.add_argument("--wandb", default=None, help="also log to this Weights & Biases project (needs wandb)")
    # checkpoints
    p.add_argument("--checkpoint-every", type=int, default=1000, help="save a checkpoint every N steps and at the end")
    p.add_argument("--keep-checkpoints", type=int, default=3,
                   help="keep only the newest N checkpoints, and the last of each run (0 = keep all)")
    p.add_argument("--resume", default="auto", help="auto (newest valid checkpoint in --log-dir), a path, or none")
    p.add_argument("--init-from", default=None, help="a new run from these weights (step 0, fresh optimizer): a "
                   "checkpoint of train_gpt2.py, build-nanogpt or nanoGPT, gpt2 ... gpt2-xl or a Hugging Face folder")
    # hardware
    fineweb.add_device_option(p)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off elsewhere)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="bfloat16: autocast the forward passes (default on CUDA); float32 (default elsewhere)")
    # preflight
    p.add_argument("--preflight", action=argparse.BooleanOptionalAction, default=False,
                   help="instead of training: check data, steps, evals, checkpoint and disk at the real shapes, "
                        "estimate time and cost, write LOG_DIR/preflight.json; exit 1 if a check fails")
    p.add_argument("--preflight-steps", type=int, default=4, help="optimizer steps the preflight runs (2+)")
    p.add_argument("--gpu-hour-price", type=float, default=float(os.environ.get("GPU_HOUR_PRICE") or 0) or None,
                   help="price of one GPU-hour, for the preflight's cost estimate (default: $GPU_HOUR_PRICE)")

    known, _ = p.parse_known_args(argv)  # the preset first: its values become defaults, so explicit flags win
    preset = dict(PRESETS.get(known.preset, {}))
    if known.model is not None:  # an explicit --model beats the preset's width and depth
        preset = {k: v for k, v in preset.items() if k not in ("n_layer", "n_head", "n_embd")}
    p.set_defaults(**preset)
    args = p.parse_args(argv)
    for key, value in zip(("n_layer", "n_head", "n_embd"), MODEL_SIZES[args.model or "d12"]):
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    dims = (args.n_layer, args.n_head, args.n_embd)
    args.model = next((name for name, d in MODEL_SIZES.items() if d == dims), "custom")
    return args


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """UserError for settings that cannot train."""
    for key in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "total_batch_size", "val_steps",
                "checkpoint_every", "warmup_steps"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if min(args.muon_lr, args.embed_lr, args.head_lr) <= 0 or not 0 <= args.cooldown <= 1:
        raise UserError("--muon-lr, --embed-lr and --head-lr must be positive, --cooldown between 0 and 1")
    if not (0 < args.epochs < math.inf and 0 < args.lr < math.inf and 0 <= args.grad_clip < math.inf) or \
            min(args.max_steps, args.keep_checkpoints, args.eval_every, args.hellaswag_every, args.sample_every) < 0:
        raise UserError(f"--epochs and --lr must be positive numbers (got {args.epochs}, {args.lr}), --grad-clip >= 0 "
                        f"(got {args.grad_clip}; 0 = off); --max-steps, --keep-checkpoints, --*-every must be >= 0")
    if args.preflight_steps < 2:
        raise UserError(f"--preflight-steps must be at least 2 (the first one compiles), got {args.preflight_steps}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    per_step = args.batch_size * args.seq_len * world_size  # tokens of one micro-step over all processes
    if args.total_batch_size % per_step:
        raise UserError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size x --seq-len x "
                        f"processes = {args.batch_size} x {args.seq_len} x {world_size} = {per_step}; change one")


# ----------------------------------------------------------------------------------------------------------------------
# training

@dataclass
class Run:
    """What the parts of one training run share. `model` is what trains (compiled and/or DDP-wrapped), `compiled`
    what validates at the training shape, `raw` the plain GPT that samples, scores HellaSwag and is saved."""
    args: argparse.Namespace
    rank: int
    world: int
    device: str
    autocast: object  # a torch.autocast context (bf16 on CUDA) or nullcontext
    train_data: ShardLoader
    val_data: ShardLoader
    val_steps: int
    accum: int  # micro-steps per optimizer step on each process
    total_steps: int  # the steps the lr schedule spans (all --epochs)
    last_step: int  # where this run stops (--max-steps, or total_steps)
    raw: GPT
    compiled: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    log: RunLog
    hellaswag_examples: list | None = None
    step: int = 0  # optimizer steps done
    last_val: float | None = None
    dt_avg: float | None = None  # seconds per step, smoothed, for the eta
    lr_join: tuple[int, float] | None = None  # (step, lr) where a longer schedule began: get_lr ramps from there


def start_run(args: argparse.Namespace) -> Run:
    """Processes, data, model, optimizer and logs of a run, continued from a checkpoint when there is one."""
    check_args(args, int(os.environ.get("WORLD_SIZE", "1")))
    if int(os.environ.get("RANK", "0")) == 0:
        lock_log_dir(args.log_dir)  # before any GPU work: one run per folder, and a folder it can write
    rank, local_rank, world, device, is_master = setup_distributed(args.device)
    cuda = device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if args.dtype == "bfloat16" \
        else nullcontext()  # weights and optimizer state stay fp32; bf16 autocast runs the matmuls
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for whatever runs outside autocast
    init = init_weights(args) if args.init_from else None  # (config, state dict); sets args.n_* to its shape
    config = init[0] if init else GPTConfig(block_size=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                                            n_embd=args.n_embd, recipe=args.recipe)
    if not Path(args.data).is_dir():
        raise UserError(f"no data folder {args.data}/ - run python fineweb.py (or fineweb.py --demo for demo_shards/)")
    train_data = ShardLoader(args.data, "train", args.seq_len, args.total_batch_size // args.seq_len, args.seed,
                             vocab_size=config.vocab_size)
    if train_data.steps_per_epoch == 0:
        what = f"only {train_data.n_seqs * args.seq_len:,} tokens in training shards" if train_data.shards else \
            "no training shards"
        raise UserError(f"{args.data}/ has {what}, less than one step of --total-batch-size {args.total_batch_size} - "
                        "run fineweb.py to write shards, or lower --total-batch-size")
    val_data = ShardLoader(args.data, "val", args.seq_len, train_data.N, args.seed, shuffle=False,
                           vocab_size=config.vocab_size)
    val_steps = min(args.val_steps, val_data.steps_per_epoch)
    if args.eval_every and not val_steps:
        print0(f"train_gpt2.py: notice: no val shard in {args.data}/ with a full batch - val loss off")
    total_steps = max(1, round(args.epochs * train_data.steps_per_epoch))  # the lr schedule spans all --epochs

    torch.manual_seed(args.seed)
    ckpt_path, ckpt, skipped = find_resume(args, config)
    raw = build_model(config)
    if init and ckpt is None:
        raw.load_state_dict(init[1])
    raw = raw.to(device)
    optimizer = make_optimizer(raw, args, device)
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if cuda and len(ckpt["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    if is_master:
        check_free_space(args.log_dir, raw)
    use_compile = args.compile if args.compile is not None else cuda
    compiled = torch.compile(raw) if use_compile else raw  # train and val at one shape; samples/HellaSwag use raw
    model = nn.parallel.DistributedDataParallel(compiled, device_ids=[local_rank] if cuda else None) \
        if world > 1 else compiled
    run = Run(args, rank, world, device, autocast, train_data, val_data, val_steps,
              accum=args.total_batch_size // (args.batch_size * args.seq_len * world), total_steps=total_steps,
              last_step=min(total_steps, args.max_steps) if args.max_steps else total_steps, raw=raw,
              compiled=compiled, model=model, optimizer=optimizer,
              log=RunLog(args.log_dir, is_master and not args.preflight, args.wandb, vars(args)))
    print0(f"train_gpt2.py config: {json.dumps(vars(args))}")
    other = next(r for r in RECIPES if r != args.recipe)
    with torch.device("meta"):  # shapes only: no memory, no init
        other_params = build_model(GPTConfig(**{**asdict(config), "recipe": other})).num_params()
    print0(f"{args.recipe} recipe: {raw.num_params() / 1e6:.1f}M parameters ({other} at this size: "
           f"{other_params / 1e6:.1f}M) | {world} process(es) on {device} | {run.accum} micro-steps "
           f"of {args.batch_size} x {args.seq_len} per step | {train_data.steps_per_epoch} steps per epoch | "
           f"{total_steps} steps scheduled")
    run.log.event("config", step=ckpt["step"] if ckpt else 0, config=vars(args), model_config=asdict(config),
                  world_size=world, device=torch.cuda.get_device_name(device) if cuda else device, time=time.time())
    if ckpt is not None:
        resume_notices(run, ckpt_path, ckpt, skipped)
    elif init:
        print0(f"starting from the weights of {args.init_from} at step 0, with a fresh optimizer")
    if args.hellaswag_every and run.step < run.last_step:
        run.hellaswag_examples, why = load_hellaswag_examples(args.hellaswag_data, world, device)
        if why:
            print0(f"train_gpt2.py: notice: {why} - training without HellaSwag evals")
    return run


def resume_notices(run: Run, path: Path, ckpt: dict, skipped: list[str]) -> None:
    """Take a resumed checkpoint's step, val loss and lr ramp into the run, and say what happened."""
    run.step, run.last_val = ckpt["step"], ckpt.get("val_loss")
    for why in skipped:  # newer checkpoints that are damaged
        if run.rank == 0:
            print(f"train_gpt2.py: warning: {why} - resuming from {path} instead", file=sys.stderr, flush=True)
        run.log.event("resume_fallback", step=run.step, path=str(path), skipped=why)
    print0(f"resuming from {path} at step {run.step}")
    run.lr_join = schedule_join(ckpt, run.total_steps, run.train_data.steps_per_epoch, run.args)
    if run.lr_join and run.lr_join[0] == run.step:
        to = get_lr(run.step + run.args.warmup_steps - 1, run.total_steps, run.args)
        print0(f"the lr schedule now spans {run.total_steps} steps: ramping the lr from {run.lr_join[1]:.2e} to the "
               f"new schedule ({to:.2e}) over the next {run.args.warmup_steps} steps (--warmup-steps)")
        run.log.event("lr_ramp", step=run.step, lr_from=run.lr_join[1], lr_to=to, steps=run.args.warmup_steps)


def run_evals(run: Run, step: int) -> None:
    """Val loss, HellaSwag and samples at the steps their --*-every asks for, and at the last step."""
    args = run.args
    due = lambda every: every > 0 and (step % every == 0 or step == run.last_step)  # noqa: E731
    if due(args.eval_every) and run.val_steps:
        run.last_val = val_loss(run.compiled, run.val_data, run.val_steps, run.accum, run.rank, run.world,
                                args.batch_size, run.device, run.autocast)
        print0(f"step {step:5d} | val loss {run.last_val:.4f}")
        run.log.event("val", step=step, loss=run.last_val)
    if due(args.hellaswag_every) and run.hellaswag_examples:
        dtype = torch.bfloat16 if args.dtype == "bfloat16" else None  # the ending losses are fp32 either way
        result = hellaswag.evaluate(run.raw, run.hellaswag_examples, run.device, rank=run.rank,
                                    world_size=run.world, autocast_dtype=dtype)
        print0(f"step {step:5d} | HellaSwag acc_norm {result['acc_norm']:.4f} ({result['n']} examples)")
        run.log.event("hellaswag", step=step, acc=result["acc"], acc_norm=result["acc_norm"], n=result["n"])
    if due(args.sample_every) and run.rank == 0:
        for text in sample_texts(run.raw, run.device, args.seed + step, run.autocast):
            print0(f"sample: {text!r}")
            run.log.event("sample", step=step, text=text)


def save_run(run: Run, path: Path | None = None) -> None:
    """Rank 0 saves everything an exact resume needs; the others wait until it is written. A path other than the
    step's model_*.pt (the preflight's) rotates nothing."""
    if run.rank == 0:
        step, per_epoch = run.step, run.train_data.steps_per_epoch
        keep = run.args.keep_checkpoints if path is None else 0
        path = path or Path(run.args.log_dir) / f"model_{step:05d}.pt"
        cuda = run.device.startswith("cuda")
        save_checkpoint(path, {
            "model": run.raw.state_dict(), "optimizer": run.optimizer.state_dict(), "step": step,
            "epoch": step // per_epoch, "loader": {"epoch": step // per_epoch, "step": step % per_epoch,
                                                   "steps_per_epoch": per_epoch},
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
            "config": vars(run.args), "model_config": asdict(run.raw.config), "val_loss": run.last_val,
            "total_steps": run.total_steps, "lr_join": run.lr_join, "final": step == run.last_step}, keep)
        print0(f"saved {path}")
        run.log.event("checkpoint", step=step, path=str(path))
    if run.world > 1:
        dist.barrier()  # nobody exits while rank 0 is still writing


def optimizer_step(run: Run) -> bool:
    """One optimizer step at run.step, printed and logged. Returns whether a rank was asked to stop; UserError when
    the loss is not finite."""
    t0, step, args = time.time(), run.step, run.args
    lr = get_lr(step, run.total_steps, args, run.lr_join)
    next_batch = lambda micro: run.train_data.batch(step, micro, run.rank, run.world, args.batch_size,  # noqa: E731
                                                    run.device)
    loss, norm = train_step(run.model, run.raw, run.optimizer, next_batch, run.accum, run.autocast, args.grad_clip, lr)
    stats = torch.stack([loss.float(), norm.float(), torch.full((), float(bool(STOP)), device=run.device)])
    if run.world > 1:
        dist.all_reduce(stats)  # summed over ranks: a stop on any rank stops all at this step
    loss, norm, stop = stats.tolist()  # the one host sync of the step
    loss, norm = loss / run.world, norm / run.world  # every rank clipped the same all-reduced gradient
    if not math.isfinite(loss):
        run.log.event("end", step=step, status="diverged")
        good = list_checkpoints(args.log_dir)
        raise UserError(f"loss is {loss} at step {step} - training diverged; the last good checkpoint is "
                        f"{good[-1] if good else 'none'}; lower --lr and resume from it")
    dt = time.time() - t0
    run.dt_avg = dt if run.dt_avg is None or step < 3 else 0.9 * run.dt_avg + 0.1 * dt  # the first steps compile
    tok_s, peak = args.total_batch_size / dt, peak_flops(run.device)
    mfu = flops_per_token(run.raw.config, run.raw.num_params(True)) * tok_s / (peak * run.world) if peak else None
    epoch = step / run.train_data.steps_per_epoch
    print0(f"step {step:5d}/{run.last_step} | loss {loss:.6f} | lr {lr:.2e} | norm {norm:.4f} | {dt * 1000:.0f} ms"
           f" | {tok_s:,.0f} tok/s | mfu {f'{mfu:.1%}' if mfu is not None else '-'} | epoch {epoch:.3f} | "
           f"eta {timedelta(seconds=int(run.dt_avg * (run.last_step - step - 1)))}")
    run.log.event("train", step=step, loss=loss, lr=lr, norm=norm, dt_ms=dt * 1000, tok_per_s=tok_s, mfu=mfu,
                  epoch=epoch, tokens=(step + 1) * args.total_batch_size, time=time.time())
    return bool(stop)


def train(args: argparse.Namespace) -> int:
    """Train until the schedule, --max-steps or a stop signal ends it. Returns the exit code."""
    run = start_run(args)
    if run.step >= run.last_step:
        print0(f"train_gpt2.py: the checkpoint already finished step {run.step} of {run.last_step} - pass a "
               "larger --epochs to train on, or --resume none to start over")
        return 0
    start_time = time.time()
    run.raw.train()
    try:
        if run.step == 0:
            run_evals(run, 0)
        while run.step < run.last_step:
            stop = optimizer_step(run)
            run.step += 1
            if not stop:  # a stop saves at once: torchrun's grace period is short
                run_evals(run, run.step)
            if run.step % args.checkpoint_every == 0 or run.step == run.last_step or stop:
                save_run(run)
            if stop and run.step < run.last_step:
                print0(f"train_gpt2.py: stopped at step {run.step}; --resume auto continues from the checkpoint")
                run.log.event("end", step=run.step, status="interrupted")
                return 128 + STOP.get("signal", signal.SIGTERM)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"CUDA out of memory at --batch-size {args.batch_size} - lower --batch-size (gradient "
                        f"accumulation keeps the total batch at {args.total_batch_size} tokens)") from None
    finally:
        run.log.close()
        release_log_dirs()
    print0(f"finished {run.step} steps in {timedelta(seconds=int(time.time() - start_time))}; final val loss "
           f"{run.last_val if run.last_val is None else round(run.last_val, 4)}")
    run.log.event("end", step=run.step, status="finished")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# preflight: every part of the real job once, at its real shapes and on its real hardware, before the hours are paid

PREFLIGHT_CKPT = "preflight_checkpoint.pt"  # not model_*.pt: --resume auto never picks it, rotation never counts it
PREFLIGHT_HELLASWAG = 64  # HellaSwag examples the preflight scores, split over the ranks
SHARD_SAMPLE = 1 << 20  # tokens read from the start, middle and end of each shard


@dataclass
class Preflight:
    """The checks (name, "pass" | "FAIL" | "off", reason) and measured figures of a preflight."""
    checks: list
    figures: dict

    def check(self, name: str, ok: bool | None, reason: str) -> bool:
        self.checks.append((name, "off" if ok is None else "pass" if ok else "FAIL", reason))
        return bool(ok) or ok is None

    def attempt(self, name: str, fn: Callable[[], str]) -> bool:
        """Run fn (which returns the reason it passed); an error a person can act on fails the check."""
        at = len(self.checks)  # checks fn makes come after this one
        try:
            ok, reason = True, fn()
        except torch.cuda.OutOfMemoryError:
            ok, reason = False, (f"CUDA out of memory at --batch-size {self.figures['batch_size']} - "
                                 "lower --batch-size (accumulation keeps --total-batch-size)")
        except (UserError, OSError, RuntimeError) as e:
            ok, reason = False, first_line(e)
        self.checks.insert(at, (name, "pass" if ok else "FAIL", reason))
        return ok


def check_shards(args: argparse.Namespace, pf: Preflight) -> bool:
    """Every shard opens as 1-D uint16, and the tokens read from its start, middle and end are GPT-2 ids."""
    tokens, names = {"train": 0, "val": 0}, []
    for split in tokens:
        for path in fineweb.list_shards(args.data, split):
            try:
                shard = fineweb.read_shard(path)
            except (UserError, OSError, ValueError) as e:
                return pf.check("shards", False, f"{path.name}: {first_line(e)} - rebuild it with fineweb.py")
            for start in sorted({0, max(0, len(shard) // 2 - SHARD_SAMPLE // 2), max(0, len(shard) - SHARD_SAMPLE)}):
                window = np.asarray(shard[start:start + SHARD_SAMPLE])
                if window.size and int(window.max()) >= GPT2_VOCAB:
                    return pf.check("shards", False, f"{path.name} holds token id {int(window.max())}, not below "
                                                     f"GPT-2's {GPT2_VOCAB} - rebuild it with fineweb.py")
            tokens[split] += len(shard)
            names.append(path)
    pf.figures.update(train_tokens=tokens["train"], val_tokens=tokens["val"], shards=len(names))
    return pf.check("shards", bool(tokens["train"]),
                    f"{len(names)} shards, {tokens['train']:,} train + {tokens['val']:,} val tokens; start, middle "
                    f"and end of each read: 1-D uint16, ids < {GPT2_VOCAB}" if tokens["train"] else
                    f"no training shards in {args.data}/ - run fineweb.py")


def preflight_steps(run: Run, pf: Preflight) -> str:
    """A few real optimizer steps: compile time, step time, tok/s, MFU, loader wait, peak device memory."""
    args, cuda, times = run.args, run.device.startswith("cuda"), []
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    run.train_data.wait_s = 0.0
    for _ in range(args.preflight_steps):
        t0 = time.perf_counter()
        optimizer_step(run)  # ends with the step's one host sync, so the time is the step's
        times.append(time.perf_counter() - t0)
        run.step += 1
    step_s = statistics.median(times[1:])
    tok_s, peak = args.total_batch_size / step_s, peak_flops(run.device)
    pf.figures.update(compile_s=max(0.0, times[0] - step_s), step_s=step_s, tok_per_s=tok_s,
                      mfu=flops_per_token(run.raw.config, run.raw.num_params(True)) * tok_s / (peak * run.world)
                      if peak else None, loader_wait_ms_per_step=1000 * run.train_data.wait_s / len(times))
    if cuda:
        used, total = torch.cuda.max_memory_reserved(run.device), torch.cuda.get_device_properties(run.device)
        pf.figures.update(peak_memory_gb=torch.cuda.max_memory_allocated(run.device) / 1e9,
                          reserved_gb=used / 1e9, device_memory_gb=total.total_memory / 1e9)
        pf.check("memory", used < 0.95 * total.total_memory, memory_advice(run, used, total.total_memory))
    else:
        pf.check("memory", None, f"not measured on {run.device}")
    return f"{len(times)} steps of {run.accum} x {args.batch_size} x {args.seq_len} tokens per process, finite loss"


def memory_advice(run: Run, used: int, total: int) -> str:
    """The peak against the card, and the largest --batch-size that should fit when the headroom is short."""
    state = 16 * run.raw.num_params()  # fp32 weights, gradients and AdamW's two moments
    per_seq = max(1, (used - state) / run.args.batch_size)
    fits = [b for b in range(1, run.accum * run.args.batch_size + 1)
            if run.accum * run.args.batch_size % b == 0 and state + b * per_seq < 0.9 * total]
    text = f"peak {used / 1e9:.1f} GB reserved of {total / 1e9:.1f} GB, headroom {(total - used) / 1e9:.1f} GB"
    if used >= 0.9 * total:
        text += f" - short: --batch-size {max(fits) if fits else 1} should fit"
    return text


def timed_eval(run: Run, name: str, key: str, examples: list, pf: Preflight) -> str:
    """One eval as training runs it (run_evals with only this one due), timed; val twice when compiled, as its
    first call compiles. Returns what it measured."""
    others = {k: 0 for k in ("eval_every", "hellaswag_every", "sample_every") if k != key}
    view = replace(run, args=argparse.Namespace(**{**vars(run.args), **others}), last_step=run.step,
                   hellaswag_examples=examples)
    times = []
    for _ in range(2 if name == "val" and run.compiled is not run.raw else 1):
        t0 = time.perf_counter()
        run_evals(view, run.step)
        times.append(time.perf_counter() - t0)
    pf.figures[f"{name}_s"] = times[-1]
    what = {"val": f"val loss {view.last_val or 0:.4f}", "sample": "with the KV cache",
            "hellaswag": f"{len(examples)} examples over {run.world} rank(s)"}[name]
    first = f" ({times[0]:.1f} s the first time: it compiles)" if len(times) > 1 else ""
    return f"{what}, as in training, {times[-1]:.1f} s{first}"


def preflight_evals(run: Run, pf: Preflight) -> None:
    """Val loss (through the compiled model), HellaSwag on a few examples split over the ranks, and samples."""
    examples = (run.hellaswag_examples or [])[:PREFLIGHT_HELLASWAG]
    for name, key in (("val", "eval_every"), ("hellaswag", "hellaswag_every"), ("sample", "sample_every")):
        if not getattr(run.args, key) or name == "val" and not run.val_steps:
            pf.check(name, None, f"off (--{key.replace('_', '-')} 0, or no val shard)")
        elif name == "hellaswag" and not examples:
            pf.check(name, None, "off: no HellaSwag data, the run trains without it")
        else:
            pf.attempt(name, lambda: timed_eval(run, name, key, examples, pf))  # noqa: B023 (called at once)
    if "hellaswag_s" in pf.figures:
        pf.figures["hellaswag_examples_per_s"] = len(examples) / pf.figures["hellaswag_s"]


def same(a, b) -> bool:
    """Whether two checkpoint values (nested dicts / lists of tensors and plain data) are equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def preflight_checkpoint(run: Run, pf: Preflight) -> str:
    """Rank 0 writes a checkpoint of the real size into the log dir, times it, reads it back, compares, deletes it;
    then the free space against the checkpoints the run keeps."""
    args, path = run.args, Path(run.args.log_dir) / PREFLIGHT_CKPT
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        save_run(replace(run, world=1), path)  # world=1: the barrier is the preflight's, so no rank waits alone
        save_s, size = time.perf_counter() - t0, path.stat().st_size
        back = read_checkpoint(path)
        if not (same(back["model"], run.raw.state_dict()) and same(back["optimizer"], run.optimizer.state_dict())):
            raise UserError(f"{path} read back differs from what was saved - check the volume")
    finally:
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
    pf.figures.update(checkpoint_gb=size / 1e9, checkpoint_save_s=save_s)
    return f"{size / 1e9:.2f} GB written in {save_s:.1f} s ({size / 1e6 / save_s:.0f} MB/s), read back equal, deleted"


def check_disk(run: Run, pf: Preflight, start: int) -> bool:
    """Free space in the log dir against the checkpoints the run keeps (--keep-checkpoints and the final one)."""
    args, size = run.args, pf.figures["checkpoint_gb"] * 1e9
    saves = (run.last_step - start) // args.checkpoint_every + 1
    kept = min(args.keep_checkpoints + 1, saves) if args.keep_checkpoints else saves
    free = shutil.disk_usage(args.log_dir).free
    return pf.check("disk", free > kept * size, f"{free / 1e9:.1f} GB free in {args.log_dir}/; the run keeps up to "
                                                f"{kept} checkpoint(s) of {size / 1e9:.2f} GB" +
                    ("" if free > kept * size else " - free some space, or lower --keep-checkpoints"))


def ranks_agree(run: Run) -> str:
    """Under DDP: every rank holds the same parameters (per-tensor sums all-gathered and compared)."""
    sums = torch.stack([torch.stack([p.double().sum(), p.double().abs().sum()]) for p in run.raw.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(run.world)]
    dist.all_gather(gathered, sums)
    differ = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
    if differ:
        raise UserError(f"rank(s) {differ} hold parameters that differ from rank 0's after the steps")
    return f"{run.world} ranks hold identical parameters after the steps"


def estimate(run: Run, pf: Preflight, start: int) -> dict:
    """Wall-clock, GPU-hours and cost of the whole run from `start`, from the measured figures."""
    args, f = run.args, pf.figures
    steps = range(start + 1, run.last_step + 1)
    evals = lambda every: every and sum(s % every == 0 or s == run.last_step for s in steps) + (start == 0)  # noqa: E731
    parts = {"train": len(steps) * f.get("step_s", 0) + f.get("compile_s", 0),
             "val": evals(args.eval_every) * f.get("val_s", 0),
             "hellaswag": evals(args.hellaswag_every) * len(run.hellaswag_examples or []) /
             f.get("hellaswag_examples_per_s", float("inf")),
             "sample": evals(args.sample_every) * f.get("sample_s", 0),
             "checkpoints": (len(steps) // args.checkpoint_every + 1) * f.get("checkpoint_save_s", 0)}
    total = sum(parts.values())
    gpu_hours = total * run.world / 3600
    return dict(steps=len(steps), seconds=total, parts=parts, gpu_hours=gpu_hours, gpu_hour_price=args.gpu_hour_price,
                cost=gpu_hours * args.gpu_hour_price if args.gpu_hour_price else None)


def print_preflight(run: Run, pf: Preflight, est: dict | None) -> None:
    """One screen: the checks, the figures, the estimate."""
    f, hms = pf.figures, lambda s: str(timedelta(seconds=int(s)))
    print0(f"\npreflight: {run.args.model} ({run.raw.num_params() / 1e6:.1f}M parameters), {run.world} process(es) "
           f"on {f['device_name']}, {run.args.dtype}, compile {'on' if run.compiled is not run.raw else 'off'}")
    for name, status, reason in pf.checks:
        print0(f"  {status:4}  {name:11} {reason}")
    shown = [("compile", "compile_s", "{:.0f} s"), ("step", "step_s", "{:.3f} s"), ("tok/s", "tok_per_s", "{:,.0f}"),
             ("MFU", "mfu", "{:.1%}"), ("loader wait", "loader_wait_ms_per_step", "{:.1f} ms/step"),
             ("peak memory", "peak_memory_gb", "{:.1f} GB"), ("val", "val_s", "{:.1f} s"),
             ("HellaSwag", "hellaswag_examples_per_s", "{:.0f} examples/s"),
             ("checkpoint", "checkpoint_save_s", "{:.1f} s")]
    print0("  figures: " + " | ".join(f"{label} {fmt.format(f[key])}" for label, key, fmt in shown
                                      if f.get(key) is not None))
    if est is not None:
        parts = ", ".join(f"{k} {hms(v)}" for k, v in est["parts"].items() if v)
        cost = f" | cost {est['cost']:,.2f} at {est['gpu_hour_price']} per GPU-hour" if est["cost"] is not None else \
            " | cost: pass --gpu-hour-price or set GPU_HOUR_PRICE"
        print0(f"  estimate: {est['steps']:,} steps in {hms(est['seconds'])} ({parts}) | {est['gpu_hours']:.1f} "
               f"GPU-hours{cost}")
    failed = [name for name, status, _ in pf.checks if status == "FAIL"]
    print0(f"preflight {'FAILED: ' + ', '.join(failed) if failed else 'passed'} - written to "
           f"{Path(run.args.log_dir) / 'preflight.json'}")


def preflight(args: argparse.Namespace) -> int:
    """--preflight: run every part of the real job once at its real shapes, check it, time it, estimate the whole
    run; print one screen and LOG_DIR/preflight.json. Leaves no checkpoint, log.txt or metrics.jsonl line.
    Returns 1 when a check failed."""
    pf = Preflight([], {"batch_size": args.batch_size})
    if not Path(args.data).is_dir() or not check_shards(args, pf):
        raise UserError(pf.checks[-1][2] if pf.checks else f"no data folder {args.data}/ - run python fineweb.py")
    run = start_run(args)
    start = run.step
    pf.figures.update(steps_per_epoch=run.train_data.steps_per_epoch, total_steps=run.total_steps,
                      world_size=run.world, device_name=torch.cuda.get_device_name(run.device)
                      if run.device.startswith("cuda") else run.device)
    run.raw.train()
    if pf.attempt("train steps", lambda: preflight_steps(run, pf)):
        preflight_evals(run, pf)
        if run.rank == 0 and pf.attempt("checkpoint", lambda: preflight_checkpoint(run, pf)):
            check_disk(run, pf, start)
        if run.world > 1:
            dist.barrier()
            pf.attempt("ranks agree", lambda: ranks_agree(run))
    failed = torch.tensor(sum(status == "FAIL" for _, status, _ in pf.checks), device=run.device)
    if run.world > 1:
        dist.all_reduce(failed)  # every rank reaches this: a rank that failed alone still fails the preflight
    est = estimate(run, pf, start) if "step_s" in pf.figures else None
    if run.rank == 0:
        if failed.item() and not any(status == "FAIL" for _, status, _ in pf.checks):
            pf.check("other ranks", False, f"{int(failed.item())} check(s) failed on other ranks - see their output")
        report = dict(passed=not failed.item(), checks=[dict(zip(("name", "status", "reason"), c)) for c in pf.checks],
                      figures=pf.figures, estimate=est, config=vars(args))
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.log_dir) / "preflight.json").write_text(json.dumps(report, indent=1) + "\n")
        print_preflight(run, pf, est)
    release_log_dirs()
    return 1 if failed.item() else 0


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: the terminal of a foreground run went away
        signal.signal(sig, request_stop)
    try:
        code = preflight(args) if args.preflight else train(args)
    except UserError as e:
        fineweb.fail("train_gpt2.py", e)
    finally:
        release_log_dirs()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    main()
