"""Run a planned sweep: every run in its own process, every attempt ending in exactly one row.

The child (`python -m lmprof run resolved.yaml`, under torchrun for several processes) writes its
own row to results.csv. When it cannot (killed, crashed, timed out, a user error), this process
writes the row instead, with the status it can tell: `timeout`, `interrupted`, `oom` (a memory
error in the log, or the kernel's OOM killer) or `failed`. Rows are told apart by config hash,
so a rerun of the same sweep skips what is done.

Resume rules (a run's history is its rows in results.csv with the same config hash):
  * an `ok` or `oom` row: done, skipped (`--force` reruns it);
  * last row `failed`, `diverged` or `timeout`: kept as is (`--retry-failed` reruns it);
  * no row, or last row `interrupted` or `skipped`: run.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lmprof.config import save_config
from lmprof.results import append_row, read_rows
from lmprof.sweep.plan import RunPlan

DONE = ("ok", "oom")  # a row with one of these: the run has its answer
KEPT = ("failed", "diverged", "timeout")  # rerun only with --retry-failed
SUCCESS = ("ok", "oom", "skipped")  # the sweep exits 0 when every run ends in one of these
CHILD_ENV = "LMPROF_SWEEP_CHILD"  # a Python script run in place of `-m lmprof run` (tests)
POLL_S = 0.1
TERM_GRACE_S = 60.0  # after SIGTERM, before SIGKILL: a step and a checkpoint must fit
_OOM_TEXT = re.compile(
    r"MemoryError|out of memory|can't allocate memory|Cannot allocate memory|std::bad_alloc|"
    r"OutOfMemoryError|failed to map segment"
)

ChildArgv = Callable[[Path, int], list[str]]


@dataclass
class Outcome:
    """How one run of the sweep ended (in this sweep, or earlier when it was skipped as done)."""

    plan: RunPlan
    status: str
    detail: str = ""
    row: Mapping[str, str] | None = None
    elapsed: float | None = None
    note: str = ""  # why the run was not started, when it was not


@dataclass
class SweepReport:
    outcomes: list[Outcome]
    total: int
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if all(o.status in SUCCESS for o in self.outcomes) else 1


def default_child_argv(config_path: Path, num_procs: int) -> list[str]:
    """`python -m lmprof run CONFIG`, under torchrun when the run wants several processes."""
    script = os.environ.get(CHILD_ENV)
    target = [script] if script else ["-m", "lmprof", "run"]
    if num_procs > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={num_procs}",
            *target,
            str(config_path),
        ]
    return [sys.executable, *target, str(config_path)]


# ---------------------------------------------------------------------------------------------
# Resume


def load_history(plans: Sequence[RunPlan]) -> dict[str, list[dict[str, str]]]:
    """Rows by config hash, from the results.csv of every output folder the plans use."""
    history: dict[str, list[dict[str, str]]] = {}
    for root in dict.fromkeys(Path(p.cfg.logging.output_dir) for p in plans):
        for row in read_rows(root / "results.csv"):
            history.setdefault(row.get("config_hash", ""), []).append(row)
    return history


def decide(
    plan: RunPlan,
    rows: Sequence[Mapping[str, str]],
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[str, Mapping[str, str] | None]:
    """What to do with a run: ("run" | "done" | "kept" | "skip", the row that decided it)."""
    if not force:
        done = [r for r in rows if r.get("status") in DONE]
        if done:
            return "done", done[-1]
        if rows and rows[-1].get("status") in KEPT and not retry_failed:
            return "kept", rows[-1]
    if plan.unrunnable:
        return "skip", None
    return "run", None


# ---------------------------------------------------------------------------------------------
# Processes


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


_PRCTL: Any = None  # Linux's prctl, looked up here: a forked child must not dlopen
with contextlib.suppress(OSError, AttributeError):
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _child_setup(limit_bytes: int, parent: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: the memory cap, and death with the parent."""

    def setup() -> None:
        if limit_bytes > 0:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        # If the sweep is killed (SIGKILL, a closed terminal), the run stops too instead of
        # training on unobserved; torchrun passes SIGTERM on to its workers.
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the sweep died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (torchrun's workers live in their own sessions)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the child's process group and every descendant's group, never our own."""
    targets = [pid, *_descendants(pid)]
    own = os.getpgid(0)
    for p in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(p)
            if group != own:
                os.killpg(group, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def _oom_kill_count() -> int | None:
    """The kernel's OOM-kill counter for our memory cgroup (v2 or v1), None if unreadable."""
    candidates = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if hid == "0":
                candidates += [
                    f"/sys/fs/cgroup{path}/memory.events",
                    "/sys/fs/cgroup/memory.events",
                ]
            elif "memory" in controllers.split(","):
                candidates += [
                    f"/sys/fs/cgroup/memory{path}/memory.oom_control",
                    "/sys/fs/cgroup/memory/memory.oom_control",
                ]
    for c in candidates:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(c).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def _log_tail(path: Path, start: int, size: int = 16384) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(start, end - size))
        return f.read().decode(errors="replace")
    return ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def classify(
    returncode: int, ended_by: str, log_tail: str, oom_killed: bool, timeout_s: float = 0
) -> tuple[str, str]:
    """(status, detail) of a child that wrote no row."""
    last = _last_line(log_tail)
    if ended_by == "timeout":
        return "timeout", f"no result within system.timeout_s={timeout_s:g}s"
    if ended_by == "interrupted":
        return "interrupted", "stopped by the user (Ctrl-C)"
    if oom_killed and returncode != 0:
        return "oom", "killed by the kernel's out-of-memory killer"
    if returncode < 0:
        name = (
            signal.Signals(-returncode).name
            if -returncode in signal.valid_signals()
            else str(-returncode)
        )
        hint = " (the kernel's out-of-memory killer?)" if -returncode == signal.SIGKILL else ""
        return "failed", f"killed by {name}{hint}" + (f"; log: {last}" if last else "")
    if returncode == 0:
        return "failed", "exited 0 without writing its results row" + (
            f"; log: {last}" if last else ""
        )
    tail_lines = "\n".join(log_tail.splitlines()[-40:])
    if returncode == 3 or _OOM_TEXT.search(tail_lines):
        return "oom", last or "out of memory"
    if returncode == 4:
        return "diverged", last
    if returncode == 130:
        return "interrupted", last or "interrupted"
    if returncode == 2:
        return "failed", last or "invalid input (exit code 2)"
    return "failed", f"exit code {returncode}" + (f": {last}" if last else "")


def _parent_row(
    plan: RunPlan, status: str, detail: str, elapsed: float | None, started_at: str
) -> dict[str, Any]:
    """The row for an attempt the child could not record: the config's columns and the status."""
    try:
        from lmprof.train.run import config_row

        row: dict[str, Any] = dict(config_row(plan.cfg))
    except ImportError:  # a partial install: the identity columns are enough to resume
        row = {"run_name": plan.name, "tag": plan.tag, "config_hash": plan.config_hash}
    row.update(
        {
            "run_name": plan.name,
            "tag": plan.tag,
            "config_hash": plan.config_hash,
            "status": status,
            "status_detail": detail,
            "started_at": started_at,
            "finished_at": _now(),
        }
    )
    if elapsed is not None:
        row["training_time_sec"] = round(elapsed, 3)
    return row


# ---------------------------------------------------------------------------------------------
# The sweep


class SweepRunner:
    def __init__(
        self,
        child_argv: ChildArgv | None = None,
        grace_s: float = 30.0,
        out: TextIO | None = None,
    ):
        self.child_argv = child_argv or default_child_argv
        self.grace_s = grace_s
        self.out = out or sys.stdout
        self._signals = 0
        self._name_width = 20

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Counted, not raised: no exception can land in the middle of writing a row.
        self._signals += 1
        if self._signals >= 3:  # the user insists: give up on a clean stop
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def _signals_caught(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- console ---------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _line(self, i: int, n: int, o: Outcome) -> str:
        w = len(str(n))
        head = f"[{i:>{w}}/{n}] {o.plan.name:<{self._name_width}} {o.status:<11}"
        if o.status == "ok" and o.row:
            metrics = "  ".join(x for x in (_tps(o.row), _peak(o.row), _ppl(o.row)) if x)
        else:
            metrics = _clip(o.detail, 90)
        if o.note:
            metrics = f"{metrics}  ({o.note})" if metrics else f"({o.note})"
        took = _duration(o.elapsed) if o.elapsed is not None else ""
        return f"{head} {metrics}  {took}".rstrip()

    # -- running ---------------------------------------------------------------------------

    def run(
        self, plans: Sequence[RunPlan], force: bool = False, retry_failed: bool = False
    ) -> SweepReport:
        report = SweepReport([], len(plans))
        if not plans:
            self._say("no runs to do")
            return report
        self._name_width = min(48, max(len(p.name) for p in plans))
        history = load_history(plans)
        n = len(plans)
        with self._signals_caught():
            for i, plan in enumerate(plans, 1):
                if self._signals:
                    report.interrupted = True
                    break
                action, prior = decide(plan, history.get(plan.config_hash, []), force, retry_failed)
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
                elif action == "skip":
                    o = self._skip(plan, history.get(plan.config_hash, []))
                else:
                    if self.out.isatty():
                        print(
                            f"[{i}/{n}] {plan.name} running ... (log: {_log_path(plan)})",
                            end="",
                            file=self.out,
                            flush=True,
                        )
                    o = self._execute(plan)
                    if self.out.isatty():
                        print("\r\033[K", end="", file=self.out)
                    report.interrupted = self._signals > 0
                report.outcomes.append(o)
                self._say(self._line(i, n, o))
                if report.interrupted:
                    break
        self._say(format_summary(report))
        return report

    def run_one(self, plan: RunPlan) -> Outcome:
        """Run one plan in its own process, whatever the results table says (find-max probes)."""
        with self._signals_caught():
            return self._execute(plan)

    def _skip(self, plan: RunPlan, rows: Sequence[Mapping[str, str]]) -> Outcome:
        reason = plan.unrunnable or ""
        last = rows[-1] if rows else {}
        # A sweep rerun on the same machine would add the same `skipped` row every time.
        if not (last.get("status") == "skipped" and last.get("status_detail") == reason):
            append_row(_results_path(plan), _parent_row(plan, "skipped", reason, None, _now()))
        return Outcome(plan, "skipped", reason)

    def _execute(self, plan: RunPlan) -> Outcome:
        results = _results_path(plan)
        log_path = _log_path(plan)
        started_at, t0 = _now(), time.monotonic()
        try:
            # Where the run itself saves its resolved config (same content): one file per run.
            cfg_path = config_path(plan)
            save_config(plan.cfg, cfg_path)
            argv = self.child_argv(cfg_path, plan.num_gpus)
            n_before = len(read_rows(results))
            oom_before = _oom_kill_count()
            log_path.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, LMPROF_LOG_CAPTURED="1", PYTHONUNBUFFERED="1")
            limit = int(plan.cfg.system.memory_limit_gb * 1024**3)
            with open(log_path, "w") as log:
                log.write(f"# lmprof sweep {started_at}: {shlex.join(argv)}\n")
                log.flush()
                header = log.tell()
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_child_setup(limit, os.getpid()),
                )
            ended_by = self._wait(proc, plan.cfg.system.timeout_s, t0, plan.name)
        except OSError as exc:  # the child could not start (disk full, no interpreter, ...)
            detail = f"could not start the run: {exc}"
            append_row(results, _parent_row(plan, "failed", detail, None, started_at))
            return Outcome(plan, "failed", detail, elapsed=time.monotonic() - t0)
        elapsed = time.monotonic() - t0

        new = [
            r
            for r in read_rows(results)[n_before:]
            if r.get("config_hash") == plan.config_hash or r.get("run_name") == plan.name
        ]
        if new:
            row = new[-1]
            if row.get("config_hash") != plan.config_hash:
                self._say(
                    f"warning: {plan.name}: the run recorded config hash "
                    f"{row.get('config_hash')!r}, the sweep expected {plan.config_hash}; "
                    "a rerun will not recognise it as done"
                )
            status = row.get("status") or "failed"
            detail = row.get("status_detail", "")
            if status != "ok" and not detail:  # say why on the console; the log has the rest
                detail = _last_line(_log_tail(log_path, header))
            return Outcome(plan, status, detail, row, elapsed)
        oom_after = _oom_kill_count()
        oom_killed = oom_before is not None and oom_after is not None and oom_after > oom_before
        status, detail = classify(
            proc.returncode,
            ended_by,
            _log_tail(log_path, header),
            oom_killed,
            plan.cfg.system.timeout_s,
        )
        append_row(results, _parent_row(plan, status, detail, elapsed, started_at))
        return Outcome(plan, status, detail, None, elapsed)

    def _wait(self, proc: subprocess.Popen, timeout_s: float, t0: float, name: str) -> str:
        """Wait for the child: "exited", "timeout" (killed) or "interrupted" (asked to stop)."""
        deadline = t0 + timeout_s if timeout_s > 0 else None
        seen, stopping, stage = self._signals, None, 0
        while True:
            try:
                proc.wait(timeout=POLL_S)
                return "interrupted" if stopping is not None else "exited"
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self._signals > seen:
                seen = self._signals
                if stopping is None:
                    # SIGINT first, as a terminal would: the run writes an `interrupted` row.
                    stopping = now
                    self._say(
                        f"\nstopping {name}: "
                        f"waiting up to {self.grace_s:g}s for it to record itself "
                        "(Ctrl-C again to kill it now)"
                    )
                    _signal_group(proc.pid, signal.SIGINT)
                else:
                    _kill_tree(proc.pid, signal.SIGKILL)
            elif stopping is not None:
                if stage == 0 and now - stopping > self.grace_s:
                    stage = 1
                    _signal_group(proc.pid, signal.SIGTERM)
                elif stage == 1 and now - stopping > self.grace_s + TERM_GRACE_S:
                    stage = 2
                    _kill_tree(proc.pid, signal.SIGKILL)
            if deadline is not None and stopping is None and now >= deadline:
                # A hard limit: the run gets no chance to record itself, so its row says timeout.
                _kill_tree(proc.pid, signal.SIGKILL)
                proc.wait()
                return "timeout"


