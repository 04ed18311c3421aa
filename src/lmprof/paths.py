"""Every file a run writes, in one place: the run, the sweep that supervises it, find-max and
the analysis must agree on them, so they are named here and nowhere else.

Layout under logging.output_dir (the seed's, extended):
  results.csv                              one row per run
  .lmprof/results.csv.lock                 its lock (a hidden folder that git ignores)
  logs/<run>.log                           the run's log (the sweep's capture of it)
  results/details/<run>_metrics.csv        per logged step
  results/details/<run>_eval.csv           evaluation points
  results/details/<run>_config.yaml        the resolved config
  results/tensorboard/<run>/               logging.tensorboard
  results/traces/<run>/                    torch.profiler traces, memory snapshots
  results/tables/<run>_profile_ops.{md,csv}, <run>_roofline.{md,csv}
  results/find_max/<run>/                  find-max's probes and boundary
  <checkpoint.dir>/<run>/step_<N>/         checkpoints

<run> above is the run's file stem: its name for the first attempt of that name (the seed's
layout), `<name>@<k>` for the k-th, so no attempt ever writes over an earlier one's files (a
name cannot hold '@'). The results row's `attempt` column says which files are its; a row that
wrote none has attempt 0. A run resumed from a checkpoint continues its last attempt's files.
Checkpoints, the sweep's claim and find-max belong to the name, across attempts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprof.errors import UserError

RESULTS_CSV = "results.csv"
# Set by the sweep for its child: the sweep already writes the child's output to its log, so
# the run must not open the same file a second time.
LOG_CAPTURED_ENV = "LMPROF_LOG_CAPTURED"
# Set by the sweep for its children: every row of one sweep says which sweep wrote it, so the
# analysis can tell a comparison repeated by a later sweep from one measured once.
SWEEP_ID_ENV = "LMPROF_SWEEP_ID"
DEFAULT_CHECKPOINT_DIR = "checkpoints"


# lmprof's own bookkeeping beside a user's files (locks): hidden, and it ignores itself in git.
STATE_DIR = ".lmprof"


def user_path(given: str, key: str) -> Path:
    """A path the user gave (`key` names where), `~` and `~user` expanded: the one place a
    user's path is expanded, so an unknown user is one line naming the key, never
    pathlib's RuntimeError."""
    p = Path(given)
    if not given.startswith("~"):
        return p
    try:
        return p.expanduser()
    except RuntimeError:
        user = given[1:].split("/", 1)[0]
        who = f"user '{user}' is unknown here" if user else "this user has no home folder"
        raise UserError(f"{key} '{given}': {who}, so '~' cannot be expanded") from None


def lock_path(path: str | Path) -> Path:
    """The advisory lock of a shared file: `.lmprof/results.csv.lock` beside `results.csv`.
    Never deleted after use: a process waiting on a deleted lock file's inode would hold a lock
    no newcomer sees. Kept in a hidden folder instead, so it does not litter the user's."""
    p = Path(path)
    return p.parent / STATE_DIR / f"{p.name}.lock"


def results_csv(output_dir: str | Path) -> Path:
    """The results table of an output folder, shared by every run written there."""
    return Path(output_dir) / RESULTS_CSV


def details_dir(output_dir: str | Path) -> Path:
    """Where the runs of an output folder write their per-run CSVs and configs."""
    return Path(output_dir) / "results" / "details"


def stem(run_name: str, attempt: int = 1) -> str:
    """The file stem of a run name's attempt: the name itself for the first (or 0: none)."""
    return run_name if attempt <= 1 else f"{run_name}@{attempt}"


def metrics_csv(details: str | Path, run_stem: str) -> Path:
    """A run's per-step CSV in a details folder (the analysis may be given any folder)."""
    return Path(details) / f"{run_stem}_metrics.csv"


def eval_csv(details: str | Path, run_stem: str) -> Path:
    return Path(details) / f"{run_stem}_eval.csv"


_STEP_DIR = re.compile(r"^step_(\d+)$")
# A checkpoint's folder while its ranks write it (renamed to step_<N> when complete).
CHECKPOINT_TMP_PREFIX = ".tmp_step_"
CHECKPOINT_MAIN = "trainer.json"  # rank 0's: step, run identity, world size, lr
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's, written last by its save


def checkpoint_dir(root: Path, step: int) -> Path:
    """The complete checkpoint of `step` under a run's checkpoints folder."""
    return root / f"step_{step}"


def checkpoint_tmp_dir(root: Path, step: int) -> Path:
    return root / f"{CHECKPOINT_TMP_PREFIX}{step}"


