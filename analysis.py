"""The seed's `python analysis.py`: the same as `lmprof analyze` (plots, tables, report.html)."""

import sys
from pathlib import Path

try:
    from lmprof.cli.analyze import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from lmprof.cli.analyze import main

if __name__ == "__main__":
    raise SystemExit(main())
