"""Run a planned sweep: every run in its own process, every attempt ending in exactly one row.

The child (`python -m lmprof run resolved.yaml`, under torchrun for several processes) writes its
own row to results.csv. When it cannot (killed, crashed, timed out, a user error), this process
writes the row instead, with the status it can tell (lmprof.sweep.classify). Rows are told apart
by run (lmprof.identity: config hash, seed and repeat, not the name), so a rerun of the same
sweep skips what is done (lmprof.sweep.resume). Before the first run, every name is checked
against results.csv (lmprof.identity.settle_names); each run's files are those of a fresh
attempt of its name (lmprof.paths.choose_attempt), so none is ever written over.

The parts: resume (what to run), processes (start, wait, stop, kill), classify (the row of a
child that wrote none), console (what is printed); this module puts them in order.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from lmprof.columns import now
from lmprof.config import save_config
from lmprof.identity import run_key, settle_names
from lmprof.io import claim, open_stream
from lmprof.paths import LOG_CAPTURED_ENV, SWEEP_ID_ENV, RunPaths, choose_attempt
from lmprof.preflight import check_outputs
from lmprof.results import append_row, append_rows, read_rows
from lmprof.status import FAILED, OK, SKIPPED
from lmprof.sweep.classify import classify, last_line, parent_row, read_log_tail
from lmprof.sweep.console import (
    format_plan,
    format_summary,
    latest_point,
    outcome_line,
    progress_line,
)
from lmprof.sweep.outcome import Outcome, SweepReport
from lmprof.sweep.plan import RunPlan
from lmprof.sweep.processes import (
    ChildArgv,
    StopRequests,
    default_child_argv,
    oom_kill_count,
    start_child,
    wait_child,
)
from lmprof.sweep.resume import decide, load_history

__all__ = [
    "ChildArgv",
    "Outcome",
    "SweepReport",
    "SweepRunner",
    "classify",
    "config_path",
    "decide",
    "default_child_argv",
    "format_plan",
    "format_summary",
    "load_history",
    "run_sweep",
]


def config_path(plan: RunPlan) -> Path:
    """The resolved config handed to the run: the file the run itself saves (same content)."""
    return _paths(plan).config_yaml


def _paths(plan: RunPlan) -> RunPaths:
    return RunPaths.of(plan.cfg)


def settle_plans(plans: Sequence[RunPlan], say: Callable[[str], None]) -> None:
    """Every run's name checked against results.csv before the first starts (a name another
    run holds is refused, or renamed with logging.fresh_name: lmprof.identity)."""
    settle_names([p.cfg for p in plans], say)
    for p in plans:
        p.name = p.cfg.logging.run_name


@contextlib.contextmanager
def _sweep_id() -> Iterator[None]:
    """This sweep's id in the environment: its children and its own rows carry it."""
    before = os.environ.get(SWEEP_ID_ENV)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    os.environ[SWEEP_ID_ENV] = f"{stamp}-{os.getpid()}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SWEEP_ID_ENV, None)
        else:
            os.environ[SWEEP_ID_ENV] = before


