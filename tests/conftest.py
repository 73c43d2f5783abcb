"""Shared fixtures: small data and models made here, never downloaded."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The `fineweb.py --demo` shards (about 1.3M tokens: one val and five train shards of 2**18 tokens)."""
    import fineweb
    out = tmp_path_factory.mktemp("demo_shards")
    fineweb.build_shards(fineweb.get_args(["--demo", "--out", str(out)]))
    return out


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny random transformers GPT2LMHeadModel (real GPT-2 vocab) saved with save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_hf")
    GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=4, vocab_size=50257)).save_pretrained(out)
    return out
