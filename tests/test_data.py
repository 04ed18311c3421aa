"""The data pipeline's contracts: tokenizers round-trip, the cache is built once and rebuilt only
when it must, batches are what the trainer is promised (shift, padding, masks, determinism,
disjoint ranks, exact resume), and user mistakes are one-line errors."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time

import numpy as np
import pytest
import torch

from lmprof.config import build_config
from lmprof.data import IGNORE_INDEX, Batch, DataModule, build_data
from lmprof.data import sources as sources_mod
from lmprof.data.sources import Document, StdlibSource, split_documents
from lmprof.data.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer
from lmprof.errors import UserError

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
    "def",
    "class",
    "return",
    "import",
    "yield",
]


def text_of(rng: random.Random, n_lines: int) -> str:
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        lines.append(" " * rng.randint(0, 8) + " ".join(words) + rng.choice(["", ":", "()"]))
    return "\n".join(lines) + "\n"


def write_corpus(root, n_files=12, n_lines=60, seed=0):
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (root / f"doc{i:02d}.txt").write_text(f"# file {i}\n" + text_of(rng, n_lines))
    return root


def cfg_for(tmp_path, **data):
    data.setdefault("cache_dir", str(tmp_path / "cache"))
    return build_config({"data": data})


def manifest_of(dm: DataModule) -> dict:
    with open(os.path.join(dm.info["cache"], "manifest.json")) as f:
        return json.load(f)


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


# ---------------------------------------------------------------------------------------------
# Tokenizers


SAMPLE = "def f(x):\n    return x  # caf\u00e9 \u4e2d\u6587 \U0001f389\n\t<|endoftext|> end"


def test_byte_round_trips_any_text():
    tok = ByteTokenizer()
    for text in (SAMPLE, "", "\udc80 lone surrogate", "\x00\x7f"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < 256 for i in ids)  # never EOS or PAD from text
    assert len({tok.pad_id, tok.eos_id}) == 2 and tok.pad_id < tok.vocab_size


def test_char_round_trips_seen_chars_and_marks_unknown():
    tok = CharTokenizer.train([SAMPLE, "more text"])
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    ids = tok.encode("x\u00ff")  # \u00ff was never seen
    assert ids[1] == tok.unk_id and ids[0] != tok.unk_id
    assert max(tok.encode(SAMPLE)) < tok.eos_id < tok.pad_id == tok.vocab_size - 1


def test_bpe_round_trips_and_keeps_specials_out_of_text():
    rng = random.Random(1)
    texts = [text_of(rng, 40) for _ in range(20)]
    tok = HFTokenizer.train_bpe(texts, 300)
    assert tok.vocab_size <= 300
    for text in (SAMPLE, texts[0], "  \n\n  trailing spaces  "):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.pad_id not in ids and tok.eos_id not in ids  # "<|endoftext|>" stays text
    assert len(tok.encode(texts[0])) < len(texts[0].encode())  # it learned merges


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_reused_then_rebuilt_when_source_changes(tmp_path, corpus):
    cfg = cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=32)
    log = Log()
    a = build_data(cfg, log=log)
    assert len(log) == 1 and "built" in log[0]
    train_bin = os.path.join(a.info["cache"], "train.bin")
    mtime = os.stat(train_bin).st_mtime_ns

    b = build_data(cfg, log=log)
    assert "reused" in log[1] and b.info["cache"] == a.info["cache"]
    assert os.stat(train_bin).st_mtime_ns == mtime  # not re-tokenized
    assert b.n_train_tokens == a.n_train_tokens

    # Another sequence length reuses the same tokens.
    build_data(cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=64), log=log)
    assert "reused" in log[2]

    (corpus / "doc03.txt").write_text("something else entirely\n" * 50)
    c = build_data(cfg, log=log)
    assert "built" in log[3] and "source changed" in log[3]
    assert c.info["cache"] == a.info["cache"]  # rebuilt in place, no stale copy left behind
    assert c.n_train_tokens + c.n_val_tokens != a.n_train_tokens + a.n_val_tokens
    # No temporary file left over (.lmprof/ holds the cache's lock, by design).
    leftovers = [p for p in os.listdir(tmp_path / "cache") if p.startswith(".") and p != ".lmprof"]
    assert leftovers == []


def test_each_tokenizer_gets_its_own_cache(tmp_path, corpus):
    log = Log()
    byte = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), tokenizer="byte", sequence_length=32),
        log=log,
    )
    char = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), tokenizer="char", sequence_length=32),
        log=log,
    )
    bpe = build_data(
        cfg_for(
            tmp_path,
            source="text",
            path=str(corpus),
            tokenizer="bpe",
            vocab_size=300,
            sequence_length=32,
        ),
        log=log,
    )
    assert all("built" in line for line in log)
    assert len({byte.info["cache"], char.info["cache"], bpe.info["cache"]}) == 3
    assert char.vocab_size < byte.vocab_size and bpe.n_train_tokens < byte.n_train_tokens
    manifest = manifest_of(bpe)
    assert manifest["tokenizer"]["name"] == "bpe" and manifest["dtype"] == "uint16"
    assert manifest["content_hash"] and manifest["train"]["tokens"] == bpe.n_train_tokens
    # The bpe tokenizer was saved and is reused: same ids after a reload.
    again = build_data(
        cfg_for(
            tmp_path,
            source="text",
            path=str(corpus),
            tokenizer="bpe",
            vocab_size=300,
            sequence_length=32,
        ),
        log=log,
    )
    assert "reused" in log[-1]
    assert again.tokenizer.encode(SAMPLE) == bpe.tokenizer.encode(SAMPLE)
    # Tokens in the cache decode back to the corpus.
    text = bpe.tokenizer.decode(np.asarray(bpe.train[:400]).tolist())
    assert "# file" in text or any(w in text for w in WORDS)


def test_concurrent_builders_build_once(tmp_path, corpus, monkeypatch):
    # Threads stand in for processes: each file_lock opens its own file description, and
    # flock excludes those from each other exactly as it does across processes.
    cfg = cfg_for(tmp_path, source="text", path=str(corpus), tokenizer="char", sequence_length=32)
    load = sources_mod.TextSource.load

    def slow_load(self, val_fraction):  # both builders are surely inside at the same time
        time.sleep(0.3)
        return load(self, val_fraction)

    monkeypatch.setattr(sources_mod.TextSource, "load", slow_load)
    results, errors = [], []

    def build():
        try:
            log = Log()
            dm = build_data(cfg, log=log)
            results.append((log[0].split()[1], dm.n_train_tokens, dm.n_val_tokens))
        except Exception as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    assert sorted(r[0] for r in results) == ["built", "reused"]
    assert results[0][1:] == results[1][1:]


# ---------------------------------------------------------------------------------------------
# Split and sources


def test_split_is_by_document_near_val_fraction_and_deterministic():
    rng = random.Random(2)
    docs = [Document(f"d{i}", text_of(rng, rng.randint(5, 30))) for i in range(200)]
    train, val = split_documents(docs, 0.1)
    share = sum(len(d.text) for d in val) / sum(len(d.text) for d in docs)
    assert 0.1 <= share < 0.15
    assert {d.key for d in train}.isdisjoint(d.key for d in val)
    assert [d.key for d in split_documents(docs, 0.1)[1]] == [d.key for d in val]
    # One big document is cut at line ends, so it still splits.
    one = [Document("only", text_of(rng, 2000))]
    train, val = split_documents(one, 0.05)
    assert train and val and all(p.text.endswith("\n") for p in train + val)
    assert (
        "".join(p.text for p in sorted(train + val, key=lambda p: int(p.key.split("#")[1])))
        == one[0].text
    )


def test_jsonl_documents_are_lines(tmp_path):
    rng = random.Random(3)
    path = tmp_path / "data.jsonl"
    rows = [{"text": text_of(rng, 3)} for _ in range(300)] + [{"text": "  "}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = build_data(cfg_for(tmp_path, source="text", path=str(path), sequence_length=16), log=Log())
    manifest = manifest_of(dm)
    assert manifest["train"]["documents"] + manifest["val"]["documents"] == 300
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"content": "no text"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        build_data(cfg_for(tmp_path, source="text", path=str(bad), sequence_length=16))


def test_stdlib_source_is_sorted_without_tests(tmp_path, monkeypatch):
    files = StdlibSource().files()
    keys = [k for k, _ in files]
    assert keys == sorted(keys) and len(keys) > 100
    assert not any(
        part in ("test", "tests", "idle_test", "site-packages")
        for k in keys
        for part in k.split("/")
    )
    assert any(k == "os.py" for k in keys)
    monkeypatch.setattr(sources_mod, "STDLIB_MAX_FILES", 40)
    log = Log()
    dm = build_data(cfg_for(tmp_path, source="stdlib", sequence_length=64), log=log)
    again = build_data(cfg_for(tmp_path, source="stdlib", sequence_length=64), log=log)
    assert "built" in log[0] and "reused" in log[1]
    assert dm.n_train_tokens == again.n_train_tokens > 10_000
    assert "stdlib" in os.path.basename(dm.info["cache"])


# ---------------------------------------------------------------------------------------------
# Packed batches


@pytest.fixture
def packed(tmp_path, corpus) -> DataModule:
    return build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=32), log=Log()
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a: Batch, b: Batch) -> bool:
    return torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)


def test_packed_batches_are_shifted_windows_of_the_stream(packed):
    """Whatever the grid, a row is T+1 consecutive tokens of the stream, input and target one
    apart; the default `shifted` grid may read across the stream's end into its start."""
    t = packed.sequence_length
    assert packed.batching == "shifted"
    stream = np.asarray(packed.train, dtype=np.int64)
    circle = np.concatenate([stream, stream[:t]])
    text = circle.tobytes()
    for b in take(packed.train_batches(8, seed=0), 3):
        assert b.input_ids.shape == b.targets.shape == (8, t)
        assert b.input_ids.dtype == b.targets.dtype == torch.int64
        assert b.attention_mask is None and b.n_real_tokens == b.n_tokens == 8 * t
        assert torch.equal(b.input_ids[:, 1:], b.targets[:, :-1])
        for x, y in zip(b.input_ids, b.targets, strict=True):
            row = np.array(x.tolist() + [y[-1].item()], dtype=np.int64)
            assert row.tobytes() in text