class SweepRunner:
    def __init__(
        self,
        child_argv: ChildArgv | None = None,
        grace_s: float = 30.0,
        out: TextIO | None = None,
        progress_every_s: float = 30.0,
    ):
        self.child_argv = child_argv or default_child_argv
        self.grace_s = grace_s
        self.out = out or sys.stdout
        self.stops = StopRequests()
        self._name_width = 20
        # A terminal's status line is redrawn every second; a file or pipe gets a plain line
        # this often (a log of a long sweep stays readable, and shows it is alive).
        self.progress_every_s = progress_every_s
        self._t0 = time.monotonic()
        self._durations: list[float] = []  # this sweep's finished runs: the ETA's basis

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(
        self, plans: Sequence[RunPlan], force: bool = False, retry_failed: bool = False
    ) -> SweepReport:
        report = SweepReport([], len(plans))
        if not plans:
            self._say("no runs to do")
            return report
        settle_plans(plans, self._say)  # before any work: one line, nothing started
        self._name_width = min(48, max(len(p.name) for p in plans))
        check_outputs(_paths(p) for p in plans)
        with _sweep_id():
            return self._run(plans, report, force, retry_failed)

    def _run(
        self, plans: Sequence[RunPlan], report: SweepReport, force: bool, retry_failed: bool
    ) -> SweepReport:
        self._t0, self._durations = time.monotonic(), []
        history = load_history(plans)
        n = len(plans)
        decisions = [
            decide(plan, history.get(plan.identity, []), force, retry_failed) for plan in plans
        ]
        # to_run[i]: runs to start after run i (1-based), counted once, not once per run.
        to_run = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            to_run[i] = to_run[i + 1] + (decisions[i][0] == "run")
        # What cannot start on this machine is said, and recorded, before anything runs: a
        # user waiting an hour for the one run they cared about learns at once it will not run.
        skipped: dict[int, Outcome] = {}
        # Their rows go in one rewrite per table: one append each rewrote it once per run.
        skip_rows: dict[Path, list[dict]] = {}
        for i, (plan, (action, _)) in enumerate(zip(plans, decisions, strict=True), 1):
            if action == "skip":
                if not skipped:
                    self._say("cannot start on this machine (recorded as skipped):")
                skipped[i] = self._skip(plan, history.get(plan.identity, []), skip_rows)
                self._say(outcome_line(i, n, skipped[i], self._name_width))
        for path, rows in skip_rows.items():
            append_rows(path, rows)
        with self.stops.caught():
            for i, plan in enumerate(plans, 1):
                if self.stops.count:
                    report.interrupted = True
                    break
                action, prior = decisions[i - 1]
                if action == "skip":
                    report.outcomes.append(skipped[i])
                    continue
                if action == "done":
                    o = Outcome(
                        plan,
                        prior["status"],
                        prior.get("status_detail", ""),
                        prior,
                        note="done earlier",
                    )
                elif action == "kept":
                    o = Outcome(
                        plan,
                        prior["status"],
                        prior.get("status_detail", ""),
                        prior,
                        note="earlier; --retry-failed reruns it",
                    )
                else:
                    o = self._claimed(plan, i, n, force, retry_failed, to_run[i])
                    if o.elapsed is not None:
                        self._durations.append(o.elapsed)
                    report.interrupted = self.stops.count > 0
                report.outcomes.append(o)
                self._say(outcome_line(i, n, o, self._name_width))
                if report.interrupted:
                    break
        if report.interrupted:  # recorded before the first run: they belong in the summary
            listed = {id(o) for o in report.outcomes}
            report.outcomes += [o for o in skipped.values() if id(o) not in listed]
        self._say(format_summary(report))
        return report

    def _claimed(
        self, plan: RunPlan, i: int, n: int, force: bool, retry_failed: bool, left: int
    ) -> Outcome:
        """Run `plan` if no other sweep has claimed it (a per-run lock, non-blocking, handed to
        the child: lmprof.io.claim). Once claimed, the results are read again: another sweep
        may have finished it meanwhile."""
        with claim(_paths(plan).claim) as fd:
            if fd is None:
                # No row: the process that holds the claim (another sweep, or the child of a
                # sweep that died) writes the run's row.
                return Outcome(plan, SKIPPED, "", note="running elsewhere (another sweep)")
            table = read_rows(_paths(plan).results_csv)
            rows = [r for r in table if run_key(r) == plan.identity]
            action, prior = decide(plan, rows, force, retry_failed)
            if action != "run" and prior is not None:
                return Outcome(
                    plan,
                    prior["status"],
                    prior.get("status_detail", ""),
                    prior,
                    note="done by another sweep",
                )
            # Inside the claim: no other sweep picks the same attempt of this name meanwhile.
            plan.cfg.logging.attempt = choose_attempt(
                _paths(plan).with_attempt(1), table, plan.cfg.checkpoint.resume == "auto"
            )
            tty = self.out.isatty()
            if not tty:
                self._say(f"[{i}/{n}] {plan.name} started (log: {_paths(plan).log})")
            o = self._execute(plan, self._progress(i, n, plan, left), keep_fds=(fd,))
            if tty:
                print("\r\033[K", end="", file=self.out)
            return o

    def run_one(self, plan: RunPlan) -> Outcome:
        """Run one plan in its own process, whatever the results table says (find-max probes)."""
        with self.stops.caught():
            return self._execute(plan)

    def _skip(
        self, plan: RunPlan, rows: Sequence[Mapping[str, str]], record: dict[Path, list[dict]]
    ) -> Outcome:
        """A run this machine cannot start; its `skipped` row, if one is due, goes to `record`
        (by results table) for the caller to append."""
        reason = plan.unrunnable or ""
        last = rows[-1] if rows else {}
        # A sweep rerun on the same machine would add the same `skipped` row every time.
        if not (last.get("status") == SKIPPED and last.get("status_detail") == reason):
            row = parent_row(plan, SKIPPED, reason, None, now())
            record.setdefault(_paths(plan).results_csv, []).append(row)
        return Outcome(plan, SKIPPED, reason)

    def _progress(self, i: int, n: int, plan: RunPlan, left: int) -> Callable[[], None]:
        """What the sweep shows while run i of n trains (`left` runs to start after it)."""
        tty = self.out.isatty()
        every = 1.0 if tty else self.progress_every_s
        started, wall = time.monotonic(), time.time() - 1.0
        last = started - every if tty else started  # a terminal shows it at once
        metrics = _paths(plan).metrics_csv
        max_steps = plan.cfg.training.max_steps

        def show() -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < every:
                return
            last = now
            point = latest_point(metrics, wall)
            run_s = now - started
            eta = self._eta(left, run_s, point, max_steps)
            line = progress_line(i, n, plan.name, max_steps, point, run_s, now - self._t0, eta)
            if tty:
                width = shutil.get_terminal_size().columns
                print("\r\033[K" + line[: max(width - 1, 20)], end="", file=self.out, flush=True)
            else:
                self._say(line)

        return show

    def _eta(
        self, left: int, run_s: float, point: Mapping[str, str] | None, max_steps: int
    ) -> float | None:
        """Seconds until the sweep ends: the mean of its finished runs for each run still to
        come; for the running one its own pace once it has logged a step, else that mean too."""
        try:
            step = float((point or {}).get("step") or 0)
        except ValueError:
            step = 0
        pace = run_s * max_steps / step if step > 0 else None
        per_run = sum(self._durations) / len(self._durations) if self._durations else pace
        if per_run is None:
            return None
        this = pace if pace is not None else per_run
        return max(this - run_s, 0.0) + per_run * left

    def _execute(
        self,
        plan: RunPlan,
        on_poll: Callable[[], None] | None = None,
        keep_fds: Sequence[int] = (),
    ) -> Outcome:
        paths = _paths(plan)
        results, log_path = paths.results_csv, paths.log
        started_at, t0 = now(), time.monotonic()
        try:
            # Where the run itself saves its resolved config (same content): one file per run.
            cfg_path = paths.config_yaml
            save_config(plan.cfg, cfg_path)
            argv = self.child_argv(cfg_path, plan.num_gpus)
            n_before = len(read_rows(results))
            oom_before = oom_kill_count()
            log_path.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, PYTHONUNBUFFERED="1", **{LOG_CAPTURED_ENV: "1"})
            limit = int(plan.cfg.system.memory_limit_gb * 1024**3)
            with open_stream(log_path) as log:  # never through a planted link
                log.write(f"# lmprof sweep {started_at}: {shlex.join(argv)}\n")
                log.flush()
                header = log.tell()
                proc = start_child(argv, log, env, limit, keep_fds)
            ended_by = wait_child(
                proc,
                plan.cfg.system.timeout_s,
                t0,
                plan.name,
                self.stops,
                self.grace_s,
                self._say,
                on_poll,
            )
        # An OutputError (the disk filled up, the folder turned read-only) is not caught: every
        # later run would fail the same way, so the sweep stops with that one line.
        except OSError as exc:  # the child could not start (no interpreter, too many processes)
            detail = f"could not start the run: {exc}"
            append_row(results, parent_row(plan, FAILED, detail, None, started_at))
            return Outcome(plan, FAILED, detail, elapsed=time.monotonic() - t0)
        elapsed = time.monotonic() - t0

        new = [
            r
            for r in read_rows(results)[n_before:]
            if run_key(r) == plan.identity or r.get("run_name") == plan.name
        ]
        if new:
            row = new[-1]
            if run_key(row) != plan.identity:
                self._say(
                    f"warning: {plan.name}: the run recorded itself as {run_key(row)!r}, the "
                    f"sweep expected {plan.identity}; a rerun will not recognise it as done"
                )
            status = row.get("status") or FAILED
            detail = row.get("status_detail", "")
            if status != OK and not detail:  # say why on the console; the log has the rest
                detail = last_line(read_log_tail(log_path, header))
            return Outcome(plan, status, detail, row, elapsed)
        oom_after = oom_kill_count()
        oom_killed = oom_before is not None and oom_after is not None and oom_after > oom_before
        status, detail = classify(
            proc.returncode,
            ended_by,
            read_log_tail(log_path, header),
            oom_killed,
            plan.cfg.system.timeout_s,
        )
        append_row(results, parent_row(plan, status, detail, elapsed, started_at))
        return Outcome(plan, status, detail, None, elapsed)


def run_sweep(
    plans: Sequence[RunPlan],
    force: bool = False,
    retry_failed: bool = False,
    child_argv: ChildArgv | None = None,
    grace_s: float = 30.0,
    out: TextIO | None = None,
    progress_every_s: float = 30.0,
) -> SweepReport:
    """Run the planned runs one after another; resume and statuses: lmprof.sweep.resume."""
    runner = SweepRunner(child_argv, grace_s, out, progress_every_s)
    return runner.run(plans, force, retry_failed)
