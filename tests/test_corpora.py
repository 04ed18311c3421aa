"""Real corpora: named splits (files, a folder of train/valid/test files, Hugging Face splits),
local Hugging Face datasets and data files, streaming, tokenizer files, WikiText articles, the
checks that keep a bad file or a tampered cache from training silently, and the test split's
columns. Every test makes its own data; nothing needs the network."""

from __future__ import annotations

import json
import random
import socket
import sys
import time

import numpy as np
import pytest
from tiny import tiny

from lmprof.config import build_config
from lmprof.data import build_data
from lmprof.data import tokenizers as tokenizers_mod
from lmprof.data.sources import wikitext_articles
from lmprof.errors import ConfigError, UserError
from lmprof.profiling.vocab import infer_vocab_size

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def text_of(rng: random.Random, n_lines: int) -> str:
    return "".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))) + " .\n"
        for _ in range(n_lines)
    )


def wikitext(rng: random.Random, n_articles: int, start: int = 0) -> str:
    """WikiText's layout: ` = Title = ` lines, ` = = Section = = ` inside articles."""
    out = []
    for k in range(start, start + n_articles):
        out += [" \n", f" = Article {k} = \n", " \n", " " + text_of(rng, 4)]
        out += [" \n", " = = Section = = \n", " \n", " " + text_of(rng, 4)]
    return "".join(out)


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def cfg_for(tmp_path, **data):
    data.setdefault("cache_dir", str(tmp_path / "cache"))
    data.setdefault("sequence_length", 16)
    return build_config({"data": data})


def manifest_of(dm) -> dict:
    with open(f"{dm.info['cache']}/manifest.json") as f:
        return json.load(f)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------------
# 1. Named splits for source=text


def test_text_with_explicit_validation_and_test_files(tmp_path):
    rng = random.Random(0)
    for name, n in (("tr.txt", 200), ("va.txt", 40), ("te.txt", 30)):
        (tmp_path / name).write_text(text_of(rng, n))
    log = Log()
    cfg = cfg_for(
        tmp_path,
        source="text",
        path=str(tmp_path / "tr.txt"),
        val_path=str(tmp_path / "va.txt"),
        test_path=str(tmp_path / "te.txt"),
    )
    dm = build_data(cfg, log=log)
    m = manifest_of(dm)
    sizes = {
        s: len((tmp_path / f).read_bytes())
        for s, f in [("train", "tr.txt"), ("val", "va.txt"), ("test", "te.txt")]
    }
    # Byte tokens: each split is exactly its file plus one EOS.
    assert (dm.n_train_tokens, dm.n_val_tokens, dm.n_test_tokens) == (
        sizes["train"] + 1,
        sizes["val"] + 1,
        sizes["test"] + 1,
    )
    assert m["val"]["from"].startswith("data.val_path") and dm.has_test
    # A named validation split does not depend on val_fraction: the same cache for any value.
    cfg2 = cfg_for(
        tmp_path,
        source="text",
        path=str(tmp_path / "tr.txt"),
        val_path=str(tmp_path / "va.txt"),
        test_path=str(tmp_path / "te.txt"),
        val_fraction=0.3,
    )
    build_data(cfg2, log=log)
    assert "reused" in log[-1]
    batch = next(iter(dm.eval_batches("test", 2)))
    assert batch.input_ids.shape == (2, 16)


def test_a_folder_of_split_files_gives_the_splits(tmp_path):
    rng = random.Random(1)
    root = tmp_path / "wikitext-2"
    root.mkdir()
    (root / "wiki.train.tokens").write_text(wikitext(rng, 20))
    (root / "wiki.valid.tokens").write_text(wikitext(rng, 5, 100))
    (root / "wiki.test.tokens").write_text(wikitext(rng, 4, 200))
    (root / "README").write_text("not a split")
    dm = build_data(cfg_for(tmp_path, source="text", path=str(root)), log=Log())
    m = manifest_of(dm)
    # WikiText's file names: one document per article (sections stay inside).
    assert [m[s]["documents"] for s in ("train", "val", "test")] == [20, 5, 4]
    # documents=file: one document per file instead.
    dm2 = build_data(cfg_for(tmp_path, source="text", path=str(root), documents="file"), log=Log())
    assert [manifest_of(dm2)[s]["documents"] for s in ("train", "val", "test")] == [1, 1, 1]
    # A named validation file replaces the folder's; the folder's valid file is not trained on.
    (tmp_path / "other.txt").write_text(wikitext(rng, 3, 300))
    dm4 = build_data(
        cfg_for(
            tmp_path,
            source="text",
            path=str(root),
            val_path=str(tmp_path / "other.txt"),
            documents="wikitext",  # other.txt is not named like WikiText's files
        ),
        log=Log(),
    )
    assert [manifest_of(dm4)[s]["documents"] for s in ("train", "val", "test")] == [20, 3, 4]
    # A folder with train.txt + test.txt only: validation from val_fraction, test kept.
    other = tmp_path / "plain"
    other.mkdir()
    (other / "train.txt").write_text(text_of(rng, 400))
    (other / "test.txt").write_text(text_of(rng, 30))
    dm3 = build_data(cfg_for(tmp_path, source="text", path=str(other)), log=Log())
    assert dm3.has_test and dm3.n_val_tokens > 0
    assert "val_fraction" in manifest_of(dm3)["val"]["from"]


