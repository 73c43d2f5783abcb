"""
GPT-2 (124M and up): the model, and its training loop (one process, or torchrun DDP on one or many nodes).

    python fineweb.py --demo && python train_gpt2.py --preset demo     # a small model on CPU in about two minutes
    torchrun --standalone --nproc_per_node=8 train_gpt2.py             # GPT-2 124M on edu_fineweb10B/ (10B tokens)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py --resume log/model_18882.pt --epochs 2   # a second epoch

Writes LOG_DIR/model_{step:05d}.pt checkpoints, LOG_DIR/log.txt and LOG_DIR/metrics.jsonl. SIGTERM or Ctrl-C finish
the current step, save a checkpoint and exit; `--resume auto` (the default) continues from the newest checkpoint.
"""

import argparse
import json
import math
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
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
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

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
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for k, v in model.state_dict().items():
                src = sd_hf[k]
                if k.endswith(transposed):  # HF stores these as Conv1D: (in, out) instead of Linear's (out, in)
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
    param = next(model.parameters())
    for _ in range(max_new_tokens):
        if use_cache and idx.size(1) <= block:
            if cache is None:
                cache = KVCache(model.config, idx.size(0), param.device, param.dtype)
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
    overlap, and the position in the data is just the step number."""

    def __init__(self, folder: str, split: str, seq_len: int, seqs_per_step: int, seed: int, shuffle: bool = True):
        try:
            self.shards = [fineweb.read_shard(p) for p in fineweb.list_shards(folder, split)]  # memmaps: nothing read
        except (ValueError, OSError) as e:
            raise UserError(f"bad shard: {first_line(e)} - rebuild it with fineweb.py") from None
        self.T, self.N, self.seed, self.shuffle = seq_len, seqs_per_step, seed, shuffle
        self.counts = np.array([(len(s) - 1) // seq_len if len(s) else 0 for s in self.shards], dtype=np.int64)
        self.n_seqs = int(self.counts.sum())
        self.steps_per_epoch = self.n_seqs // seqs_per_step  # the remainder (< one step) is left out each epoch
        self._epoch, self._order, self._ends, self._perms = -1, None, None, {}

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
        return out

    def batch(self, step: int, micro: int, rank: int, world_size: int, batch_size: int,
              device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) int64 on device; pinned memory and an async copy on CUDA."""
        buf = torch.from_numpy(self.sequences(step, micro, rank, world_size, batch_size).astype(np.int64))
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


