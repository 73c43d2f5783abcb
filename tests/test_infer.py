"""infer.py: sampling with the KV cache, streaming, reproducible seeds, export to transformers, one-line errors."""

import io
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import checkpoints
import infer
from checkpoints import load_model
from common import first_line
from fineweb import get_tokenizer
from model import GPT, GPT2_VOCAB, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)


def write_checkpoint(path: Path, model: GPT, step: int, prefix: str = "") -> Path:
    """A checkpoint in train_gpt2.py's format (only the entries infer.py reads, plus step and config)."""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_config": asdict(model.config), "config": {"model": "tiny"}, "step": step}, path)
    return path


def tiny_model(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    """A log dir with two checkpoints; the newer one (step 10) is what a log dir resolves to."""
    d = tmp_path_factory.mktemp("log")
    write_checkpoint(d / "model_00005.pt", tiny_model(seed=1), step=5)
    write_checkpoint(d / "model_00010.pt", tiny_model(seed=0), step=10)
    return d


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def run_main(capsys, *args: str) -> tuple[str, str]:
    infer.main(list(args))
    out = capsys.readouterr()
    return out.out, out.err


# ----------------------------------------------------------------------------------------------------------------------
# generation

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kv_cache_greedy_matches_full_recompute_past_block_size(seed):
    model = tiny_model(seed, GPTConfig(block_size=16, vocab_size=50304, n_layer=2, n_head=2, n_embd=32))
    prompt = torch.randint(0, GPT2_VOCAB, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    kw = dict(num_samples=2, max_new_tokens=30, top_k=1)  # 7 + 30 tokens: well past the 16-token window
    cached = infer.sample(model, prompt, use_cache=True, **kw)
    full = infer.sample(model, prompt, use_cache=False, **kw)
    assert len(cached) == 2 and all(len(s) == 30 for s in cached)
    assert cached == full


def test_cli_greedy_is_the_same_with_and_without_kv_cache(capsys, log_dir):
    args = (str(log_dir), "Hello, I'm a language model,", "--top-k", "1", "--max-new-tokens", "40",
            "--num-samples", "2")
    with_cache, err = run_main(capsys, *args)
    without, err_full = run_main(capsys, *args, "--no-kv-cache")
    assert with_cache == without
    assert "kv cache" in err and "full recompute" in err_full


def test_stream_prints_characters_split_across_tokens_whole():
    enc = get_tokenizer()
    text = " héllo 🤗 世界 👩‍👩‍👧"
    tokens = enc.encode(text)
    assert any(not _is_utf8(enc.decode_single_token_bytes(t)) for t in tokens)  # some character spans tokens
    out = io.StringIO()
    stream = infer.TextStream(enc, out)
    for t in tokens:
        stream.write(t)
        assert "\ufffd" not in out.getvalue()
    stream.close()
    assert out.getvalue() == text


def test_stream_of_arbitrary_tokens_equals_decoding_them_at_once():
    enc = get_tokenizer()
    tokens = torch.randint(0, GPT2_VOCAB, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    out = io.StringIO()
    stream = infer.TextStream(enc, out)
    for t in tokens:
        stream.write(t)
    stream.close()
    assert out.getvalue() == enc.decode(tokens)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# command line

def test_cli_streams_one_sample_from_the_newest_checkpoint_of_a_demo_run_and_repeats_it(demo_run):
    args = (str(demo_run), "The meaning of life is", "--num-samples", "1", "--max-new-tokens", "8", "--seed", "3")
    r, again = run_cli(*args), run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert again.stdout == r.stdout  # same seed, two processes: the same text
    assert r.stdout.startswith("The meaning of life is") and len(r.stdout) > len("The meaning of life is\n")
    assert "--- sample" not in r.stdout
    newest = max(demo_run.glob("model_*.pt")).name  # zero-padded steps: the last name is the highest step
    assert f"{newest} (" in r.stderr and "on cpu" in r.stderr and "tok/s" in r.stderr
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr


def test_a_log_dir_resolves_to_its_highest_step(tmp_path):
    for name in ["model_99999.pt", "model_100000.pt", "model_00500.pt"]:  # written last is not newest
        (tmp_path / name).write_bytes(b"")
    assert Path(checkpoints.model_files(str(tmp_path))[0]).name == "model_100000.pt"


def test_several_samples_print_as_numbered_blocks_with_the_prompt(capsys, log_dir):
    out, _ = run_main(capsys, str(log_dir / "model_00010.pt"), "Once", "--num-samples", "3", "--max-new-tokens", "4")
    blocks = out.split("--- sample ")[1:]
    assert [b.split(" ---")[0] for b in blocks] == ["1", "2", "3"]
    assert all(b.split("---\n", 1)[1].startswith("Once") for b in blocks)


def test_same_seed_gives_the_same_text_and_another_seed_differs(capsys, log_dir):
    args = (str(log_dir), "Once upon a time", "--max-new-tokens", "16")
    first, _ = run_main(capsys, *args, "--seed", "7")
    again, _ = run_main(capsys, *args, "--seed", "7")
    other, _ = run_main(capsys, *args, "--seed", "8")
    assert first == again
    assert first != other


def test_prompt_dash_reads_stdin(capsys, monkeypatch, log_dir):
    args = ("--num-samples", "2", "--max-new-tokens", "5", "--top-k", "1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("A prompt from a pipe\n"))  # echo's newline is not part of it
    piped, _ = run_main(capsys, str(log_dir), "-", *args)
    given, _ = run_main(capsys, str(log_dir), "A prompt from a pipe", *args)
    assert piped == given and piped.count("A prompt from a pipe") == 2


def test_a_local_hugging_face_folder_samples(capsys, tiny_hf_dir):
    out, err = run_main(capsys, str(tiny_hf_dir), "Hello", "--num-samples", "2", "--max-new-tokens", "5")
    assert out.count("--- sample") == 2 and f"loaded {tiny_hf_dir}" in err


def test_a_checkpoint_with_compile_and_ddp_prefixes_loads(capsys, tmp_path):
    model = tiny_model(seed=0)
    plain = write_checkpoint(tmp_path / "plain.pt", model, step=1)
    prefixed = write_checkpoint(tmp_path / "prefixed.pt", model, step=1, prefix="module._orig_mod.")
    args = ("Hello", "--top-k", "1", "--max-new-tokens", "6", "--num-samples", "1")
    assert run_main(capsys, str(prefixed), *args)[0] == run_main(capsys, str(plain), *args)[0]


def test_export_hf_round_trip_gives_the_same_logits_in_transformers(capsys, tmp_path, log_dir):
    from transformers import GPT2LMHeadModel
    out_dir = tmp_path / "hf"
    stdout, err = run_main(capsys, str(log_dir / "model_00010.pt"), "--export-hf", str(out_dir))  # no prompt needed
    assert stdout == "" and "wrote" in err
    assert (out_dir / "config.json").exists() and (out_dir / "model.safetensors").exists()
    hf = GPT2LMHeadModel.from_pretrained(out_dir).eval()
    assert hf.config.vocab_size == GPT2_VOCAB
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied after loading
    ours, _ = load_model(str(log_dir / "model_00010.pt"))
    idx = torch.randint(0, GPT2_VOCAB, (2, TINY.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(idx)[0][:, :, :GPT2_VOCAB]
        got = hf(idx).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out_dir)
    text = "Hello, I'm a language model, héllo 🤗 世界\n\n  x<|endoftext|>y"
    assert tok(text)["input_ids"] == get_tokenizer().encode(text, allowed_special={"<|endoftext|>"})
    assert tok.eos_token_id == GPT2_VOCAB - 1 and tok.model_max_length == TINY.block_size
    back, _ = load_model(str(out_dir))  # and train_gpt2 reads the folder back
    with torch.no_grad():
        assert (back(idx)[0] - expected).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, no traceback

BAD_INPUTS = {
    "missing_file": (["{tmp}/nope.pt", "hi"], "no such file"),
    "not_a_checkpoint": (["{tmp}/notes.pt", "hi"], "notes.pt"),
    "foreign_torch_file": (["{tmp}/foreign.pt", "hi"], "foreign.pt"),
    "log_dir_without_checkpoints": (["{tmp}/empty_dir", "hi"], "no model_*.pt"),
    "empty_prompt": (["{log}", ""], "prompt is empty"),
    "prompt_longer_than_context": (["{log}", "word " * 40], "longer than the model's context"),
    "no_prompt": (["{log}"], "no prompt"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt")
    (tmp / "empty_dir").mkdir()
    return tmp


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_with_one_clear_line(capsys, bad_files, log_dir, case):
    args, expected = BAD_INPUTS[case]
    with pytest.raises(SystemExit) as e:  # sys.exit("infer.py: ..."): python prints the line and exits with 1
        infer.main([a.format(tmp=bad_files, log=log_dir) for a in args])
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("infer.py: ") and "\n" not in msg, msg
    assert expected in msg
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("case", ["missing_file", "gpt2_without_network"])
def test_bad_input_from_the_shell_prints_one_line_and_no_traceback(tmp_path, case):
    # an empty cache and a Hub address that refuses connections: no network, on any machine
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    args, expected = {"missing_file": ([str(tmp_path / "nope.pt"), "hi"], "no such file"),
                      "gpt2_without_network": (["gpt2", "hi"], "could not download the gpt2 weights")}[case]
    r = run_cli(*args, env=env)
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer.py: ") and expected in lines[0], r.stderr


def test_a_log_dir_whose_newest_checkpoint_is_cut_short_samples_from_the_one_before(capsys, tmp_path, log_dir):
    for name in ("model_00005.pt", "model_00010.pt"):
        (tmp_path / name).write_bytes((log_dir / name).read_bytes())
    newest = (log_dir / "model_00010.pt").read_bytes()
    (tmp_path / "model_00020.pt").write_bytes(newest[:len(newest) // 2])  # a save killed half way
    out, err = run_main(capsys, str(tmp_path), "Hello", "--top-k", "1", "--max-new-tokens", "4", "--num-samples", "1")
    expected, _ = run_main(capsys, str(log_dir / "model_00010.pt"), "Hello", "--top-k", "1", "--max-new-tokens", "4",
                           "--num-samples", "1")
    assert out == expected
    assert "skipping" in err and "model_00020.pt" in err and "loaded " + str(tmp_path / "model_00010.pt") in err
    notice = next(line for line in err.splitlines() if "skipping" in line)
    assert notice.startswith(f"infer.py: notice: could not load {tmp_path / 'model_00020.pt'}: truncated")
    assert notice.endswith(" - skipping it for the checkpoint before")
    # torch's reason in brief and whole: its first sentence, not 200 characters of its advice cut mid-word
    # (torch 2.4 ends that sentence without a full stop)
    assert re.search(r"\(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central "
                     r"directory\.?\) - ", notice), notice
    (tmp_path / "model_00030.pt").write_text("not a checkpoint\n")  # no zip: the weights-only unpickler refuses it
    _, err = run_main(capsys, str(tmp_path), "Hello", "--max-new-tokens", "1", "--num-samples", "1")
    notice = next(line for line in err.splitlines() if "model_00030.pt" in line)
    assert re.fullmatch(rf"infer\.py: notice: could not load {re.escape(str(tmp_path))}/model_00030\.pt: truncated "
                        r"or not a checkpoint \(UnpicklingError: [^()]+\) - skipping it for the checkpoint before",
                        notice), notice
    assert "Weights only load failed" not in notice and "weights_only" not in notice


def test_a_long_error_line_ends_at_a_whole_sentence_or_word():
    sentences = ValueError("The file is damaged. " + "This sentence is long and goes on. " * 20)
    assert first_line(sentences, 60) == "The file is damaged. This sentence is long and goes on."
    words = ValueError("one-sentence " * 40)
    assert first_line(words, 60) == "one-sentence one-sentence one-sentence one-sentence ..."
    assert first_line(ValueError("short\nsecond line")) == "short" and first_line(ValueError()) == "ValueError"


def test_prompt_dash_with_stdin_closed_is_one_line(log_dir):
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" "{ROOT / "infer.py"}" "{log_dir}" - <&-'],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("infer.py: ") and "stdin is closed" in line