def run_sweep(
    plans: Sequence[RunPlan],
    force: bool = False,
    retry_failed: bool = False,
    child_argv: ChildArgv | None = None,
    grace_s: float = 30.0,
    out: TextIO | None = None,
) -> SweepReport:
    """Run the planned runs one after another; see the module doc for statuses and resume."""
    return SweepRunner(child_argv, grace_s, out).run(plans, force, retry_failed)


# ---------------------------------------------------------------------------------------------
# Text


def _results_path(plan: RunPlan) -> Path:
    return Path(plan.cfg.logging.output_dir) / "results.csv"


def config_path(plan: RunPlan) -> Path:
    """The resolved config handed to the run: results/details/<run>_config.yaml."""
    return Path(plan.cfg.logging.output_dir) / "results" / "details" / f"{plan.name}_config.yaml"


def _log_path(plan: RunPlan) -> Path:
    return Path(plan.cfg.logging.output_dir) / "logs" / f"{plan.name}.log"


def _float(row: Mapping[str, str] | None, *keys: str) -> float | None:
    for k in keys:
        with contextlib.suppress(TypeError, ValueError):
            v = float((row or {}).get(k) or "nan")
            if v == v:  # not NaN
                return v
    return None


def _tps(row: Mapping[str, str] | None) -> str:
    v = _float(row, "steady_tokens_per_sec", "throughput")
    if v is None:
        return ""
    return (
        f"{v / 1e6:.2f}M tok/s"
        if v >= 1e6
        else f"{v / 1e3:.1f}k tok/s"
        if v >= 1e3
        else f"{v:.0f} tok/s"
    )