def test_fixed_grid_is_the_old_packed_batching(tmp_path, corpus):
    """batching=packed: windows at 0, T, 2T, ... every epoch, as before `shifted`."""
    dm = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=32, batching="packed"),
        log=Log(),
    )
    t = dm.sequence_length
    stream = np.asarray(dm.train, dtype=np.int64)
    assert dm.n_train_windows == (len(stream) - 1) // t
    grid = sorted(tuple(stream[i * t : i * t + t + 1]) for i in range(dm.n_train_windows))
    it = dm.train_batches(1, seed=5)
    for _ in range(2):  # every epoch visits exactly the same windows
        epoch = take(it, dm.n_train_windows)
        seen = [tuple(b.input_ids[0].tolist()) + (b.targets[0, -1].item(),) for b in epoch]
        assert sorted(seen) == grid


def positions(n_tokens: int, t: int, batching: str, **kw) -> DataModule:
    """A DataModule whose token i is i: rows are the positions they read."""
    return DataModule(
        tokenizer=ByteTokenizer(),
        train=np.arange(n_tokens, dtype=np.int64),
        val=np.arange(4 * t + 1, dtype=np.int64),
        sequence_length=t,
        batching=batching,
        **kw,
    )


@pytest.mark.parametrize("n_tokens", [1000, 1024, 17])
def test_shifted_grid_predicts_each_position_once_an_epoch_and_moves(n_tokens):
    t = 16
    dm = positions(n_tokens, t, "shifted")
    n = dm.n_train_windows
    assert n == n_tokens // t  # the window across the end counts: no window lost to the shift
    it = dm.train_batches(1, seed=3)
    starts = []
    for _ in range(6):
        batches = take(it, n)
        rows = [b.input_ids[0].numpy() for b in batches]
        targets = np.concatenate([b.targets[0].numpy() for b in batches])
        # Each target position at most once, n*T of them: all but the N % T left over.
        assert len(np.unique(targets)) == len(targets) == n * t
        # The left-over positions are one gap, shorter than T, where the grid's offset puts it.
        missing = np.setdiff1d(np.arange(n_tokens), targets)
        assert len(missing) == n_tokens % t
        # Rows are T+1 consecutive positions around the circle.
        for b in batches:
            row = np.append(b.input_ids[0].numpy(), b.targets[0, -1].item())
            assert np.array_equal(np.diff(row) % n_tokens, np.ones(t))
        starts.append(frozenset(int(r[0]) for r in rows))
    assert len(set(starts)) > 1  # epochs' grids differ: contexts move against positions
    assert starts[0] != starts[1]


