"""hellaswag.py: scoring against an independent reference, batching, DDP, malformed files, download, CLI."""

import hashlib
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import hellaswag
from fineweb import get_tokenizer
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a man woman dog child ball kitchen guitar slowly quickly then picks up runs across jumps into "
         "water river paint brush knife bread table camera smiles turns around holds rope climbs wall").split()


def make_examples(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    """HellaSwag-schema examples of varied lengths; every long_every-th one has a context past 128 tokens."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = 120 if long_every and i % long_every == long_every - 1 else rng.randint(3, 30)
        ctx = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
        endings = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + "." for _ in range(4)]
        out.append({"ind": i, "ctx": ctx, "endings": endings, "label": rng.randrange(4), "split": "val"})
    return out


def write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    return path


@pytest.fixture(scope="module")
def tiny_gpt(tiny_hf_dir) -> GPT:
    return GPT.from_pretrained(str(tiny_hf_dir)).eval()


def reference_losses(hf_model, example: dict) -> list[tuple[float, int]]:
    """(summed loss, token count) of each ending: one row per forward, no padding, the HF model's own logits."""
    enc = get_tokenizer()
    n_pos = hf_model.config.n_positions
    ctx = enc.encode_ordinary(example["ctx"])
    out = []
    for ending in example["endings"]:
        end = enc.encode_ordinary(" " + ending)
        row = (ctx + end)[-n_pos:]
        m = min(len(end), len(row) - 1)
        with torch.no_grad():
            logits = hf_model(torch.tensor([row])).logits[0]  # (T, vocab)
        logp = torch.log_softmax(logits[len(row) - m - 1:len(row) - 1].double(), dim=-1)  # predicting the ending
        total = -sum(float(logp[k, tok]) for k, tok in enumerate(row[len(row) - m:]))
        out.append((total, m))
    return out


def test_batched_scores_match_one_example_at_a_time_hf_reference(tiny_hf_dir, tiny_gpt):
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    examples = make_examples(8, seed=1, long_every=4)  # two contexts longer than the 128-token window
    for model in (hf, tiny_gpt):  # a Hugging Face model (output.logits) and ours ((logits, loss))
        loss_sum, counts = hellaswag.score(model, examples, "cpu", batch_size=4)
        correct = correct_norm = 0
        for i, ex in enumerate(examples):
            ref = reference_losses(hf, ex)
            ref_sum = torch.tensor([s for s, _ in ref], dtype=torch.float64)
            ref_n = torch.tensor([m for _, m in ref], dtype=torch.float64)
            assert torch.equal(counts[i], ref_n), i
            assert torch.allclose(loss_sum[i], ref_sum, rtol=1e-4, atol=1e-3), (i, loss_sum[i], ref_sum)
            assert int(loss_sum[i].argmin()) == int(ref_sum.argmin()), i
            assert int((loss_sum[i] / counts[i]).argmin()) == int((ref_sum / ref_n).argmin()), i
            correct += int(ref_sum.argmin()) == ex["label"]
            correct_norm += int((ref_sum / ref_n).argmin()) == ex["label"]
        result = hellaswag.evaluate(model, examples, "cpu", batch_size=4)
        assert (result["n"], result["correct"], result["correct_norm"]) == (len(examples), correct, correct_norm)
        assert result["acc"] == correct / len(examples) and result["acc_norm"] == correct_norm / len(examples)


def test_ending_losses_in_blocks_equal_cross_entropy_of_the_full_logits(tiny_gpt):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (6, 40), generator=g)
    mask = torch.rand(6, 40, generator=g) < 0.5
    targets = torch.randint(0, 50257, (6, 40), generator=g)
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(tiny_gpt(tokens)[0][mask], targets[mask], reduction="none")
        for chunk in (7, 256):  # several row chunks, and one
            assert torch.allclose(hellaswag.ending_losses(tiny_gpt, tokens, mask, targets, chunk), full, atol=1e-4)


