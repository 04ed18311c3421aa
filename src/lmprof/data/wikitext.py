"""WikiText's documents: its articles (the `= Title =` headings), so an article is one EOS-ended
run of tokens and perplexity is per token over whole articles. Read from files (`text`) and from
dataset rows (`hf`) alike."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from lmprof.config import DOCUMENTS as DOCUMENT_MODES
from lmprof.data.corpus import Document
from lmprof.errors import UserError

# WikiText's own file names (wiki.train.tokens, wiki.valid.raw, ...): data.documents=auto reads
# those as articles.
WIKITEXT_FILE = re.compile(r"^wiki\.(train|valid|test)\.(tokens|raw)$")
# An article's heading: `= Title =` at the start of a line (WikiText's files put a space before
# it; copies that joined lines put the article's first sentence after it). Section headings are
# `= = Section = =`, so the title must not start with `=`.
WIKITEXT_TITLE = re.compile(r"^[ \t]*= (?!=)[^=\n]+? =(?=[ \t]|$)")
# A run of `=` tokens (`= = =`): WikiText's heading marks.
EQUALS_RUN = re.compile(r"(?:(?<= )|^)=(?: =)*(?= |$)")


def wikitext_articles(key: str, lines: Iterable[str]) -> Iterator[Document]:
    """WikiText lines (or dataset rows) grouped into articles, one per `= Title =` heading;
    text before the first heading is an article of its own. Lines keep their line ends."""
    buf: list[str] = []
    n = 0
    for joined in lines:
        for line in _unjoin_titles(joined):
            if WIKITEXT_TITLE.match(line) and any(s.strip() for s in buf):
                yield Document(f"{key}:{n}", "".join(buf))
                buf, n = [], n + 1
            buf.append(line)
    if any(s.strip() for s in buf):
        yield Document(f"{key}:{n}", "".join(buf))


def _unjoin_titles(line: str) -> list[str]:
    """The line, cut before every article title that follows a heading on it. Copies that
    joined lines write `= = Section = = = Title = text`: a run of `=` after a level-k heading's
    text closes it with k of them and opens the next heading with the rest, so a rest of one is
    a title (`= = A = = = = = B = = =` is a level-3 heading after a level-2 one, no title)."""
    stripped = line.lstrip(" \t")
    if not stripped.startswith("= ") or "= = " not in line:
        return [line]
    runs = list(EQUALS_RUN.finditer(line))
    if not runs or runs[0].start() != len(line) - len(stripped):
        return [line]
    level = runs[0].group().count("=")
    cuts = []
    for run in runs[1:]:
        rest = run.group().count("=") - level
        if rest <= 0:  # the heading closed and text follows: no more headings on this line
            break
        if rest == 1:
            cuts.append(run.end() - 1)  # the title's own `=`
        level = rest
    if not cuts:
        return [line]
    pieces, start = [], 0
    for c in cuts:
        pieces.append(line[start:c].rstrip(" ") + "\n")
        start = c
    pieces.append(line[start:])
    return pieces


def is_wikitext_mode(mode: str, looks_like_wikitext: bool) -> bool:
    if mode not in DOCUMENT_MODES:
        raise UserError(f"data.documents={mode!r}: {', '.join(DOCUMENT_MODES)}")
    return mode == "wikitext" or (mode == "auto" and looks_like_wikitext)