@pytest.mark.parametrize("world_size", [2, 3])
def test_shifted_grid_is_shared_by_the_ranks_disjointly(world_size):
    t, n_tokens = 8, 803
    dm = positions(n_tokens, t, "shifted")
    per_rank = dm.n_train_windows // world_size
    grids = []
    for epoch in range(3):
        shares, starts = [], set()
        for rank in range(world_size):
            it = dm.train_batches(1, rank=rank, world_size=world_size, seed=11)
            take(it, per_rank * epoch)
            batches = take(it, per_rank)
            shares.append({p for b in batches for p in b.targets[0].tolist()})
            starts |= {b.input_ids[0, 0].item() % t for b in batches}
            assert len(shares[-1]) == per_rank * t
        assert len(set().union(*shares)) == per_rank * t * world_size  # pairwise disjoint
        assert len(starts) == 1  # one grid for all ranks: every row starts on its offset
        grids.append(starts.pop())
    assert len(set(grids)) > 1  # and the grid moves between epochs


def test_random_offsets_are_uniform_seeded_and_in_range():
    t, n_tokens = 16, 5000
    dm = positions(n_tokens, t, "random")
    assert dm.n_train_windows == (n_tokens - 1) // t
    a = take(dm.train_batches(32, seed=1), 40)
    b = take(dm.train_batches(32, seed=1), 40)
    c = take(dm.train_batches(32, seed=2), 40)
    assert all(same(x, y) for x, y in zip(a, b, strict=True))
    assert not any(same(x, y) for x, y in zip(a, c, strict=True))
    starts = np.concatenate([x.input_ids[:, 0].numpy() for x in a])
    assert starts.min() >= 0 and starts.max() + t <= n_tokens - 1  # the target fits
    assert len(np.unique(starts % t)) == t  # not on a grid
    # Uniform over [0, N - T): each tenth of the range gets its share (1280 draws, 128 each).
    counts = np.bincount(starts * 10 // (n_tokens - t), minlength=10)
    assert counts.min() > 80 and counts.max() < 180
    ranks = [next(dm.train_batches(32, rank=r, world_size=2, seed=1)) for r in range(2)]
    assert not set(ranks[0].input_ids[:, 0].tolist()) & set(ranks[1].input_ids[:, 0].tolist())


def test_packed_order_is_seeded(packed):
    a = take(packed.train_batches(4, seed=1), 5)
    b = take(packed.train_batches(4, seed=1), 5)
    c = take(packed.train_batches(4, seed=2), 5)
    assert all(same(x, y) for x, y in zip(a, b, strict=True))
    assert not all(same(x, y) for x, y in zip(a, c, strict=True))


def test_epochs_are_reshuffled(tmp_path, corpus):
    dm = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=32, batching="packed"),
        log=Log(),
    )
    n = dm.n_train_windows
    it = dm.train_batches(1, seed=3)
    first = [tuple(b.input_ids[0].tolist()) for b in take(it, n)]
    second = [tuple(b.input_ids[0].tolist()) for b in take(it, n)]
    assert sorted(first) == sorted(second) and first != second


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_windows(packed, world_size):
    per_rank = packed.n_train_windows // world_size
    shares = []
    for rank in range(world_size):
        it = packed.train_batches(1, rank=rank, world_size=world_size, seed=7)
        shares.append({tuple(b.input_ids[0].tolist()) for b in take(it, per_rank)})
        assert len(shares[-1]) == per_rank
    assert len(set().union(*shares)) == per_rank * world_size  # pairwise disjoint


