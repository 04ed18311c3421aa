"""Run a named GPU suite and leave a results folder that can be committed as it is.

    python -m benchmarks --list
    python -m benchmarks SUITE --out benchmarks/results/DATE_GPU_SUITE [--only STEP ...]
    python -m benchmarks SUITE --dry-run

Run from the repository root. Each step runs with this interpreter, PYTHONPATH=<repo>/src and
PYTHONUNBUFFERED=1, its output in DIR/logs/<suite>.<step>.log; a failing step is reported and
the rest still run (exit status 1 at the end). DIR gets environment.txt (date, GPU, versions,
commit, this command), SUMMARY.md (one row per step) and copies of the steps' short tables.
Profiler traces and memory snapshots are gzipped at the end, as the committed ones are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from benchmarks.suites import SUITES, Step, Suite

ROOT = Path(__file__).resolve().parents[1]

# Asked in a child so that this process never holds a CUDA context (memory) while steps run.
PROBE = r"""
import json, platform
info = {"python": platform.python_version()}
try:
    import torch
    info |= {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    ok = torch.cuda.is_available()
    info["gpu"] = torch.cuda.get_device_name() if ok else "none (torch.cuda.is_available() is False)"
    if ok:
        info["cudnn"] = str(torch.backends.cudnn.version())
except Exception as exc:
    info["torch"] = f"not importable: {exc}"
print(json.dumps(info))
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(2, f"benchmarks: error: {message} (python -m benchmarks --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", nargs="?", help="the suite to run (--list names them)")
    p.add_argument("--out", type=Path, help="the results folder (required to run)")
    p.add_argument("--list", action="store_true", help="name the suites and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (or suites)")
    return p


def child_env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return dict(
        os.environ, PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src, PYTHONUNBUFFERED="1"
    )


def command(step: Step, folder: Path) -> tuple[list[str], Path]:
    """The argv of a step and the folder it runs in."""
    args = [a.format(root=ROOT, dir=folder) for a in step.args]
    if step.script:
        args[0] = str(ROOT / step.script)
    cwd = folder if step.lmprof or step.in_folder else ROOT
    return [sys.executable, *args], cwd


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "-uno",
                "--",
                "src",
                "benchmarks",
                "configs",
            ],
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        # A copy of the tree without .git (a lent GPU machine): let the caller say which.
        return os.environ.get("LMPROF_COMMIT", "unknown (no git checkout; set LMPROF_COMMIT)")
    return head + (" with uncommitted changes in src/benchmarks/configs" if dirty else "")


def environment(argv: Sequence[str]) -> dict[str, str]:
    info: dict[str, str] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join([sys.executable, "-m", "benchmarks", *argv]),
        "lmprof_commit": _git_commit(),
    }
    try:
        probe = subprocess.run(
            [sys.executable, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(),
        )
        info |= json.loads(probe.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError):
        info["torch"] = "probe failed"
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        info["nvidia_smi"] = "; ".join(smi.stdout.split("\n")).strip("; ")
    return info


def _wait(proc: subprocess.Popen, timeout: int | None) -> int | None:
    """The exit status, or None after killing a step that ran past its timeout."""
    try:
        return proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        # The step's own children (sweep runs, torchrun) are in its session: end them too.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None


def run_step(label: str, step: Step, out: Path) -> tuple[str, float]:
    folder = out / step.folder
    folder.mkdir(parents=True, exist_ok=True)
    cmd, cwd = command(step, folder)
    log_path = out / "logs" / f"{label}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ cd {shlex.quote(str(cwd))} && {shlex.join(cmd)}\n")
        log.flush()
        stdout = open(folder / step.stdout, "w") if step.stdout else log  # noqa: SIM115
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=child_env(),
                stdout=stdout,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            rc = _wait(proc, step.timeout)
        finally:
            if step.stdout:
                stdout.close()
        seconds = time.monotonic() - start
        if step.stdout:  # the table goes to its file; the log keeps a copy after stderr
            log.write((folder / step.stdout).read_text())
        status = "ok" if rc == 0 else f"failed (exit {rc})"
        if rc is None:
            status = f"timed out after {step.timeout} s"
        log.write(f"# {status}, {seconds:.0f} s\n")
    for src, dest in step.keep.items():
        if (folder / src).is_file():
            shutil.copyfile(folder / src, out / dest)
    return status, seconds