def test_wikitext_articles_split_on_titles_not_sections():
    lines = [
        " \n",
        " = First = \n",
        " text one .\n",
        " = = Sub = = \n",
        " more .\n",
        " = = = Deeper = = = \n",
        " = Second = \n",
        " two .\n",
    ]
    docs = list(wikitext_articles("k", lines))
    assert [d.text.splitlines()[1 if i == 0 else 0].strip() for i, d in enumerate(docs)] == [
        "= First =",
        "= Second =",
    ]
    # Copies that joined a heading with the article's first sentence: still a title.
    joined = ["= A b = First sentence .\n", "x .\n", "= = S = = y .\n", "= C = z .\n"]
    assert len(list(wikitext_articles("k", joined))) == 2
    # ... and one that put a title right after a section heading: `= =` closes the section,
    # the third `=` opens the title; five in a row are a level-3 heading after a level-2 one.
    midline = ["= A = a .\n", "= = S = = = B = b .\n", "= = T = = = = = U = = = c .\n"]
    docs = list(wikitext_articles("k", midline))
    assert [d.text for d in docs] == [
        "= A = a .\n= = S = =\n",
        "= B = b .\n= = T = = = = = U = = = c .\n",
    ]


def test_validation_path_needs_source_text():
    with pytest.raises(ConfigError):
        build_config({"data": {"source": "stdlib", "val_path": "x"}})


# ---------------------------------------------------------------------------------------------
# 5. Data checks: no silent U+FFFD, no silently reused tampered cache


def test_binary_and_non_utf8_files_are_refused_with_the_offset(tmp_path):
    rng = random.Random(2)
    good = text_of(rng, 300)
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "a.txt").write_text(good)
    (binary / "b.txt").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(binary)), log=Log())
    assert "b.txt" in one_line(exc) and "byte offset" in one_line(exc)

    latin = tmp_path / "latin.txt"
    latin.write_bytes((good + "caf\u00e9 na\u00efve\n").encode("latin-1"))
    offset = len(good.encode())
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(latin)), log=Log())
    assert f"byte offset {offset + 3}" in one_line(exc) and "data.encoding" in one_line(exc)
    dm = build_data(
        cfg_for(tmp_path, source="text", path=str(latin), encoding="latin-1"), log=Log()
    )
    assert "\ufffd" not in dm.tokenizer.decode(
        np.asarray(dm.train).tolist() + np.asarray(dm.val).tolist()
    )
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="text", path=str(latin), encoding="klingon"), log=Log())
    assert "data.encoding" in one_line(exc)


def test_overwritten_token_ids_rebuild_the_cache(tmp_path):
    rng = random.Random(3)
    (tmp_path / "c.txt").write_text(text_of(rng, 300))
    cfg = cfg_for(tmp_path, source="text", path=str(tmp_path / "c.txt"))
    log = Log()
    dm = build_data(cfg, log=log)
    first = np.asarray(dm.train).copy()
    m = manifest_of(dm)
    assert {"bytes", "digest", "min_id", "max_id"} <= set(m["train"]["checksums"])
    path = f"{dm.info['cache']}/train.bin"
    del dm
    with open(path, "r+b") as f:  # same size, other ids: the size check alone would miss it
        f.seek(10)
        f.write(bytes(10))
    again = build_data(cfg, log=log)
    assert "built" in log[-1] and "checksum" in log[-1]
    assert np.array_equal(np.asarray(again.train), first)