@pytest.mark.parametrize("batching", ["shifted", "random", "packed", "padded"])
def test_start_step_resumes_exactly(tmp_path, corpus, batching):
    dm = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=512, batching=batching),
        log=Log(),
    )
    per_rank = dm.n_train_items() // 2
    assert per_rank < 12 * 5 / 2  # the 12 batches of 5 cross at least two epoch boundaries
    fresh = take(dm.train_batches(5, rank=1, world_size=2, seed=9), 12)
    for k in (1, 4, 7):
        resumed = take(dm.train_batches(5, rank=1, world_size=2, seed=9, start_step=k), 12 - k)
        assert all(same(x, y) for x, y in zip(fresh[k:], resumed, strict=True))


# ---------------------------------------------------------------------------------------------
# Padded batches


def test_padded_rows_are_documents_with_pad_masked(tmp_path):
    rng = random.Random(4)
    path = tmp_path / "docs.jsonl"
    docs = [
        f"doc{i:03d} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
        for i in range(120)
    ]
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    t = 48
    dm = build_data(
        cfg_for(tmp_path, source="text", path=str(path), sequence_length=t, batching="padded"),
        log=Log(),
    )
    eos, pad = dm.eos_id, dm.pad_id
    by_prefix = {d[:7]: list(d.encode()) + [eos] for d in docs}
    saw_long = saw_short = False
    for b in take(dm.train_batches(6, seed=0), 10):
        assert b.input_ids.shape == b.targets.shape == (6, t) and b.n_tokens == 6 * t
        assert b.n_real_tokens == int((b.targets != IGNORE_INDEX).sum())
        mask = b.attention_mask
        if mask is None:
            assert not (b.input_ids == pad).any()
        else:
            assert mask.dtype == torch.bool
            assert torch.equal(mask, b.input_ids != pad)
        for x, y in zip(b.input_ids.tolist(), b.targets.tolist(), strict=True):
            row = by_prefix[bytes(x[:7]).decode()][: t + 1]
            saw_long |= len(row) == t + 1
            saw_short |= len(row) < t
            full = row + [pad] * (t + 1 - len(row))
            assert x == full[:-1]
            assert y == [IGNORE_INDEX if tok == pad else tok for tok in full[1:]]
    assert saw_long and saw_short


