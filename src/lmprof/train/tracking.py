"""Experiment trackers: TensorBoard, Weights & Biases, MLflow, behind one small interface.

    tracking = Tracking.from_config(cfg, paths)   # checks the packages: one line if missing
    tracking.start()                              # once setup has succeeded
    tracking.log("train", step, {"loss": ...})    # per-step / evaluation / test points
    tracking.finish(row)                          # the summary row: MFU, peak memory, final eval

Each backend is switched on by one key (logging.tensorboard, logging.wandb, logging.mlflow) and
imported only then, so none is a dependency (`pip install lmprof[tensorboard|wandb|mlflow]`).
Only rank 0 tracks. The results row stays the record: a tracker that fails at the end is
logged as a warning, never turns a finished run into a failed one.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping
from typing import Any

from lmprof.config import RunConfig
from lmprof.errors import UserError
from lmprof.paths import RunPaths

log = logging.getLogger("lmprof")

# The summary row's figures a tracker shows as the run's result (TensorBoard's HParams metrics).
RESULT_METRICS = (
    "eval_loss",
    "eval_perplexity",
    "eval_accuracy",
    "test_loss",
    "test_ppl",
    "final_train_loss",
    "mfu",
    "hfu",
    "steady_tokens_per_sec",
    "peak_gpu_mem_gb",
    "peak_host_mem_gb",
    "training_time_sec",
)


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """{"model.d_model": 768, ...}: the config as trackers take hyperparameters."""
    return {f"{s}.{k}": v for s, section in cfg.to_dict().items() for k, v in section.items()}


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric cells of a row (booleans are not numbers here)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _require(module: str, key: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{key}=true needs the '{module}' package: pip install lmprof[{extra}]")


class Tracker:
    def start(self) -> None:  # noqa: B027 - optional
        pass

    def log(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def finish(self, row: Mapping[str, Any], step: int) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Scalars per point; at the end the config as hparams with the summary's figures as their
    metrics (HParams tab), and every numeric cell of the row as `summary/<column>`."""

    def __init__(self, cfg: RunConfig, paths: RunPaths):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "logging.tensorboard=true needs TensorBoard: pip install lmprof[tensorboard]"
            ) from None
        self.cfg = cfg
        self.writer = SummaryWriter(log_dir=str(paths.tensorboard_dir))

    def log(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def finish(self, row: Mapping[str, Any], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        nums = numbers(row)
        metrics = {f"summary/{k}": nums[k] for k in RESULT_METRICS if k in nums}
        hp = {
            k: v
            for k, v in flat_config(self.cfg).items()
            if isinstance(v, bool | int | float | str)
        }
        hp["status"] = str(row.get("status", ""))
        # SummaryWriter.add_hparams would open a second run directory; writing the three
        # summaries here keeps hparams and scalars in one run.
        fw = self.writer._get_file_writer()
        for summary in hparams(hp, metrics):
            fw.add_summary(summary)
        for key, value in nums.items():
            self.writer.add_scalar(f"summary/{key}", value, step)
        self.writer.flush()
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, cfg: RunConfig, paths: RunPaths):
        _require("wandb", "logging.wandb", "wandb")
        self.cfg, self.paths = cfg, paths
        self.run: Any = None

    def start(self) -> None:
        import wandb

        lg = self.cfg.logging
        # WANDB_MODE=offline writes the run under output_dir/wandb for a later `wandb sync`.
        self.run = wandb.init(
            project=lg.wandb_project,
            name=lg.run_name,
            config=self.cfg.to_dict(),
            tags=[lg.tag] if lg.tag else None,
            dir=str(self.paths.output_dir),
            reinit=True,
        )

    def log(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def finish(self, row: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        self.run.summary.update({k: v for k, v in row.items() if v is not None and v != ""})
        self.run.finish(exit_code=0 if row.get("status") == "ok" else 1)


class MLflowTracker(Tracker):
    # MLflow refuses a parameter value over 6000 characters (500 before 2.x): keep them short.
    MAX_PARAM = 500

    def __init__(self, cfg: RunConfig, paths: RunPaths):
        _require("mlflow", "logging.mlflow", "mlflow")
        self.cfg, self.active = cfg, False

    def start(self) -> None:
        import mlflow

        lg = self.cfg.logging
        if lg.mlflow_uri:
            mlflow.set_tracking_uri(lg.mlflow_uri)
        mlflow.set_experiment(lg.mlflow_experiment)
        mlflow.start_run(run_name=lg.run_name)
        self.active = True
        params = {k: str(v)[: self.MAX_PARAM] for k, v in flat_config(self.cfg).items()}
        mlflow.log_params(params)
        if lg.tag:
            mlflow.set_tag("tag", lg.tag)

    def log(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def finish(self, row: Mapping[str, Any], step: int) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_metrics({f"summary/{k}": v for k, v in numbers(row).items()}, step=step)
        mlflow.set_tags(
            {"status": str(row.get("status", "")), "config_hash": row.get("config_hash", "")}
        )
        mlflow.end_run(status="FINISHED" if row.get("status") == "ok" else "FAILED")
        self.active = False


class Tracking:
    """Every tracker the config switches on, fed together."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.last_step = 0
        self.started = False  # a run stopped during setup reports nothing

    @classmethod
    def from_config(cls, cfg: RunConfig, paths: RunPaths, is_main: bool = True) -> Tracking:
        if not is_main:
            return cls([])
        lg = cfg.logging
        trackers: list[Tracker] = []
        if lg.tensorboard:
            trackers.append(TensorBoardTracker(cfg, paths))
        if lg.wandb:
            trackers.append(WandbTracker(cfg, paths))
        if lg.mlflow:
            trackers.append(MLflowTracker(cfg, paths))
        return cls(trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self) -> None:
        for t in self.trackers:
            t.start()
        self.started = True

    def log(self, prefix: str, step: int, point: Mapping[str, Any]) -> None:
        values = {k: v for k, v in numbers(point).items() if k != "step"}
        self.last_step = max(self.last_step, step)
        for t in self.trackers:
            t.log(prefix, step, values)

    def finish(self, row: Mapping[str, Any]) -> None:
        for t in self.trackers if self.started else []:
            try:
                t.finish(row, self.last_step)
            except Exception as exc:  # noqa: BLE001 - the row is written; say so and go on
                log.warning("tracking: %s failed at the end: %s", type(t).__name__, exc)
        self.trackers = []