# ---------------------------------------------------------------------------------------------
# 3. Tokenizer files, and a built cache reused without its tokenizer


def train_tokenizer_json(tmp_path, texts, vocab=300, with_eos=True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"] if with_eos else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def test_tokenizer_file_and_vocab_merges_folder(tmp_path):
    rng = random.Random(4)
    (tmp_path / "c.txt").write_text(text_of(rng, 300))
    tok = train_tokenizer_json(tmp_path, [text_of(rng, 50)])
    tok.save(str(tmp_path / "tokenizer.json"))
    log = Log()
    cfg = cfg_for(
        tmp_path,
        source="text",
        path=str(tmp_path / "c.txt"),
        tokenizer="file",
        tokenizer_path=str(tmp_path / "tokenizer.json"),
    )
    dm = build_data(cfg, log=log)
    v = tok.get_vocab_size()
    # Its own ids, its <|endoftext|> as EOS, PAD one past them.
    assert (dm.vocab_size, dm.eos_id, dm.pad_id) == (v + 1, tok.token_to_id("<|endoftext|>"), v)
    sample = "alpha beta gamma ."
    assert dm.tokenizer.encode(sample) == tok.encode(sample).ids
    assert dm.tokenizer.decode(dm.tokenizer.encode(sample)) == sample
    assert infer_vocab_size(cfg)[0] == dm.vocab_size  # `lmprof estimate` knows it beforehand
    # GPT-2's format: a folder of vocab.json + merges.txt (no end-of-text: EOS is a new id).
    folder = tmp_path / "vocab"
    folder.mkdir()
    plain = train_tokenizer_json(tmp_path, [text_of(rng, 50)], with_eos=False)
    plain.model.save(str(folder))
    cfg2 = cfg_for(
        tmp_path,
        source="text",
        path=str(tmp_path / "c.txt"),
        tokenizer="file",
        tokenizer_path=str(folder),
    )
    dm2 = build_data(cfg2, log=log)
    n = plain.get_vocab_size()
    assert (dm2.eos_id, dm2.pad_id, dm2.vocab_size) == (n, n + 1, n + 2)
    assert infer_vocab_size(cfg2)[0] == dm2.vocab_size
    assert dm2.tokenizer.decode(dm2.tokenizer.encode(sample)) == sample
    # An edited tokenizer file is another cache.
    tok2 = train_tokenizer_json(tmp_path, [text_of(rng, 80)], vocab=280)
    tok2.save(str(tmp_path / "tokenizer.json"))
    build_data(cfg, log=log)
    assert "built" in log[-1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as exc:
        build_data(
            cfg_for(
                tmp_path,
                source="text",
                path=str(tmp_path / "c.txt"),
                tokenizer="file",
                tokenizer_path=str(tmp_path / "empty"),
            ),
            log=log,
        )
    assert "tokenizer.json" in one_line(exc)
    with pytest.raises(ConfigError):
        build_config({"data": {"tokenizer": "file"}})


def test_gpt2_file_must_be_gpt2(tmp_path):
    rng = random.Random(5)
    (tmp_path / "c.txt").write_text(text_of(rng, 100))
    train_tokenizer_json(tmp_path, [text_of(rng, 50)]).save(str(tmp_path / "t.json"))
    cfg = cfg_for(
        tmp_path,
        source="text",
        path=str(tmp_path / "c.txt"),
        tokenizer="gpt2",
        tokenizer_path=str(tmp_path / "t.json"),
    )
    with pytest.raises(UserError) as exc:
        build_data(cfg, log=Log())
    assert "not GPT-2's vocabulary" in one_line(exc)


def test_a_built_gpt2_cache_is_reused_without_any_tokenizer(tmp_path, monkeypatch):
    rng = random.Random(6)
    (tmp_path / "c.txt").write_text(text_of(rng, 200))
    fake = tokenizers_mod.ByteTokenizer()  # stands in for GPT-2 while building
    fake.name, fake.eos_id, fake.pad_id, fake.vocab_size = "gpt2", 50256, 50257, 50258
    monkeypatch.setattr(tokenizers_mod, "load_gpt2", lambda path="": fake)
    cfg = cfg_for(tmp_path, source="text", path=str(tmp_path / "c.txt"), tokenizer="gpt2")
    log = Log()
    build_data(cfg, log=log)

    # Offline, no tiktoken, no transformers, no tokenizer file: the cache still opens.
    def unavailable(path=""):
        raise AssertionError("the tokenizer was loaded")

    monkeypatch.setattr(tokenizers_mod, "load_gpt2", unavailable)
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    dm = build_data(cfg, log=log)
    assert "reused" in log[-1] and (dm.vocab_size, dm.pad_id, dm.eos_id) == (50258, 50257, 50256)
    assert next(iter(dm.train_batches(2))).input_ids.shape == (2, 16)


# ---------------------------------------------------------------------------------------------
# 2. Hugging Face: local folders, data files, split names, columns, streaming, offline


@pytest.fixture
def hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    # Builders cache their Arrow files: keep them inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return datasets


def rows(rng, n, col="text"):
    return [{col: text_of(rng, 3), "id": i} for i in range(n)]


def test_save_to_disk_dataset_dict_and_dataset(tmp_path, hf):
    rng = random.Random(7)
    d = hf.DatasetDict(
        {
            "train": hf.Dataset.from_list(rows(rng, 120, "body")),
            "dev": hf.Dataset.from_list(rows(rng, 20, "body")),
            "eval": hf.Dataset.from_list(rows(rng, 10, "body")),
        }
    )
    d.save_to_disk(str(tmp_path / "dd"))
    log = Log()
    cfg = cfg_for(
        tmp_path,
        source="hf",
        hf_dataset=str(tmp_path / "dd"),
        text_column="body",
        hf_split="train,dev,eval",
    )
    dm = build_data(cfg, log=log)
    m = manifest_of(dm)
    assert [m[s]["documents"] for s in ("train", "val", "test")] == [120, 20, 10]
    build_data(cfg, log=log)
    assert "reused" in log[-1]
    # Edited and saved again: the fingerprint changes, the cache rebuilds.
    d["train"] = hf.Dataset.from_list(rows(rng, 100, "body"))
    d.save_to_disk(str(tmp_path / "dd2"))
    import shutil

    shutil.rmtree(tmp_path / "dd")
    shutil.move(str(tmp_path / "dd2"), str(tmp_path / "dd"))
    dm = build_data(cfg, log=log)
    assert "source changed" in log[-1] and manifest_of(dm)["train"]["documents"] == 100
    with pytest.raises(UserError) as exc:
        build_data(
            cfg_for(tmp_path, source="hf", hf_dataset=str(tmp_path / "dd"), hf_split="train,dev"),
            log=log,
        )
    assert "data.text_column" in one_line(exc)
    # Streamed from the folder too (Dataset.to_iterable_dataset), cut at max_tokens.
    streamed = cfg_for(
        tmp_path,
        source="hf",
        hf_dataset=str(tmp_path / "dd"),
        text_column="body",
        hf_split="train,dev",
        streaming=True,
        max_tokens=2000,
    )
    dm = build_data(streamed, log=log)
    assert 2000 <= manifest_of(dm)["train"]["tokens"] < 2400 and dm.n_train_tokens == 2000
    # One Dataset (no splits): validation from val_fraction.
    hf.Dataset.from_list(rows(rng, 200)).save_to_disk(str(tmp_path / "one"))
    dm = build_data(cfg_for(tmp_path, source="hf", hf_dataset=str(tmp_path / "one")), log=log)
    assert not dm.has_test and dm.n_val_tokens > 0


def test_json_and_parquet_data_files(tmp_path, hf):
    rng = random.Random(8)
    tr, va = rows(rng, 100), rows(rng, 20)
    for name, rs in (("tr.jsonl", tr), ("va.jsonl", va)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rs))
    log = Log()
    files = f"train={tmp_path / 'tr.jsonl'},validation={tmp_path / 'va.jsonl'}"
    dm = build_data(cfg_for(tmp_path, source="hf", hf_dataset="json", data_files=files), log=log)
    assert [manifest_of(dm)[s]["documents"] for s in ("train", "val")] == [100, 20]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(tr), tmp_path / "tr.parquet")
    dm = build_data(
        cfg_for(
            tmp_path, source="hf", hf_dataset="parquet", data_files=str(tmp_path / "tr.parquet")
        ),
        log=log,
    )
    assert manifest_of(dm)["val"]["from"].startswith("val_fraction")
    # Globs, as datasets takes them; a pattern matching nothing is one line.
    globbed = f"train={tmp_path / 'tr*.jsonl'},validation={tmp_path / 'va.jsonl'}"
    dm = build_data(cfg_for(tmp_path, source="hf", hf_dataset="json", data_files=globbed), log=log)
    assert manifest_of(dm)["train"]["documents"] == 100
    with pytest.raises(UserError) as exc:
        build_data(
            cfg_for(tmp_path, source="hf", hf_dataset="json", data_files="x*.jsonl"), log=log
        )
    assert "matches no file" in one_line(exc)
    # An edited data file rebuilds.
    (tmp_path / "va.jsonl").write_text("".join(json.dumps(r) + "\n" for r in va[:10]))
    dm = build_data(cfg_for(tmp_path, source="hf", hf_dataset="json", data_files=files), log=log)
    assert "source changed" in log[-1] and manifest_of(dm)["val"]["documents"] == 10
    with pytest.raises(ConfigError):
        build_config(
            {"data": {"source": "hf", "hf_dataset": "json", "streaming": True, "tokenizer": "bpe"}}
        )