def test_padded_batch_without_padding_has_no_mask(tmp_path, corpus):
    dm = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=4, batching="padded"),
        log=Log(),
    )
    b = next(dm.train_batches(4, seed=0))  # every document is longer than 5 bytes
    assert b.attention_mask is None and b.n_real_tokens == b.n_tokens == 16


# ---------------------------------------------------------------------------------------------
# Validation


def test_validation_is_one_ordered_deterministic_pass(packed):
    t = packed.sequence_length
    n = packed.n_val_windows
    a = list(packed.val_batches(4))
    b = list(packed.val_batches(4))
    assert len(a) == -(-n // 4) and all(same(x, y) for x, y in zip(a, b, strict=True))
    assert sum(x.n_real_tokens for x in a) == n * t
    assert all(x.input_ids.shape == x.targets.shape == (4, t) for x in a)  # one shape
    val = np.asarray(packed.val, dtype=np.int64)
    assert a[0].input_ids[0].tolist() == val[:t].tolist()
    assert a[0].input_ids[1].tolist() == val[t : 2 * t].tolist()  # each token predicted once
    assert len(list(packed.val_batches(2, max_batches=3))) == 3
    shares = [
        {
            tuple(r)
            for x in packed.val_batches(3, rank=r_, world_size=2)
            for r in x.input_ids.tolist()
        }
        for r_ in range(2)
    ]
    assert not shares[0] & shares[1] and len(shares[0]) == len(shares[1]) == n // 2


def test_the_short_last_eval_batch_is_filled_without_changing_the_loss():
    """Fill rows (so a compiled model sees one shape) carry no target: the same loss and
    accuracy as the short batch, and n_real_tokens counts only the real rows."""
    from lmprof.model import ModelArgs, Transformer

    t = 8
    dm = positions(5 * t + 1, t, "shifted")  # 5 validation windows: batches of 4 and 1
    dm.val = np.arange(5 * t + 1, dtype=np.int64) % 50
    last = list(dm.val_batches(4))[-1]
    assert last.input_ids.shape == (4, t) and last.n_real_tokens == t and last.n_tokens == 4 * t
    assert (last.targets[1:] == IGNORE_INDEX).all() and (last.targets[0] != IGNORE_INDEX).all()
    torch.manual_seed(0)
    model = Transformer(
        ModelArgs(vocab_size=64, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=t)
    ).eval()
    with torch.no_grad():
        filled = model(last.input_ids, last.targets, accuracy=True)
        short = model(last.input_ids[:1], last.targets[:1], accuracy=True)
    torch.testing.assert_close(filled[0], short[0])
    assert filled[1].item() == short[1].item()


# ---------------------------------------------------------------------------------------------
# Synthetic, max_tokens


def test_synthetic_needs_no_files_and_is_deterministic(tmp_path):
    cfg = cfg_for(tmp_path, source="synthetic", vocab_size=1000, sequence_length=64)
    dm = build_data(cfg, log=Log())
    assert dm.vocab_size == 1000 and dm.pad_id == 999
    assert not (tmp_path / "cache").exists()
    a = take(dm.train_batches(8, seed=1), 4)
    b = take(dm.train_batches(8, seed=1, start_step=2), 2)
    assert all(same(x, y) for x, y in zip(a[2:], b, strict=True))
    assert not same(a[0], next(dm.train_batches(8, seed=1, rank=1, world_size=2)))
    x = a[0].input_ids
    assert x.shape == (8, 64) and x.min() >= 0 and x.max() < 999
    assert len(torch.unique(x)) > 300  # actually random, not a constant
    assert torch.equal(a[0].input_ids[:, 1:], a[0].targets[:, :-1])
    assert len(list(dm.val_batches(16))) == 4
    padded = build_data(
        cfg_for(
            tmp_path, source="synthetic", vocab_size=1000, sequence_length=64, batching="padded"
        ),
        log=Log(),
    )
    p = next(padded.train_batches(8, seed=0))
    assert p.attention_mask is not None and p.n_real_tokens < p.n_tokens


def test_max_tokens_caps_training_without_retokenizing(tmp_path, corpus):
    log = Log()
    full = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=16), log=log
    )
    capped = build_data(
        cfg_for(tmp_path, source="text", path=str(corpus), sequence_length=16, max_tokens=500),
        log=log,
    )
    assert "reused" in log[1]
    assert capped.n_train_tokens == 500 < full.n_train_tokens
    assert capped.n_val_tokens == full.n_val_tokens
    assert capped.n_train_windows == (500 - 1) // 16