def get_lr(step: int, total_steps: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to 10% of --lr at total_steps (and 10% after). (The modern recipe: wsd_lr.)"""
    if getattr(args, "recipe", "classic") == "modern":
        return wsd_lr(step, total_steps, args)
    min_lr = 0.1 * args.lr
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - min_lr)


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
    norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the modern recipe's groups have their own lr (classic: 1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, norm


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12,
                   "RTX 4090": 165e12, "RTX 3090": 71e12}  # dense bf16 FLOP/s by GPU name, for MFU


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
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


def list_checkpoints(log_dir: str | Path) -> list[Path]:
    """model_*.pt in the log dir, oldest first."""
    found = [p for p in Path(log_dir).glob("model_*.pt") if CKPT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_NAME.match(p.name).group(1)))


def read_checkpoint(path: Path, training: bool = True) -> dict:
    """A checkpoint of this script (with what resuming needs, when training), or UserError with a one-line reason."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: a person needs the first line
        raise UserError(f"could not load {path}: not a readable checkpoint ({type(e).__name__}: "
                        f"{first_line(e)[:200]})") from None
    needed = ("model", "model_config", "optimizer", "step", "config") if training else ("model", "model_config")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise UserError(f"could not load {path}: not a train_gpt2.py {'training ' if training else ''}checkpoint "
                        f"(it needs {', '.join(needed)})")
    return ckpt


def is_final(path: Path) -> bool:
    """Whether a checkpoint was written at the end of a run (mmap: reads the small pickle, not the tensors)."""
    try:
        return bool(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("final"))
    except Exception:
        return False


def save_checkpoint(path: Path, state: dict, keep: int) -> None:
    """Write atomically (a temp file, then rename), then delete all but the newest `keep` checkpoints; the one
    a run ended with (state["final"], e.g. the end of epoch 1 before a second epoch) is never deleted."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if keep > 0:
        for old in list_checkpoints(path.parent)[:-keep]:
            if old != path and not is_final(old):
                old.unlink(missing_ok=True)


def find_resume(args: argparse.Namespace, config: GPTConfig) -> tuple[Path | None, dict | None, list[str]]:
    """The checkpoint to continue from (--resume auto: the newest one that loads; a path; or none), and why each
    newer one was passed over. UserError when the one named cannot be resumed from or does not fit the options."""
    path, ckpt, skipped = None, None, []
    if args.resume not in ("auto", "none"):
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such file - pass a model_*.pt, auto or none")
        try:
            path, ckpt = Path(args.resume), read_checkpoint(Path(args.resume))
        except UserError as e:
            raise UserError(f"--resume: {e}") from None
    for candidate in reversed(list_checkpoints(args.log_dir)) if args.resume == "auto" else []:
        try:
            path, ckpt = candidate, read_checkpoint(candidate)
            break
        except UserError as e:
            skipped.append(str(e))
    if ckpt is not None and {"recipe": "classic", **ckpt["model_config"]} != asdict(config):  # older: no recipe
        raise UserError(f"{path} holds a model {ckpt['model_config']}, but the options ask for {asdict(config)} - "
                        "pass the same --recipe/--model/--n-*/--seq-len, or --resume none")
    if ckpt is not None and ckpt["config"].get("total_batch_size") != args.total_batch_size:
        raise UserError(f"{path} was trained with --total-batch-size {ckpt['config'].get('total_batch_size')}; "
                        "resume with the same value (the data position is counted in steps)")
    return path, ckpt, skipped


def load_model(spec: str, device: str | torch.device = "cpu") -> tuple[GPT | ModernGPT, dict]:
    """(GPT or ModernGPT, as its recipe says, in eval mode on device, its training config or {}) from a checkpoint
    of this script, an OpenAI name
    (gpt2 ... gpt2-xl) or a Hugging Face GPT-2 folder; UserError when it cannot. (hellaswag.py and infer.py use it.)"""
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
    ckpt = read_checkpoint(path, training=False)
    # keys saved from a torch.compile'd or DDP-wrapped model by other scripts carry these prefixes
    state = {re.sub(r"^((_orig_mod|module)\.)+", "", k): v for k, v in ckpt["model"].items()}
    try:
        model = build_model(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"could not load {spec}: its weights do not fit train_gpt2's model "
                        f"({type(e).__name__}: {first_line(e)})") from None
    return model.to(device).eval(), ckpt.get("config", {})


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
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
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
    # hardware
    fineweb.add_device_option(p)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off elsewhere)")

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
    if args.epochs <= 0 or args.lr <= 0 or min(args.max_steps, args.keep_checkpoints, args.eval_every,
                                                 args.hellaswag_every, args.sample_every) < 0:
        raise UserError("--epochs and --lr must be positive; --max-steps, --keep-checkpoints, --*-every must be >= 0")
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


def start_run(args: argparse.Namespace) -> Run:
    """Processes, data, model, optimizer and logs of a run, continued from a checkpoint when there is one."""
    rank, local_rank, world, device, is_master = setup_distributed(args.device)
    check_args(args, world)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()  # MPS and CPU train in fp32
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for whatever runs outside autocast
    if not Path(args.data).is_dir():
        raise UserError(f"no data folder {args.data}/ - run python fineweb.py (or fineweb.py --demo for demo_shards/)")
    train_data = ShardLoader(args.data, "train", args.seq_len, args.total_batch_size // args.seq_len, args.seed)
    if train_data.steps_per_epoch == 0:
        what = f"only {train_data.n_seqs * args.seq_len:,} tokens in training shards" if train_data.shards else \
            "no training shards"
        raise UserError(f"{args.data}/ has {what}, less than one step of --total-batch-size {args.total_batch_size} - "
                        "run fineweb.py to write shards, or lower --total-batch-size")
    val_data = ShardLoader(args.data, "val", args.seq_len, train_data.N, args.seed, shuffle=False)
    val_steps = min(args.val_steps, val_data.steps_per_epoch)
    if args.eval_every and not val_steps:
        print0(f"train_gpt2.py: notice: no val shard in {args.data}/ with a full batch - val loss off")
    # The lr schedule spans all --epochs. A run continued with a larger --epochs (e.g. a second epoch from a finished
    # run's checkpoint) recomputes the cosine over the new total and continues the step counter: no second warmup.
    total_steps = max(1, round(args.epochs * train_data.steps_per_epoch))

    torch.manual_seed(args.seed)
    config = GPTConfig(block_size=args.seq_len, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       recipe=args.recipe)
    ckpt_path, ckpt, skipped = find_resume(args, config)
    for why in skipped:
        print0(f"train_gpt2.py: notice: skipping {why}")
    raw = build_model(config).to(device)
    optimizer = make_optimizer(raw, args, device)
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if cuda and len(ckpt["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    use_compile = args.compile if args.compile is not None else cuda
    compiled = torch.compile(raw) if use_compile else raw  # train and val at one shape; samples/HellaSwag use raw
    model = nn.parallel.DistributedDataParallel(compiled, device_ids=[local_rank] if cuda else None) \
        if world > 1 else compiled
    run = Run(args, rank, world, device, autocast, train_data, val_data, val_steps,
              accum=args.total_batch_size // (args.batch_size * args.seq_len * world), total_steps=total_steps,
              last_step=min(total_steps, args.max_steps) if args.max_steps else total_steps, raw=raw,
              compiled=compiled, model=model, optimizer=optimizer,
              log=RunLog(args.log_dir, is_master, args.wandb, vars(args)))
    print0(f"train_gpt2.py config: {json.dumps(vars(args))}")
    other = next(r for r in RECIPES if r != args.recipe)
    with torch.device("meta"):  # shapes only: no memory, no init
        other_params = build_model(GPTConfig(**{**asdict(config), "recipe": other})).num_params()
    print0(f"{args.recipe} recipe: {raw.num_params() / 1e6:.1f}M parameters ({other} at this size: "
           f"{other_params / 1e6:.1f}M) | {world} process(es) on {device} | {run.accum} micro-steps "
           f"of {args.batch_size} x {args.seq_len} per step | {train_data.steps_per_epoch} steps per epoch | "
           f"{total_steps} steps scheduled")
    if ckpt is not None:
        run.step, run.last_val = ckpt["step"], ckpt.get("val_loss")
        print0(f"resuming from {ckpt_path} at step {run.step}")
    run.log.event("config", step=run.step, config=vars(args), model_config=asdict(config), world_size=world,
                  device=torch.cuda.get_device_name(device) if cuda else device, time=time.time())
    if args.hellaswag_every and run.step < run.last_step:
        run.hellaswag_examples, why = load_hellaswag_examples(args.hellaswag_data, world, device)
        if why:
            print0(f"train_gpt2.py: notice: {why} - training without HellaSwag evals")
    return run


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
        dtype = torch.bfloat16 if run.device.startswith("cuda") else None
        result = hellaswag.evaluate(run.raw, run.hellaswag_examples, run.device, rank=run.rank,
                                    world_size=run.world, autocast_dtype=dtype)
        print0(f"step {step:5d} | HellaSwag acc_norm {result['acc_norm']:.4f} ({result['n']} examples)")
        run.log.event("hellaswag", step=step, acc=result["acc"], acc_norm=result["acc_norm"], n=result["n"])
    if due(args.sample_every) and run.rank == 0:
        for text in sample_texts(run.raw, run.device, args.seed + step, run.autocast):
            print0(f"sample: {text!r}")
            run.log.event("sample", step=step, text=text)


def save_run(run: Run) -> None:
    """Rank 0 saves everything an exact resume needs; the others wait until it is written."""
    if run.rank == 0:
        step, per_epoch = run.step, run.train_data.steps_per_epoch
        path = Path(run.args.log_dir) / f"model_{step:05d}.pt"
        cuda = run.device.startswith("cuda")
        save_checkpoint(path, {
            "model": run.raw.state_dict(), "optimizer": run.optimizer.state_dict(), "step": step,
            "epoch": step // per_epoch, "loader": {"epoch": step // per_epoch, "step": step % per_epoch,
                                                   "steps_per_epoch": per_epoch},
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
            "config": vars(run.args), "model_config": asdict(run.raw.config), "val_loss": run.last_val,
            "final": step == run.last_step}, run.args.keep_checkpoints)
        print0(f"saved {path}")
        run.log.event("checkpoint", step=step, path=str(path))
    if run.world > 1:
        dist.barrier()  # nobody exits while rank 0 is still writing


def optimizer_step(run: Run) -> bool:
    """One optimizer step at run.step, printed and logged. Returns whether a rank was asked to stop; UserError when
    the loss is not finite."""
    t0, step, args = time.time(), run.step, run.args
    lr = get_lr(step, run.total_steps, args)
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
    print0(f"finished {run.step} steps in {timedelta(seconds=int(time.time() - start_time))}; final val loss "
           f"{run.last_val if run.last_val is None else round(run.last_val, 4)}")
    run.log.event("end", step=run.step, status="finished")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: the terminal of a foreground run went away
        signal.signal(sig, request_stop)
    try:
        code = train(args)
    except UserError as e:
        fineweb.fail("train_gpt2.py", e)
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    main()