def test_streaming_stops_at_max_tokens(tmp_path, hf):
    rng = random.Random(9)
    (tmp_path / "tr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(rng, 2000)))
    (tmp_path / "va.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(rng, 20)))
    files = f"train={tmp_path / 'tr.jsonl'},validation={tmp_path / 'va.jsonl'}"
    cfg = cfg_for(
        tmp_path, source="hf", hf_dataset="json", data_files=files, streaming=True, max_tokens=5000
    )
    dm = build_data(cfg, log=Log())
    m = manifest_of(dm)
    assert 5000 <= m["train"]["tokens"] < 5000 + 400 and dm.n_train_tokens == 5000
    assert m["val"]["documents"] == 20
    with pytest.raises(UserError) as exc:  # a stream cannot be split by val_fraction
        build_data(
            cfg_for(
                tmp_path,
                source="hf",
                hf_dataset="json",
                data_files=str(tmp_path / "tr.jsonl"),
                streaming=True,
            ),
            log=Log(),
        )
    assert "validation split" in one_line(exc)


def test_offline_hub_fails_at_once_in_one_line(tmp_path, hf, monkeypatch):
    # Offline mode is switched on in the imported modules: registered, so teardown restores.
    for mod, attr in (
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, attr):
            monkeypatch.setattr(m, attr, getattr(m, attr))
    t0 = time.perf_counter()
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="hf", hf_dataset="no-such/dataset-xyz"), log=Log())
    assert "offline" in one_line(exc) and time.perf_counter() - t0 < 10
    # Not flagged offline, but the hub unreachable: one probe, then offline at once.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def refuse(*a, **k):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for mod, attr in (
        ("datasets.config", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_DATASETS_OFFLINE"),
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ):
        if hasattr(sys.modules.get(mod), attr):
            monkeypatch.setattr(sys.modules[mod], attr, False)  # as if imported online
    t0 = time.perf_counter()
    with pytest.raises(UserError) as exc:
        build_data(cfg_for(tmp_path, source="hf", hf_dataset="no-such/dataset-xyz"), log=Log())
    assert "offline" in one_line(exc) and time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------------