def test_batch_to_moves_every_tensor():
    b = Batch(
        torch.zeros(2, 3, dtype=torch.long),
        torch.zeros(2, 3, dtype=torch.long),
        torch.ones(2, 3, dtype=torch.bool),
        6,
        6,
    )
    assert b.to("cpu") is b
    m = b.to("meta")
    assert m.input_ids.is_meta and m.targets.is_meta and m.attention_mask.is_meta
    assert (m.n_real_tokens, m.n_tokens) == (6, 6)


# ---------------------------------------------------------------------------------------------
# Errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(tmp_path / "nope")))
    assert "does not exist" in one_line(exc)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(tmp_path / "empty")))
    assert "no .txt" in one_line(exc)


def test_too_small_corpus(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("just a few words\n" * 20)
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(tiny)))
    assert "too small to split" in one_line(exc)
    small = tmp_path / "small.txt"
    small.write_text(text_of(random.Random(5), 200))
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(small), sequence_length=4096))
    assert "validation split" in one_line(exc) and "sequence_length" in one_line(exc)


def test_hf_without_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="hf"))
    assert "pip install lmprof[hf]" in one_line(exc)


class FakeSplit:
    def __init__(self, rows):
        self.rows, self.column_names, self._fingerprint = rows, ["text"], str(len(rows))

    def __getitem__(self, column):
        return [r[column] for r in self.rows]


