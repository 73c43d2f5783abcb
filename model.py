"""
The GPT-2 model (class GPT), and the modern recipe's model beside it (class ModernGPT); their loss, sampling with a KV
cache, and OpenAI's weights through Hugging Face. Read this first, then train_gpt2.py.

Standalone, as nanoGPT's model.py: it imports nothing else of this kit, so `from model import GPT` works anywhere.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

GPT2_VOCAB = 50257  # GPT-2's token ids 0..50256 (fineweb.py's tokenizer); vocab_size pads the embedding past them

# ----------------------------------------------------------------------------------------------------------------------
# model: GPT-2 as OpenAI trained it

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


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits (N, vocab) against targets (N,) (-1 = ignored), in fp32 a chunk of rows at a time;
    the gradient is made in the same pass and kept in the logits' dtype. So no fp32 (N, vocab) tensor ever exists,
    where eager F.cross_entropy under autocast upcasts all the logits and keeps an fp32 log-softmax for backward.
    Measured on an H200 (bench/bench_loss.py, d12 at 64 x 1024): eager, 40.7 GB above the weights against 55.3 GB,
    at 195 against 158 ms a forward + backward. Compiled, plain F.cross_entropy wins on both (35.6 GB, 126 ms against
    43.0 GB, 134 ms): inductor fuses the upcast, so cross_entropy below uses this one only in eager bf16."""

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


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean next-token loss of logits (B, T, vocab) against targets (B, T) (-1 = ignored), for both models: fp32
    logits and torch.compile take F.cross_entropy (nothing to upcast, or inductor fuses the upcast); bf16 logits in
    eager mode the chunked one, never copied whole to fp32."""
    logits2d, targets1d = logits.view(-1, logits.size(-1)), targets.reshape(-1)
    if logits.dtype == torch.float32 or torch.compiler.is_compiling():
        return F.cross_entropy(logits2d, targets1d, ignore_index=-1)
    return ChunkedCrossEntropy.apply(logits2d, targets1d)



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
        return logits, cross_entropy(logits, targets)

    @classmethod
    def from_pretrained(cls, name_or_dir: str) -> "GPT":
        """Hugging Face GPT2LMHeadModel weights: a hub name such as 'gpt2' (downloaded once, then cached), or a
        save_pretrained folder. Raises OSError when neither works."""
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
        return logits, cross_entropy(logits, targets)  # the same loss as GPT's


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
    values, ids = torch.topk(logits, min(top_k or GPT2_VOCAB, GPT2_VOCAB), dim=-1)  # (B, k), sorted
    values = (values - values[:, :1]) / temperature  # from the largest: a tiny temperature gives -inf, never NaN
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
# model FLOPs utilisation (MFU): the share of the GPU's peak that training reaches

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