def test_batch_size_does_not_change_scores_and_train_mode_is_restored(tiny_gpt):
    examples = make_examples(8, seed=2, long_every=8)
    one = hellaswag.score(tiny_gpt, examples, "cpu", batch_size=1)
    for batch_size in (3, 8):
        many = hellaswag.score(tiny_gpt, examples, "cpu", batch_size=batch_size)
        assert torch.allclose(one[0], many[0], rtol=1e-5, atol=1e-4)
        assert torch.equal(one[1], many[1])
    plain = torch.nn.Module()  # a model without `lm_head`: scored from its full (B, T, vocab) logits
    plain.inner, plain.config = tiny_gpt, tiny_gpt.config
    plain.forward = lambda idx: (tiny_gpt(idx)[0], None)
    full = hellaswag.score(plain, examples, "cpu", batch_size=8)
    assert torch.allclose(one[0], full[0], rtol=1e-5, atol=1e-4) and torch.equal(one[1], full[1])
    tiny_gpt.train()
    hellaswag.evaluate(tiny_gpt, examples, "cpu", batch_size=4)
    assert tiny_gpt.training
    tiny_gpt.eval()
    hellaswag.evaluate(tiny_gpt, examples, "cpu", batch_size=4)
    assert not tiny_gpt.training


def test_batches_have_fixed_rows_and_few_row_lengths(tiny_gpt):
    shapes = []
    # the token embedding sees every forward's (B, T) input ids
    hook = tiny_gpt.transformer.wte.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape)))
    try:
        hellaswag.score(tiny_gpt, make_examples(18, seed=3, long_every=9), "cpu", batch_size=4)
    finally:
        hook.remove()
    assert len(shapes) == 5  # ceil(18 / 4) forwards, the last one padded with spare rows
    assert {rows for rows, _ in shapes} == {16}
    assert {t for _, t in shapes} <= {32, 64, 96, 128}  # multiples of 32, capped at the 128-token window


DDP_WORKER = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, {root!r})
import hellaswag
from checkpoints import load_model
dist.init_process_group("gloo")
model, _ = load_model({ckpt!r}, "cpu")
result = hellaswag.evaluate(model, hellaswag.load_examples({data!r}), "cpu", batch_size=2,
                            rank=dist.get_rank(), world_size=dist.get_world_size())