def checkpoint_rank_state(checkpoint: Path, rank: int) -> Path:
    """Rank `rank`'s trainer state_dict in a checkpoint folder."""
    return checkpoint / f"rank_{rank}.json"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first (a `step_<N>` folder is complete by
    construction; the files are checked too, in case one was deleted by hand)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / CHECKPOINT_MAIN).is_file() and (p / DCP_METADATA).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run, from its output folder, name and attempt (nothing is created)."""

    output_dir: Path
    run_name: str
    checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR  # checkpoint.dir, relative to output_dir
    attempt: int = 1  # logging.attempt: which files are this run's (see the module's doc)

    def __init__(
        self,
        output_dir: str | Path,
        run_name: str,
        checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR,
        attempt: int = 1,
    ) -> None:
        object.__setattr__(self, "output_dir", Path(output_dir))
        object.__setattr__(self, "run_name", run_name)
        object.__setattr__(self, "checkpoint_dir", checkpoint_dir)
        object.__setattr__(self, "attempt", attempt)

    @classmethod
    def of(cls, cfg: Any) -> RunPaths:
        """The paths of a RunConfig (typed Any: importing lmprof.config here would cycle)."""
        lg = cfg.logging
        return cls(lg.output_dir, lg.run_name, cfg.checkpoint.dir, lg.attempt)

    @property
    def stem(self) -> str:
        return stem(self.run_name, self.attempt)

    def with_attempt(self, attempt: int) -> RunPaths:
        return RunPaths(self.output_dir, self.run_name, self.checkpoint_dir, attempt)

    def own_files(self) -> tuple[Path, ...]:
        """What this attempt writes under its stem: one of them present means it is taken."""
        return (
            self.log,
            self.metrics_csv,
            self.eval_csv,
            self.config_yaml,
            self.tensorboard_dir,
            self.traces_dir,
            self.profile_ops_table("md"),
            self.roofline_table("md"),
        )

    # -- shared by every run of the output folder ----------------------------------------------

    @property
    def results_csv(self) -> Path:
        return results_csv(self.output_dir)

    @property
    def results_lock(self) -> Path:
        return lock_path(self.results_csv)

    @property
    def details_dir(self) -> Path:
        return details_dir(self.output_dir)

    @property
    def tables_dir(self) -> Path:
        return self.output_dir / "results" / "tables"

    # -- this run's own ----------------------------------------------------------------------

    @property
    def log(self) -> Path:
        return self.output_dir / "logs" / f"{self.stem}.log"

    @property
    def claim(self) -> Path:
        """What a sweep locks (`lock_path(claim)`, non-blocking) while this run is its: a second
        sweep of the same runs skips the run instead of running it twice."""
        return self.output_dir / "logs" / f"{self.run_name}.claim"

    @property
    def metrics_csv(self) -> Path:
        return metrics_csv(self.details_dir, self.stem)

    @property
    def eval_csv(self) -> Path:
        return eval_csv(self.details_dir, self.stem)

    @property
    def config_yaml(self) -> Path:
        """The resolved config: the run saves it, and the sweep hands it to the run."""
        return self.details_dir / f"{self.stem}_config.yaml"

    @property
    def tensorboard_dir(self) -> Path:
        return self.output_dir / "results" / "tensorboard" / self.stem

    @property
    def traces_dir(self) -> Path:
        return self.output_dir / "results" / "traces" / self.stem

    @property
    def profiler_trace(self) -> Path:
        """torch.profiler's Chrome trace (open in https://ui.perfetto.dev)."""
        return self.traces_dir / "trace.json"

    def memory_snapshot(self, reason: str) -> Path:
        """A CUDA memory snapshot taken at `reason` ("end", "oom")."""
        return self.traces_dir / f"memory_snapshot_{reason}.pickle"

    def profile_ops_table(self, suffix: str) -> Path:
        """The profiler's per-op table, `suffix` "md" or "csv"."""
        return self.tables_dir / f"{self.stem}_profile_ops.{suffix}"

    def roofline_table(self, suffix: str) -> Path:
        """The kernel groups' roofline of the run's trace, `suffix` "md" or "csv"."""
        return self.tables_dir / f"{self.stem}_roofline.{suffix}"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / self.checkpoint_dir / self.run_name

    @property
    def find_max_dir(self) -> Path:
        return self.output_dir / "results" / "find_max" / self.run_name

    def find_max_table(self, suffix: str) -> Path:
        """find-max's probes and boundary, `suffix` "csv" or "md"."""
        return self.find_max_dir / f"{self.run_name}.{suffix}"


def attempt_of(row: Mapping[str, str]) -> int:
    """The attempt whose files a results row owns; 0 for none. A row written before attempts
    were recorded owns its name's first files unless it never started (skipped)."""
    text = (row.get("attempt") or "").strip()
    if not text:
        return 0 if (row.get("status") or "").strip() == "skipped" else 1
    try:
        return int(text)
    except ValueError:
        return 0


def choose_attempt(paths: RunPaths, rows: Iterable[Mapping[str, str]], resume: bool) -> int:
    """The attempt a new run of this name takes: the first whose files do not exist and that
    no row of results.csv owns, so it overwrites nothing. `resume` (checkpoint.resume=auto
    with a checkpoint to resume from): the last taken one, whose files it continues."""
    owned = {attempt_of(r) for r in rows if r.get("run_name") == paths.run_name}
    k = 1
    while k in owned or any(p.exists() for p in paths.with_attempt(k).own_files()):
        k += 1
    if resume and list_checkpoints(paths.checkpoints_dir):
        return max(k - 1, 1)
    return k