# The test split's columns, and TensorBoard reading back hparams and the summary row

TINY = tiny("max_steps=4", synthetic=False)


def test_a_run_with_a_test_split_reports_it_and_tensorboard_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from lmprof.cli import main
    from lmprof.results import producer_of, read_rows

    rng = random.Random(10)
    for name, n in (("train.txt", 200), ("valid.txt", 30), ("test.txt", 30)):
        (tmp_path / name).write_text(text_of(rng, n))
    monkeypatch.chdir(tmp_path)
    args = ["run", *TINY, "data.source=text", f"data.path={tmp_path}", "tensorboard=true"]
    assert main([*args, "run_name=tb"]) == 0
    (row,) = read_rows(tmp_path / "results.csv")
    assert float(row["test_loss"]) > 0 and float(row["test_ppl"]) > 1
    assert producer_of("test_ppl").name == "summary"  # declared with the other results columns
    acc = EventAccumulator(str(tmp_path / "results/tensorboard/tb"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "eval/eval_loss", "test/test_loss", "summary/eval_loss"} <= set(scalars)
    assert acc.Scalars("summary/test_ppl")[-1].value == pytest.approx(float(row["test_ppl"]), 1e-4)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model.d_model"].number_value == 32
    assert start.hparams["data.source"].string_value == "text"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert "summary/test_ppl" in {m.name.tag for m in experiment.metric_infos}


@pytest.mark.parametrize("key,module", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_one_line(tmp_path, monkeypatch, key, module):
    from lmprof.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # find_spec -> None: not installed
    assert main(["run", *TINY, "data.source=synthetic", "vocab_size=64", f"{key}=true"]) == 2
    assert not (tmp_path / "results.csv").exists()


def test_wandb_offline_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lmprof.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["run", *TINY, "data.source=synthetic", "vocab_size=64", "wandb=true"]) == 0
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_mlflow_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from lmprof.cli import main

    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()
    args = ["run", *TINY, "data.source=synthetic", "vocab_size=64", "mlflow=true"]
    assert main([*args, f"mlflow_uri={uri}", "run_name=ml"]) == 0
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["lmprof"], output_format="list")
    assert run.data.params["model.d_model"] == "32" and "summary/eval_loss" in run.data.metrics
    assert run.info.status == "FINISHED"


