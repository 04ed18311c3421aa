"""Tokenizers: byte, char, bpe (trained on the training split, cached), gpt2.

Every tokenizer has a dedicated PAD id that no text ever encodes to, so PAD masking never hides
a real token, and an end-of-text id (EOS) that separates documents in the token stream.
`vocab_size` counts every id, PAD included: the model needs no other number.

| name | ids | EOS | PAD |
| --- | --- | --- | --- |
| byte | 0..255 = bytes of UTF-8 | 256 | 257 (vocab 258) |
| char | 0..n-1 = characters of the training text, n+1 = unknown | n | n+2 (vocab n+3) |
| bpe  | trained byte-level BPE of data.vocab_size ids, specials first | 0 | 1 |
| gpt2 | GPT-2's 50257 ids (tiktoken, data.tokenizer_path, or transformers' cache) | 50256 | 50257 (vocab 50258) |
| file | data.tokenizer_path: a tokenizer.json, or a folder of vocab.json + merges.txt (GPT-2's format); V ids | its <|endoftext|> (or </s>, <eos>), else V | the next id (vocab V+1 or V+2) |

A built token cache needs no tokenizer: `LazyTokenizer` answers the ids from the manifest and
loads the real one only to encode or decode, so a gpt2 cache is reused on a machine without
tiktoken or network.

Text never encodes to a special id: a literal "<|endoftext|>" in a file is ordinary text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmprof.errors import UserError
from lmprof.paths import user_path
from lmprof.profiling.vocab import EOS_NAMES

EOT = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "\ufffd"


class Tokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str, plus what the data pipeline needs."""

    name: str = ""
    vocab_size: int = 0
    pad_id: int = 0
    eos_id: int | None = None
    files: tuple[str, ...] = ()  # what `save` writes into the cache directory

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save(self, directory: Path) -> None:  # noqa: B027 - fixed tokenizers have nothing to save
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, pad_id={self.pad_id})"