def _peak(row: Mapping[str, str] | None) -> str:
    v = _float(row, "peak_gpu_mem_gb")
    return f"peak {v:.2f} GB" if v else ""


def _ppl(row: Mapping[str, str] | None) -> str:
    v = _float(row, "eval_perplexity")
    return f"ppl {v:.2f}" if v is not None else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def format_summary(report: SweepReport) -> str:
    rows = []
    for o in report.outcomes:
        time_s = _duration(o.elapsed) if o.elapsed is not None else ""
        note = (
            o.note
            if o.status == "ok"
            else _clip(f"{o.detail} ({o.note})" if o.note else o.detail, 60)
        )
        rows.append(
            [
                str(o.plan.index),
                o.plan.name,
                o.plan.tag,
                o.status,
                _tps(o.row).replace(" tok/s", ""),
                _peak(o.row).replace("peak ", "").replace(" GB", ""),
                _ppl(o.row).replace("ppl ", ""),
                time_s,
                note,
            ]
        )
    lines = ["", "Summary"]
    lines += _table(
        ["#", "run", "tag", "status", "tok/s", "peak GB", "eval ppl", "time", "note"], rows
    )
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    tally = ", ".join(f"{v} {k}" for k, v in counts.items())
    lines.append(f"{len(report.outcomes)} of {report.total} runs: {tally or 'none'}")
    if report.interrupted:
        left = report.total - len(report.outcomes)
        lines.append(f"interrupted: {left} run(s) not started; rerun the same command to resume")
    if any(o.note.startswith("earlier;") for o in report.outcomes):
        lines.append("runs that failed in an earlier sweep were kept; --retry-failed reruns them")
    return "\n".join(lines)