def _gzip_traces(out: Path) -> None:
    """Traces and snapshots are tens to hundreds of MB as written; gzip is what gets committed."""
    for pattern in ("**/results/traces/*/*.json", "**/results/traces/*/*.pickle"):
        for path in out.glob(pattern):
            with open(path, "rb") as f, gzip.open(f"{path}.gz", "wb") as g:
                shutil.copyfileobj(f, g)
            path.unlink()


def select(suite: Suite, only: Sequence[str] | None) -> list[Step]:
    if not only:
        return list(suite.steps)
    names = [s.name for s in suite.steps]
    unknown = [o for o in only if not any(n == o or n.startswith(f"{o}.") for n in names)]
    if unknown:
        raise SystemExit(
            f"benchmarks: error: suite {suite.name} has no step {', '.join(unknown)}; "
            f"its steps: {', '.join(names)}"
        )
    return [s for s in suite.steps if any(s.name == o or s.name.startswith(f"{o}.") for o in only)]


def main(argv: Sequence[str] | None = None, suites: Mapping[str, Suite] = SUITES) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.list:
        width = max(map(len, suites))
        for s in suites.values():
            print(f"{s.name:<{width}}  {s.meaning}")
        return 0
    if a.suite not in suites:
        what = f"unknown suite {a.suite!r}" if a.suite else "name a suite"
        print(f"benchmarks: error: {what}; choose one of: {', '.join(suites)}", file=sys.stderr)
        return 2
    suite = suites[a.suite]
    try:
        steps = select(suite, a.only)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if not a.dry_run and a.out is None:
        print(
            f"benchmarks: error: --out DIR is required to run suite {suite.name}", file=sys.stderr
        )
        return 2
    out = (a.out or Path("DIR")).absolute()
    labels = [f"{suite.name}.{s.name}" for s in steps]
    missing = {s.name for s in steps if s.optional and not (ROOT / (s.script or "")).is_file()}
    if a.dry_run:
        print(f"# suite {suite.name}: {suite.meaning}; replaces {suite.replaces}")
        for label, step in zip(labels, steps, strict=True):
            if step.name in missing:
                print(f"# {label}: skipped, {step.script} does not exist yet")
                continue
            cmd, cwd = command(step, out / step.folder)
            limit = f"timeout {step.timeout} " if step.timeout else ""
            to = f" > {shlex.quote(str(out / step.folder / step.stdout))}" if step.stdout else ""
            print(f"# {label}\ncd {shlex.quote(str(cwd))} && {limit}{shlex.join(cmd)}{to}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    with open(out / "environment.txt", "a") as f:  # a rerun of one step adds its own block
        f.write("".join(f"{k}: {v}\n" for k, v in env.items()) + "\n")
    with open(out / "SUMMARY.md", "a") as f:
        f.write(
            f"## {env['date_utc']} UTC: `{env['command']}`\n\nGPU {env.get('gpu')}, torch "
            f"{env.get('torch')}, commit {env['lmprof_commit']}\n\n| step | result | seconds | log |\n"
            "| --- | --- | --- | --- |\n"
        )
    failed: list[str] = []
    for i, (label, step) in enumerate(zip(labels, steps, strict=True), 1):
        if step.name in missing:
            result, seconds, log = f"skipped, {step.script} does not exist yet", 0.0, "-"
        else:
            print(f"[{i}/{len(steps)}] {label} ...", flush=True)
            result, seconds = run_step(label, step, out)
            log = f"logs/{label}.log"
            if result != "ok":
                failed.append(label)
                tail = (out / log).read_text().splitlines()[-8:]
                print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
        print(f"[{i}/{len(steps)}] {label}: {result} ({seconds:.0f} s)", flush=True)
        with open(out / "SUMMARY.md", "a") as f:  # row by row: a lost lease keeps what ran
            f.write(f"| {label} | {result} | {seconds:.0f} | {log} |\n")
    with open(out / "SUMMARY.md", "a") as f:
        f.write("\n")
    _gzip_traces(out)
    verdict = f"{len(failed)} failed: {', '.join(failed)}" if failed else "all ran"
    print(f"suite {suite.name}: {len(steps)} steps, {verdict}; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("benchmarks: interrupted", file=sys.stderr)
        sys.exit(130)