open({out!r} + str(dist.get_rank()), "w").write(json.dumps(result))
from common import leave_process_group
leave_process_group(0, ok=True)  # as training leaves: torch < 2.8 cannot always tear a Gloo group down
"""


def test_two_gloo_ranks_report_the_same_totals_as_one_process(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config).eval()
    ckpt = tmp_path / "model_00000.pt"
    torch.save({"model": model.state_dict(), "model_config": vars(config)}, ckpt)
    data = write_jsonl(tmp_path / "hs.jsonl", make_examples(9, seed=4))  # odd: the ranks get 5 and 4
    expected = hellaswag.evaluate(model, hellaswag.load_examples(data), "cpu", batch_size=2)
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(root=str(ROOT), ckpt=str(ckpt), data=str(data), out=str(tmp_path / "rank")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    assert results[0] == results[1] == expected
    assert expected["n"] == 9


@pytest.mark.parametrize("bad_line, message", [
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1', "not valid JSON"),
    ('{"ctx": "A man", "endings": ["a", "b", "c"], "label": 1}', "list of 4 strings, got 3 items"),
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4}', "must be 0, 1, 2 or 3"),
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": -1}', "must be 0, 1, 2 or 3"),
    ('{"ctx": "A man", "endings": ["a", "b", "c", "d"]}', "no 'label'"),
    ('{"endings": ["a", "b", "c", "d"], "label": 0}', "'ctx' must be a non-empty string"),
    ('[1, 2, 3]', "expected a JSON object"),
])
def test_malformed_line_is_reported_with_its_line_number(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(ex) for ex in make_examples(3)]
    path.write_text("\n".join(good[:2] + [bad_line] + good[2:]) + "\n")
    with pytest.raises(ValueError, match=f"{path}:3: .*{message}".replace("[", r"\[").replace("(", r"\(")):
        hellaswag.load_examples(path)
    with pytest.raises(SystemExit) as e:  # the CLI: one line, non-zero exit, before any model is loaded
        hellaswag.main(["--model", str(tmp_path / "no_model.pt"), "--data", str(path)])
    assert str(e.value.code).startswith(f"hellaswag.py: {path}:3: ") and "\n" not in str(e.value.code)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_raises_hellaswag_unavailable_with_how_to_get_the_file(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/data/hellaswag_{{split}}.jsonl"
    with pytest.raises(hellaswag.HellaSwagUnavailable) as e:
        hellaswag.load_examples(split="val", cache_dir=tmp_path, url=url)
    msg = str(e.value)
    assert "\n" not in msg and url.format(split="val") in msg and str(tmp_path / "hellaswag_val.jsonl") in msg
    assert "--data" in msg
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left behind
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="is missing"):
        hellaswag.load_examples(split="val", cache_dir=tmp_path, download=False)
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="no such file"):
        hellaswag.load_examples(tmp_path / "absent.jsonl")


class FixtureHandler(http.server.BaseHTTPRequestHandler):
    """Serves /data/* from self.server.files; /short/* claims more bytes than it sends, then hangs up."""

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if self.path.startswith("/short/") else 0)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FixtureHandler)
    server.files = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_from_a_local_server_writes_the_verified_split_atomically(tmp_path, local_server, capsys):
    n_val = hellaswag.SPLITS["val"][0]
    body = "".join(json.dumps(ex) + "\n" for ex in make_examples(n_val, seed=5)).encode()
    local_server.files["hellaswag_val.jsonl"] = body
    local_server.files["hellaswag_train.jsonl"] = body[:body.index(b"\n") + 1] * 3  # 3 examples, not 39905
    base = f"http://127.0.0.1:{local_server.server_address[1]}"
    cache = tmp_path / "cache"

    examples = hellaswag.load_examples(split="val", cache_dir=cache, url=base + "/data/hellaswag_{split}.jsonl")
    assert len(examples) == n_val
    assert (cache / "hellaswag_val.jsonl").read_bytes() == body
    assert sorted(p.name for p in cache.iterdir()) == ["hellaswag_val.jsonl"]
    err = capsys.readouterr().err
    assert hellaswag.SPLITS["val"][2] in err and "sha256" in err  # not the authors' file: said clearly

    local_server.files.clear()  # the cached file is used from now on, with no request
    assert hellaswag.load_examples(split="val", cache_dir=cache, url=base + "/data/hellaswag_{split}.jsonl") == examples

    with pytest.raises(hellaswag.HellaSwagUnavailable, match="gave 3 examples, expected 39905"):
        local_server.files["hellaswag_train.jsonl"] = body[:body.index(b"\n") + 1] * 3
        hellaswag.load_examples(split="train", cache_dir=cache, url=base + "/data/hellaswag_{split}.jsonl")
    local_server.files["hellaswag_val.jsonl"] = body
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="could not download"):
        hellaswag.load_examples(split="val", cache_dir=tmp_path / "cut", url=base + "/short/hellaswag_{split}.jsonl")
    assert sorted(p.name for p in cache.iterdir()) == ["hellaswag_val.jsonl"]
    assert list((tmp_path / "cut").iterdir()) == []


def test_download_from_a_file_url(tmp_path):
    src = write_jsonl(tmp_path / "mirror.jsonl", make_examples(4))
    dest = tmp_path / "cache" / "copy.jsonl"
    hellaswag.fetch(src.as_uri(), dest, progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert len(hellaswag.load_examples(dest)) == 4


def test_cli_scores_a_local_file_with_a_hugging_face_folder(tmp_path, tiny_hf_dir, tiny_gpt):
    examples = make_examples(6, seed=6)
    data = write_jsonl(tmp_path / "hs.jsonl", examples)
    expected = hellaswag.evaluate(tiny_gpt, examples, "cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "hellaswag.py"), "--model", str(tiny_hf_dir), "--data",
                           str(data), "--batch-size", "3", "--device", "cpu", "--verbose"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = expected["n"]
    assert f"acc {expected['acc']:.4f} ({expected['correct']}/{n})" in proc.stdout
    assert f"acc_norm {expected['acc_norm']:.4f} ({expected['correct_norm']}/{n})" in proc.stdout
    assert "examples/s" in proc.stdout and "--- example 0: label" in proc.stdout and "picked" in proc.stdout


def test_examples_longer_than_the_context_are_counted_and_said(tmp_path, tiny_hf_dir, tiny_gpt):
    examples = make_examples(6, seed=3, long_every=3)  # two contexts past 128 tokens, the model's context
    assert hellaswag.evaluate(tiny_gpt, examples, "cpu")["cut"] == 2
    data = write_jsonl(tmp_path / "hs.jsonl", examples)
    proc = subprocess.run([sys.executable, str(ROOT / "hellaswag.py"), "--model", str(tiny_hf_dir), "--data",
                           str(data), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "notice: 2 of 6 examples longer than the model's 128 tokens, cut from the left" in proc.stderr


def test_the_demo_preset_scores_no_hellaswag():
    import train_gpt2
    assert train_gpt2.get_args(["--preset", "demo"]).hellaswag_every == 0


def test_cli_bad_model_or_data_exits_with_one_line(tmp_path):
    data = write_jsonl(tmp_path / "hs.jsonl", make_examples(2))
    for argv, needle in [(["--model", str(tmp_path / "nope.pt"), "--data", str(data)], "no such file or folder"),
                         (["--model", str(data), "--data", str(data)], "could not load"),
                         (["--model", "gpt2", "--data", str(tmp_path / "absent.jsonl")], "no such file")]:
        with pytest.raises(SystemExit) as e:
            hellaswag.main(argv + ["--device", "cpu"])
        assert str(e.value.code).startswith("hellaswag.py: ") and needle in str(e.value.code)
        assert "\n" not in str(e.value.code)


def test_an_example_with_an_empty_ending_is_refused_with_its_line(tmp_path):
    examples = make_examples(3)
    examples[1]["endings"][2] = "  "
    path = write_jsonl(tmp_path / "hs.jsonl", examples)
    with pytest.raises(hellaswag.UserError, match=r"hs.jsonl:2: ending 2 is empty"):
        hellaswag.load_examples(path)


def test_a_binary_data_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as e:
        hellaswag.main(["--model", "gpt2", "--data", str(path), "--device", "cpu"])
    assert str(e.value.code).startswith(f"hellaswag.py: {path}: not a HellaSwag jsonl file")


def test_the_cache_is_trusted_by_checksum_and_a_partial_file_is_fetched_again(tmp_path, local_server, monkeypatch):
    n_val = 5
    body = "".join(json.dumps(ex) + "\r\n" for ex in make_examples(n_val, seed=7)).encode()[:-2]  # CRLF, no final EOL
    monkeypatch.setitem(hellaswag.SPLITS, "val", (n_val, len(body), hashlib.sha256(body).hexdigest()))
    local_server.files["hellaswag_val.jsonl"] = body
    url = f"http://127.0.0.1:{local_server.server_address[1]}/data/hellaswag_{{split}}.jsonl"
    cache = tmp_path / "cache"
    assert len(hellaswag.load_examples(split="val", cache_dir=cache, url=url)) == n_val  # the sha256 decides
    (cache / "hellaswag_val.jsonl").write_bytes(body[:len(body) // 2])  # a partial copy in the cache
    assert len(hellaswag.load_examples(split="val", cache_dir=cache, url=url)) == n_val
    assert (cache / "hellaswag_val.jsonl").read_bytes() == body
    (cache / "hellaswag_val.jsonl").write_bytes(body[:len(body) // 2])
    with pytest.raises(hellaswag.HellaSwagUnavailable, match=r"hellaswag_val.jsonl holds \d examples, expected 5"):
        hellaswag.load_examples(split="val", cache_dir=cache, url=url, download=False)