def format_plan(plans: Sequence[RunPlan], force: bool = False, retry_failed: bool = False) -> str:
    """The --dry-run listing: what each run changes, its GPUs and what the sweep would do."""
    history = load_history(plans)
    rows, notes, counts = [], {}, {"run": 0, "done": 0, "kept": 0, "skip": 0}
    for p in plans:
        action, prior = decide(p, history.get(p.config_hash, []), force, retry_failed)
        counts[action] += 1
        what = {
            "run": "run",
            "done": f"skip: done ({prior['status'] if prior else ''})",
            "kept": f"skip: {prior['status'] if prior else ''} earlier",
            "skip": "not runnable here",
        }[action]
        rows.append(
            [
                str(p.index),
                p.name,
                ",".join(p.tags),
                str(p.num_gpus),
                what,
                p.describe_changes() or "(base_config)",
            ]
        )
        if action == "skip":
            notes[p.name] = p.unrunnable
    lines = _table(
        ["#", "run", "tags", "gpus", "plan", "settings that differ from base_config"], rows
    )
    out = []
    for line, p in zip(lines[2:], plans, strict=True):
        out.append(line)
        if p.name in notes:
            out.append(f"      -> {notes[p.name]}")
    summary = (
        f"{len(plans)} runs: {counts['run']} to run, {counts['done']} done earlier, "
        f"{counts['kept']} failed earlier (kept; --retry-failed reruns them), "
        f"{counts['skip']} not runnable on this machine (recorded as skipped)"
    )
    return "\n".join([*lines[:2], *out, summary])