def test_hf_maps_wikitext_splits_and_reuses_cache_offline(tmp_path, monkeypatch):
    rng = random.Random(6)

    def articles(n):  # wikitext: one row per line, blank rows; an article per `= Title =`
        rows = []
        for k in range(n):
            rows += [{"text": ""}, {"text": f" = Title {k} = \n"}, {"text": ""}]
            for j in range(8):
                rows.append({"text": f" {text_of(rng, 1)}"})
                if j == 3:
                    rows += [{"text": ""}, {"text": " = = Section = = \n"}, {"text": ""}]
        return rows

    splits = {
        "train": FakeSplit(articles(50)),
        "validation": FakeSplit(articles(8)),
        "test": FakeSplit(articles(3)),
    }
    calls = []
    module = type(sys)("datasets")
    module.load_dataset = lambda name, config, **kw: calls.append((name, config, kw)) or splits
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no probe of the hub from a test
    cfg = cfg_for(tmp_path, source="hf", sequence_length=16)
    log = Log()
    dm = build_data(cfg, log=log)
    assert calls == [("wikitext", "wikitext-103-raw-v1", {})] and "built" in log[0]
    manifest = manifest_of(dm)
    # Documents are articles (section headings stay inside them); the test split is kept.
    assert manifest["train"]["documents"] == 50 and manifest["val"]["documents"] == 8
    assert manifest["test"]["documents"] == 3 and dm.has_test
    # Offline, without datasets: the cache is still reused.
    monkeypatch.setitem(sys.modules, "datasets", None)
    again = build_data(cfg, log=log)
    assert "reused" in log[1] and again.n_train_tokens == dm.n_train_tokens

    def unreachable(name, config, **kw):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)\nmore")

    module.load_dataset = unreachable  # the hub unreachable: one line
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="hf", hf_dataset="other", sequence_length=16))
    assert "Couldn't reach" in one_line(exc) and "offline" in one_line(exc)


def test_gpt2_unavailable_offline(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(corpus), tokenizer="gpt2"))
    assert "gpt2" in one_line(exc)


def test_gpt2_rejects_an_empty_local_tokenizer(tmp_path, corpus, monkeypatch):
    # transformers 5 returns an empty tokenizer, not an error, when 'gpt2' was never cached.
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    class GPT2TokenizerFast:
        @staticmethod
        def from_pretrained(name, local_files_only):
            assert local_files_only  # never a download
            return type("T", (), {"backend_tokenizer": HFTok(models.BPE())})()

    module = type(sys)("transformers")
    module.GPT2TokenizerFast = GPT2TokenizerFast
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    monkeypatch.setitem(sys.modules, "transformers", module)
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(corpus), tokenizer="gpt2"))
    assert "local Hugging Face cache" in one_line(exc)