def _ids(ids: Sequence[int] | np.ndarray) -> list[int]:
    if isinstance(ids, np.ndarray) or hasattr(ids, "tolist"):
        return [int(i) for i in ids.tolist()]  # type: ignore[union-attr]
    return [int(i) for i in ids]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: round-trips any str exactly (lone surrogates via surrogatepass)."""

    name = "byte"
    eos_id = 256
    pad_id = 257
    vocab_size = 258

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)

    def decode(self, ids: Sequence[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in _ids(ids):
            if i < 256:
                run.append(i)
                continue
            out.append(_utf8(bytes(run)))
            run = []
            if i == self.eos_id:
                out.append(EOT)
        out.append(_utf8(bytes(run)))
        return "".join(out)


def _utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # model samples need not be valid UTF-8
        return b.decode("utf-8", "replace")


class CharTokenizer(Tokenizer):
    """The characters of the training text, in code point order; others map to one unknown id."""

    name = "char"
    files = ("chars.json",)

    def __init__(self, chars: str):
        self.chars = chars
        self.codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        n = len(chars)
        self.eos_id, self.unk_id, self.pad_id = n, n + 1, n + 2
        self.vocab_size = n + 3

    @classmethod
    def train(cls, texts: Sequence[str]) -> CharTokenizer:
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls("".join(sorted(seen)))

    @classmethod
    def load(cls, directory: Path) -> CharTokenizer:
        return cls(json.loads((directory / "chars.json").read_text())["chars"])

    def save(self, directory: Path) -> None:
        from lmprof.io import atomic_write_text

        atomic_write_text(directory / "chars.json", json.dumps({"chars": self.chars}))

    def encode_array(self, text: str) -> np.ndarray:
        # Vectorized lookup: code points, then their rank among the known ones.
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        if not len(self.codes):
            return np.full(len(cps), self.unk_id, dtype=np.int64)
        pos = np.searchsorted(self.codes, cps)
        pos_c = np.minimum(pos, len(self.codes) - 1)
        known = self.codes[pos_c] == cps
        return np.where(known, pos_c, self.unk_id).astype(np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.chars)
        out = []
        for i in _ids(ids):
            if i < n:
                out.append(self.chars[i])
            elif i == self.eos_id:
                out.append(EOT)
            elif i == self.unk_id:
                out.append(UNK)
        return "".join(out)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (trained BPE, or GPT-2's from transformers' local cache)."""

    files = ("tokenizer.json",)

    def __init__(self, tok: Any, name: str, eos_id: int, pad_id: int, vocab_size: int):
        if hasattr(tok, "encode_special_tokens"):
            tok.encode_special_tokens = True  # text containing "<|endoftext|>" stays text
        self.tok, self.name = tok, name
        self.eos_id, self.pad_id, self.vocab_size = eos_id, pad_id, vocab_size

    @classmethod
    def train_bpe(cls, texts: Sequence[str], vocab_size: int) -> HFTokenizer:
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT, PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer, length=len(texts))
        return cls._bpe(tok)

    @classmethod
    def load_bpe(cls, directory: Path) -> HFTokenizer:
        from tokenizers import Tokenizer as HFTok

        return cls._bpe(HFTok.from_file(str(directory / "tokenizer.json")))

    @classmethod
    def _bpe(cls, tok: Any) -> HFTokenizer:
        # A small corpus can run out of merges before vocab_size: report what was trained.
        return cls(tok, "bpe", tok.token_to_id(EOT), tok.token_to_id(PAD), tok.get_vocab_size())

    def save(self, directory: Path) -> None:
        self.tok.save(str(directory / "tokenizer.json"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # encode_batch_fast skips offsets (less memory, faster); tokenizers < 0.21 lacks it.
        fn = getattr(self.tok, "encode_batch_fast", None) or self.tok.encode_batch
        encs = fn(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        keep = [i for i in _ids(ids) if i != self.pad_id and 0 <= i < self.tok.get_vocab_size()]
        return self.tok.decode(keep, skip_special_tokens=False)


TOKENIZER_JSON = "tokenizer.json"
VOCAB_FILES = ("vocab.json", "merges.txt")


def tokenizer_files(path: str) -> list[Path]:
    """The file(s) data.tokenizer_path names: a tokenizer.json, or a folder holding one or
    GPT-2's vocab.json + merges.txt."""
    p = user_path(path, "data.tokenizer_path")
    if not p.exists():
        raise UserError(f"data.tokenizer_path '{path}' does not exist")
    if p.is_file():
        return [p]
    if (p / TOKENIZER_JSON).is_file():
        return [p / TOKENIZER_JSON]
    if all((p / f).is_file() for f in VOCAB_FILES):
        return [p / f for f in VOCAB_FILES]
    raise UserError(
        f"data.tokenizer_path '{path}' holds neither {TOKENIZER_JSON} nor {' + '.join(VOCAB_FILES)}"
    )


def _read_tokenizer(files: Sequence[Path]) -> Any:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers

    try:
        if len(files) == 1:
            return HFTok.from_file(str(files[0]))
        # GPT-2's format: byte-level BPE, no prefix space (what GPT-2's own tokenizer does).
        tok = HFTok(models.BPE.from_file(str(files[0]), str(files[1])))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    except Exception as exc:  # tokenizers raises its own Exception for a malformed file
        raise UserError(f"{files[0]} is not a tokenizer file ({_first_line(exc)})") from None


def file_tokenizer(files: Sequence[Path]) -> HFTokenizer:
    """A tokenizer read from files: its ids as they are; EOS its end-of-text token when it has
    one (else a new id); PAD always a new id, which no text encodes to."""
    tok = _read_tokenizer(files)
    # One past the largest id (a file's ids need not be contiguous): lmprof/profiling/vocab.py
    # reads the same number from the JSON for `lmprof estimate`.
    n = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    eos = next((i for i in (tok.token_to_id(t) for t in EOS_NAMES) if i is not None), None)
    if eos is None:
        eos, n = n, n + 1
    return HFTokenizer(tok, "file", eos, n, n + 1)


def gpt2_from_files(files: Sequence[Path]) -> HFTokenizer:
    """GPT-2's tokenizer from local files (tokenizer.json or vocab.json + merges.txt)."""
    tok = HFTokenizer(_read_tokenizer(files), "gpt2", 50256, 50257, 50258)
    if not _is_gpt2(tok):
        raise UserError(f"data.tokenizer_path: {files[0]} is not GPT-2's vocabulary")
    return tok


class LazyTokenizer(Tokenizer):
    """The ids of a built cache's tokenizer (from its manifest); the tokenizer itself is loaded
    on the first encode or decode, so reusing a cache never needs tiktoken, a tokenizer file or
    the network."""

    def __init__(self, name: str, vocab_size: int, pad_id: int, eos_id: int | None, load: Any):
        self.name, self.vocab_size, self.pad_id, self.eos_id = name, vocab_size, pad_id, eos_id
        self._load = load
        self._tok: Tokenizer | None = None

    @property
    def loaded(self) -> Tokenizer:
        if self._tok is None:
            self._tok = self._load()
        return self._tok

    def encode_array(self, text: str) -> np.ndarray:
        return self.loaded.encode_array(text)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.loaded.encode_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.loaded.decode(ids)


class TiktokenGPT2(Tokenizer):
    name = "gpt2"
    eos_id = 50256
    pad_id = 50257
    vocab_size = 50258

    def __init__(self, enc: Any):
        self.enc = enc

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.enc.encode_ordinary(text), dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = self.enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)
        return [np.asarray(ids, dtype=np.int64) for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode([i for i in _ids(ids) if 0 <= i < 50257])


def load_gpt2(path: str = "") -> Tokenizer:
    """GPT-2's tokenizer from data.tokenizer_path when given, else tiktoken, else transformers'
    local cache; never a hidden download through transformers (local_files_only). tiktoken
    fetches its file once if it can (TIKTOKEN_CACHE_DIR keeps it for offline use)."""
    if path:
        return gpt2_from_files(tokenizer_files(path))
    problems = []
    try:
        import tiktoken
    except ImportError:
        problems.append("tiktoken is not installed")
    else:
        try:
            tok: Tokenizer = TiktokenGPT2(tiktoken.get_encoding("gpt2"))
        except Exception as exc:  # offline: requests/urllib errors of many kinds
            problems.append(f"tiktoken could not fetch 'gpt2' ({type(exc).__name__}; offline?)")
        else:
            if _is_gpt2(tok):
                return tok
            problems.append("tiktoken's 'gpt2' is not GPT-2's vocabulary")
    try:
        from transformers import GPT2TokenizerFast
    except ImportError:
        problems.append("transformers is not installed")
    else:
        try:
            hf = GPT2TokenizerFast.from_pretrained("gpt2", local_files_only=True)
        except Exception as exc:
            problems.append(f"'gpt2' is not in the local Hugging Face cache ({_first_line(exc)})")
        else:
            tok = HFTokenizer(hf.backend_tokenizer, "gpt2", 50256, 50257, 50258)
            # transformers 5 builds an empty tokenizer when the files are missing, silently.
            if _is_gpt2(tok):
                return tok
            problems.append("'gpt2' is not in the local Hugging Face cache")
    raise UserError(
        "data.tokenizer=gpt2 is unavailable: "
        + "; ".join(problems)
        + " (pip install lmprof[gpt2] on a machine with network once, give GPT-2's "
        "tokenizer.json or vocab.json + merges.txt as data.tokenizer_path, or use byte/char/bpe)"
    )


def _is_gpt2(tok: Tokenizer) -> bool:
    try:
        return tok.encode("hello world") == [31373, 995]
    except Exception:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------------------------
# The cache's view: a spec (what identifies the tokenizer before training) and how to make one.


def tokenizer_spec(name: str, vocab_size: int, path: str = "") -> dict[str, Any]:
    """What identifies the tokenizer in the cache key, known without loading it: a file
    tokenizer by its content, so an edited tokenizer file rebuilds the cache. gpt2 is GPT-2's
    ids wherever they come from (tiktoken or a file), so its caches are shared."""
    if name == "bpe":
        return {"name": "bpe", "vocab_size": vocab_size}
    if name in ("byte", "char", "gpt2"):
        return {"name": name}
    if name == "file":
        from lmprof.data.digest import files_digest

        files = tokenizer_files(path)
        return {"name": "file", "digest": files_digest((f.name, f) for f in files)[:16]}
    raise UserError(f"unknown tokenizer '{name}': byte, char, bpe, gpt2 or file")


def fixed_tokenizer(spec: dict[str, Any], path: str = "") -> Tokenizer | None:
    """The tokenizer when it needs no training text (byte, gpt2, file); None for char and bpe."""
    if spec["name"] == "byte":
        return ByteTokenizer()
    if spec["name"] == "gpt2":
        return load_gpt2(path)
    if spec["name"] == "file":
        return file_tokenizer(tokenizer_files(path))
    return None


def train_tokenizer(spec: dict[str, Any], texts: Sequence[str]) -> Tokenizer:
    if spec["name"] == "char":
        return CharTokenizer.train(texts)
    if spec["name"] == "bpe":
        return HFTokenizer.train_bpe(texts, spec["vocab_size"])
    raise ValueError(f"tokenizer {spec['name']} is not trained")


def load_tokenizer(spec: dict[str, Any], directory: Path, path: str = "") -> Tokenizer:
    """The tokenizer a cache was built with: trained ones and file ones from the copy in the
    cache directory (the original file may be gone), fixed ones as they are."""
    if spec["name"] == "char":
        return CharTokenizer.load(directory)
    if spec["name"] == "bpe":
        return HFTokenizer.load_bpe(directory)
    if spec["name"] == "file":
        return file_tokenizer([directory / TOKENIZER_JSON])
    if spec["name"] == "gpt2" and not path and (directory / TOKENIZER_JSON).is_file():
        return gpt2_from_files([directory / TOKENIZER_JSON])  # built from a GPT-2 file
    tok = fixed_tokenizer(spec, path)
    assert tok is not None
    return tok


class SyntheticTokenizer(Tokenizer):
    """For source=synthetic: ids are the text. Tokens are drawn from [0, V-1); PAD is V-1."""

    name = "synthetic"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pad_id = vocab_size - 1
        self.eos_id = None

    def encode_array(self, text: str) -> np.ndarray:
        b = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        return b.astype(np.int64) % max(self.vocab_size - 1, 1)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(i) for i in _ids(ids) if i != self.pad_id)