def test_hub_name_config_and_revision_reach_load_dataset(tmp_path, monkeypatch):
    calls = []
    rng = random.Random(11)

    class Split(list):
        column_names = ["text"]

        def __getitem__(self, col):
            return (
                [r["text"] for r in self] if isinstance(col, str) else list.__getitem__(self, col)
            )

    data = {"train": Split(rows(rng, 60)), "validation": Split(rows(rng, 10))}
    module = type(sys)("datasets")
    module.load_dataset = lambda name, config, **kw: calls.append((name, config, kw)) or data
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cfg_for(tmp_path, source="hf", hf_dataset="someone/corpus", hf_revision="v1.2")
    build_data(cfg, log=Log())
    # No config name unless one is given (WikiText's is the one default).
    assert calls == [("someone/corpus", None, {"revision": "v1.2"})]


def fake_module(name, **attrs):
    import importlib.machinery

    mod = type(sys)(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec sees it installed
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def test_trackers_get_the_config_steps_and_the_summary_row(tmp_path, monkeypatch):
    """W&B and MLflow through stand-ins (the real ones are tested above when installed): what
    the run hands each of them."""
    from lmprof.cli import main

    calls = []

    class Run:
        summary = {}

        def log(self, values, step):
            calls.append(("wandb.log", step, dict(values)))

        def finish(self, exit_code):
            calls.append(("wandb.finish", exit_code))

    run = Run()
    wandb = fake_module("wandb", init=lambda **kw: calls.append(("wandb.init", kw)) or run)
    record = lambda what: lambda *a, **k: calls.append((what, a, k))  # noqa: E731
    mlflow = fake_module(
        "mlflow",
        **{
            f: record(f"mlflow.{f}")
            for f in (
                "set_tracking_uri",
                "set_experiment",
                "start_run",
                "log_params",
                "set_tag",
                "log_metrics",
                "set_tags",
                "end_run",
            )
        },
    )
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.chdir(tmp_path)
    args = ["run", *TINY, "data.source=synthetic", "vocab_size=64", "run_name=tr"]
    assert main([*args, "wandb=true", "mlflow=true", "mlflow_uri=file:///x"]) == 0
    (init,) = [c[1] for c in calls if c[0] == "wandb.init"]
    assert init["name"] == "tr" and init["config"]["model"]["d_model"] == 32
    steps = [c[1] for c in calls if c[0] == "wandb.log"]
    assert steps[:2] == [2, 4] and any(
        "eval/eval_loss" in c[2] for c in calls if c[0] == "wandb.log"
    )
    assert run.summary["status"] == "ok" and "eval_loss" in run.summary
    assert ("wandb.finish", 0) in calls
    names = [c[0] for c in calls if c[0].startswith("mlflow")]
    assert names[:4] == [
        "mlflow.set_tracking_uri",
        "mlflow.set_experiment",
        "mlflow.start_run",
        "mlflow.log_params",
    ]
    params = next(c[1][0] for c in calls if c[0] == "mlflow.log_params")
    assert params["model.d_model"] == "32"
    summary = [c[1][0] for c in calls if c[0] == "mlflow.log_metrics"][-1]
    assert "summary/eval_loss" in summary
    assert calls[-1][0] == "mlflow.end_run" and calls[-1][2] == {"status": "FINISHED"}
