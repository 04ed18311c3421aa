"""Print the recipe's lmprof command (seed 0) with extra overrides, its data prepared in a scratch folder."""

import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
from benchmarks import nanogpt_recipe as R  # noqa: E402 (the repository root first)

scratch = Path(tempfile.mkdtemp())
halves = R.prepare(scratch, ROOT / "ext/nanoGPT", ROOT / "ext/tinyshakespeare/input.txt")
print(shlex.join(R.lmprof_argv(Path(sys.argv[1]), scratch, halves, 0, False, tuple(sys.argv[2:]))))
