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
  results/tables/<run>_profile_ops.{md,csv}
  results/find_max/<run>/                  find-max's probes and boundary
  <checkpoint.dir>/<run>/step_<N>/         checkpoints
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprof.errors import UserError

RESULTS_CSV = "results.csv"
# Set by the sweep for its child: the sweep already writes the child's output to its log, so
# the run must not open the same file a second time.
LOG_CAPTURED_ENV = "LMPROF_LOG_CAPTURED"
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


def metrics_csv(details: str | Path, run_name: str) -> Path:
    """A run's per-step CSV in a details folder (the analysis may be given any folder)."""
    return Path(details) / f"{run_name}_metrics.csv"


def eval_csv(details: str | Path, run_name: str) -> Path:
    return Path(details) / f"{run_name}_eval.csv"


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run, from its output folder and name (nothing is created here)."""

    output_dir: Path
    run_name: str
    checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR  # checkpoint.dir, relative to output_dir

    def __init__(
        self,
        output_dir: str | Path,
        run_name: str,
        checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR,
    ) -> None:
        object.__setattr__(self, "output_dir", Path(output_dir))
        object.__setattr__(self, "run_name", run_name)
        object.__setattr__(self, "checkpoint_dir", checkpoint_dir)

    @classmethod
    def of(cls, cfg: Any) -> RunPaths:
        """The paths of a RunConfig (typed Any: importing lmprof.config here would cycle)."""
        return cls(cfg.logging.output_dir, cfg.logging.run_name, cfg.checkpoint.dir)

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
        return self.output_dir / "logs" / f"{self.run_name}.log"

    @property
    def claim(self) -> Path:
        """What a sweep locks (`lock_path(claim)`, non-blocking) while this run is its: a second
        sweep of the same runs skips the run instead of running it twice."""
        return self.output_dir / "logs" / f"{self.run_name}.claim"

    @property
    def metrics_csv(self) -> Path:
        return metrics_csv(self.details_dir, self.run_name)

    @property
    def eval_csv(self) -> Path:
        return eval_csv(self.details_dir, self.run_name)

    @property
    def config_yaml(self) -> Path:
        """The resolved config: the run saves it, and the sweep hands it to the run."""
        return self.details_dir / f"{self.run_name}_config.yaml"

    @property
    def tensorboard_dir(self) -> Path:
        return self.output_dir / "results" / "tensorboard" / self.run_name

    @property
    def traces_dir(self) -> Path:
        return self.output_dir / "results" / "traces" / self.run_name

    @property
    def profiler_trace(self) -> Path:
        """torch.profiler's Chrome trace (open in https://ui.perfetto.dev)."""
        return self.traces_dir / "trace.json"

    def memory_snapshot(self, reason: str) -> Path:
        """A CUDA memory snapshot taken at `reason` ("end", "oom")."""
        return self.traces_dir / f"memory_snapshot_{reason}.pickle"

    def profile_ops_table(self, suffix: str) -> Path:
        """The profiler's per-op table, `suffix` "md" or "csv"."""
        return self.tables_dir / f"{self.run_name}_profile_ops.{suffix}"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / self.checkpoint_dir / self.run_name

    @property
    def find_max_dir(self) -> Path:
        return self.output_dir / "results" / "find_max" / self.run_name
