"""Process supervision: start a run's child, wait for it, stop it, kill its whole tree.

The child runs in its own session (a Ctrl-C in the terminal reaches the sweep only, which then
asks the child to stop), with an optional address-space cap, and stops with the sweep: if the
sweep dies (SIGKILL, a closed terminal), the kernel sends the child SIGTERM
(PR_SET_PDEATHSIG), and the run stops within a step or an evaluation batch, recording itself
`interrupted` (with a checkpoint where checkpointing is on). A signal from the kernel rather
than a thread in the child watching its parent: it comes at once, whatever the child is doing,
and needs nothing of the child's code (torchrun passes it on to its workers). The run's claim
(lmprof.io.claim) is handed to the child, so until it has written its row a rerun skips it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

CHILD_ENV = "LMPROF_SWEEP_CHILD"  # a Python script run in place of `-m lmprof run` (tests)
POLL_S = 0.1
TERM_GRACE_S = 60.0  # after SIGTERM, before SIGKILL: a step and a checkpoint must fit

ChildArgv = Callable[[Path, int], list[str]]


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


def start_child(
    argv: Sequence[str],
    log: IO[str],
    env: Mapping[str, str],
    limit_bytes: int,
    keep_fds: Sequence[int] = (),
) -> subprocess.Popen:
    """Start a run's process with its output in `log`, capped at `limit_bytes` (0: no cap);
    `keep_fds` are handed to it (the run's claim: it holds it as long as it lives)."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
        preexec_fn=_child_setup(limit_bytes, os.getpid()),
        pass_fds=tuple(keep_fds),
    )


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


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
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


def oom_kill_count() -> int | None:
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


class StopRequests:
    """SIGINT and SIGTERM, counted while `caught()` is active (the main thread only)."""

    def __init__(self) -> None:
        self.count = 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Counted, not raised: no exception can land in the middle of writing a row.
        self.count += 1
        if self.count >= 3:  # the user insists: give up on a clean stop
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def wait_child(
    proc: subprocess.Popen,
    timeout_s: float,
    t0: float,
    name: str,
    stops: StopRequests,
    grace_s: float,
    say: Callable[[str], None],
    on_poll: Callable[[], None] | None = None,
) -> str:
    """Wait for the child: "exited", "timeout" (killed) or "interrupted" (asked to stop).
    `on_poll` runs between polls (every POLL_S): the sweep's progress display.

    A stop request sends SIGINT (the run records itself as interrupted); after `grace_s` a
    SIGTERM, after TERM_GRACE_S more a SIGKILL to the whole tree; a second request kills now.
    """
    deadline = t0 + timeout_s if timeout_s > 0 else None
    seen, stopping, stage = stops.count, None, 0
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return "interrupted" if stopping is not None else "exited"
        except subprocess.TimeoutExpired:
            pass
        if on_poll is not None:
            on_poll()
        now = time.monotonic()
        if stops.count > seen:
            seen = stops.count
            if stopping is None:
                # SIGINT first, as a terminal would: the run writes an `interrupted` row.
                stopping = now
                say(
                    f"\nstopping {name}: "
                    f"waiting up to {grace_s:g}s for it to record itself "
                    "(Ctrl-C again to kill it now)"
                )
                signal_group(proc.pid, signal.SIGINT)
            else:
                kill_tree(proc.pid, signal.SIGKILL)
        elif stopping is not None:
            if stage == 0 and now - stopping > grace_s:
                stage = 1
                signal_group(proc.pid, signal.SIGTERM)
            elif stage == 1 and now - stopping > grace_s + TERM_GRACE_S:
                stage = 2
                kill_tree(proc.pid, signal.SIGKILL)
        if deadline is not None and stopping is None and now >= deadline:
            # A hard limit: the run gets no chance to record itself, so its row says timeout.
            kill_tree(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
