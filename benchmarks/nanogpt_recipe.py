"""nanoGPT's shakespeare-char recipe trained by nanoGPT's own train.py and by lmprof, on the same
split: each seed's best validation loss and its step, and each whole process's wall time.

    python benchmarks/nanogpt_recipe.py --out DIR [--seeds 0 1 2] [--concurrency 4]
    python benchmarks/nanogpt_recipe.py --out DIR --smoke      # CPU, tiny, a minute or two

nanoGPT is not part of the project: its checkout is read from ext/nanoGPT (karpathy/nanoGPT,
fetched into the ignored ext/ folder) and tinyshakespeare from ext/tinyshakespeare/input.txt.
Nothing of either is written inside the repository: nanoGPT's data/shakespeare_char/prepare.py
runs on a copy in a scratch folder, with input.txt beside it (so it never downloads), and
train.py runs from that folder (it reads configurator.py and data/ from its working folder).

The split is nanoGPT's: the first 90% of the characters trains, the last 10% validates. lmprof
reads the same two halves as two text files (data.path, data.val_path), one document each, with
its char tokenizer: the 65 characters of the training half (every character of the text occurs
in it, so the ids are nanoGPT's), plus EOS, unknown and PAD (vocabulary 68, no padding to a
multiple). What differs: lmprof adds one EOS after each half (one token in a million); nanoGPT
estimates its validation loss from 200 random batches (eval_iters), lmprof evaluates the whole
validation split; nanoGPT also evaluates at step 0, both evaluate every 250 steps and at the end;
nanoGPT saves a checkpoint whenever the validation loss improves (the recipe's
always_save_checkpoint=False), lmprof saves none. nanoGPT's train.py has no seed option
(torch.manual_seed(1337) in the code): seed k > 0 runs with a config file, written in the scratch
folder, that offsets that one call by k; lmprof's seed k is training.seed=1337+k.

Order: the first seed of each trainer runs ALONE, nanoGPT then lmprof: their wall times (process
start to exit, measured here) are the whole-run comparison. The other seeds then run together,
--concurrency processes at a time on the one GPU: their losses count, their times do not (the
table says which runs shared the GPU). A run still going at --deadline seconds after this script
started is stopped (SIGTERM, then SIGKILL) and reported with the best loss it printed so far.
Writes DIR/nanogpt_recipe.md (the table, printed last), DIR/nanogpt_recipe.json (every run's
evaluations and times), DIR/logs/<run>.log and lmprof's outputs under DIR/lmprof/.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_SEED = 1337  # nanoGPT's torch.manual_seed(1337 + seed_offset)
RECIPE = "config/train_shakespeare_char.py"

# nanoGPT's recipe (config/train_shakespeare_char.py plus train.py's defaults) in lmprof's keys.
LMPROF_RECIPE = (
    "model.n_layers=6",
    "model.n_heads=6",
    "model.d_model=384",
    "model.d_ff=1536",
    "model.dropout=0.2",
    "model.bias=false",
    "model.norm=pre",
    "model.pos_encoding=learned",
    "model.tie_embeddings=true",
    "model.activation=gelu",
    "model.vocab_multiple=1",
    "data.source=text",
    "data.tokenizer=char",
    "data.documents=file",
    "data.sequence_length=256",
    "training.batch_size=64",
    "training.max_steps=5000",
    "training.lr=1e-3",
    "training.schedule=cosine",
    "training.min_lr_ratio=0.1",
    "training.warmup_steps=100",
    "training.weight_decay=0.1",
    "training.beta1=0.9",
    "training.beta2=0.99",
    "training.max_grad_norm=1.0",
    "system.precision=bf16",
    "system.compile=true",
    "logging.eval_interval=250",
    "logging.logging_steps=10",
    "logging.progress=false",
)
NANOGPT_GPU = ("--compile=True", "--dtype=bfloat16", "--device=cuda")

# The smoke mode: the same pipeline, a tiny model for a few steps, fp32, no compile, CPU.
SMOKE_STEPS, SMOKE_EVERY = 20, 10
NANOGPT_SMOKE = (
    "--compile=False",
    "--dtype=float32",
    "--device=cpu",
    f"--max_iters={SMOKE_STEPS}",
    f"--lr_decay_iters={SMOKE_STEPS}",
    "--warmup_iters=2",
    f"--eval_interval={SMOKE_EVERY}",
    "--eval_iters=2",
    "--batch_size=4",
    "--block_size=32",
    "--n_layer=1",
    "--n_head=2",
    "--n_embd=32",
    "--log_interval=5",
)
LMPROF_SMOKE = (
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_model=32",
    "model.d_ff=128",
    "data.sequence_length=32",
    "training.batch_size=4",
    f"training.max_steps={SMOKE_STEPS}",
    "training.warmup_steps=2",
    "system.precision=fp32",
    "system.compile=false",
    "system.device=cpu",
    f"logging.eval_interval={SMOKE_EVERY}",
    "logging.eval_max_batches=4",
    "logging.logging_steps=5",
    "logging.timing_warmup_steps=2",
)

STEP_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.M)


@dataclass
class Run:
    trainer: str  # nanoGPT or lmprof
    seed: int  # the offset k: nanoGPT 1337 + k, lmprof training.seed = 1337 + k
    argv: list[str]
    log: Path
    alone: bool = False
    shared_with: int = 1  # processes on the GPU at once, at most
    returncode: int | None = None
    wall_s: float | None = None
    stopped: bool = False  # still going at the deadline
    evals: dict[int, float] = field(default_factory=dict)  # step -> validation loss
    row: dict[str, str] = field(default_factory=dict)  # lmprof's results.csv row

    @property
    def name(self) -> str:
        return f"{self.trainer}_seed{self.seed}"

    def best(self) -> tuple[float, int] | None:
        if not self.evals:
            return None
        step = min(self.evals, key=lambda s: (self.evals[s], s))
        return self.evals[step], step


def _split(text: str) -> tuple[str, str]:
    n = len(text)  # prepare.py's split, by characters
    return text[: int(n * 0.9)], text[int(n * 0.9) :]


def prepare(scratch: Path, nanogpt: Path, text: Path) -> tuple[Path, Path]:
    """nanoGPT's data through its own prepare.py (on a copy, in the scratch folder); the same
    halves as two text files for lmprof. Returns lmprof's (train, val) paths."""
    data = scratch / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    shutil.copy(nanogpt / "data" / "shakespeare_char" / "prepare.py", data / "prepare.py")
    shutil.copy(text, data / "input.txt")
    env = dict(os.environ)
    if importlib.util.find_spec("requests") is None:
        # prepare.py imports requests for its download, which input.txt beside it skips.
        stub = scratch / "stub"
        stub.mkdir()
        (stub / "requests.py").write_text("")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "prepare.py"], cwd=data, env=env, check=True)
    # train.py runs `exec(open('configurator.py').read())` in its working folder.
    (scratch / "configurator.py").symlink_to(nanogpt / "configurator.py")
    train, val = _split((data / "input.txt").read_text())
    n_train = (data / "train.bin").stat().st_size // 2  # uint16 ids
    n_val = (data / "val.bin").stat().st_size // 2
    if (n_train, n_val) != (len(train), len(val)):
        raise SystemExit(f"prepare.py's split {n_train}/{n_val} is not {len(train)}/{len(val)}")
    halves = scratch / "lmprof_data"
    halves.mkdir()
    (halves / "train.txt").write_text(train)
    (halves / "val.txt").write_text(val)
    return halves / "train.txt", halves / "val.txt"


def nanogpt_argv(nanogpt: Path, scratch: Path, seed: int, smoke: bool) -> list[str]:
    argv = [sys.executable, str(nanogpt / "train.py"), str(nanogpt / RECIPE)]
    if seed:
        shim = scratch / f"seed_offset_{seed}.py"
        shim.write_text(
            "# Seed k of the benchmark: train.py's one torch.manual_seed(1337 + seed_offset)"
            f" call, offset by {seed}.\n"
            "_manual_seed = torch.manual_seed\n"
            f"torch.manual_seed = lambda s: _manual_seed(s + {seed})\n"
        )
        argv.append(str(shim))
    out_dir = scratch / f"nanogpt_out_seed{seed}"
    return [*argv, f"--out_dir={out_dir}", *(NANOGPT_SMOKE if smoke else NANOGPT_GPU)]


def lmprof_argv(
    out: Path,
    scratch: Path,
    halves: tuple[Path, Path],
    seed: int,
    smoke: bool,
    extra: tuple[str, ...] = (),
):
    return [
        sys.executable,
        "-m",
        "lmprof",
        "run",
        *LMPROF_RECIPE,
        f"data.path={halves[0]}",
        f"data.val_path={halves[1]}",
        f"data.cache_dir={scratch / 'lmprof_cache'}",
        f"training.seed={BASE_SEED + seed}",
        f"logging.output_dir={out / 'lmprof'}",
        f"logging.run_name=lmprof_seed{seed}",
        "logging.tag=nanogpt_recipe",
        *(LMPROF_SMOKE if smoke else ("system.device=cuda",)),
        *extra,
    ]


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return dict(
        os.environ, PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src, PYTHONUNBUFFERED="1"
    )


def _start(run: Run, cwd: Path) -> tuple[subprocess.Popen, float]:
    run.log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            run.argv, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a stop reaches compile workers too
        )  # fmt: skip
    return proc, t0


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(runs: list[Run], cwd: Path, concurrency: int, deadline: float) -> None:
    """Run `runs` at most `concurrency` at a time; stop whatever is left at `deadline`."""
    pending, active = list(runs), []
    while pending or active:
        while pending and len(active) < concurrency and time.perf_counter() < deadline:
            run = pending.pop(0)
            active.append((run, *_start(run, cwd)))
        if not active:  # the deadline passed before these started
            for run in pending:
                run.stopped = True
            break
        for run, _, _ in active:
            run.shared_with = max(run.shared_with, len(active))
        time.sleep(0.2)
        for item in list(active):
            run, proc, t0 = item
            if proc.poll() is None and time.perf_counter() < deadline:
                continue
            if proc.poll() is None:
                run.stopped = True
                _stop(proc)
            run.returncode, run.wall_s = proc.returncode, time.perf_counter() - t0
            active.remove(item)


def read_results(run: Run, out: Path) -> None:
    if run.trainer == "nanoGPT":
        text = run.log.read_text(errors="replace") if run.log.exists() else ""
        run.evals = {int(m[1]): float(m[3]) for m in STEP_LINE.finditer(text)}
        return
    details = out / "lmprof" / "results" / "details" / f"{run.name}_eval.csv"
    if details.exists():
        with open(details) as f:
            run.evals = {int(r["step"]): float(r["eval_loss"]) for r in csv.DictReader(f)}
    results = out / "lmprof" / "results.csv"
    if results.exists():
        with open(results) as f:
            rows = [r for r in csv.DictReader(f) if r.get("run_name") == run.name]
        run.row = rows[-1] if rows else {}


TRAINERS = ("nanoGPT", "lmprof")


def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def table(runs: list[Run], smoke: bool) -> str:
    lines = [
        "# nanoGPT's shakespeare-char recipe: nanoGPT train.py against lmprof"
        + (" (SMOKE: tiny model, CPU, not a result)" if smoke else ""),
        "",
        "| run | on the device | exit | whole process s | best val loss | at step | last val loss "
        "(step) | lmprof: startup / eval / end-to-end / steady s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        best = r.best()
        last = max(r.evals) if r.evals else None
        where = "alone" if r.alone else f"shared ({r.shared_with} processes)"
        exit_ = "stopped at deadline" if r.stopped else str(r.returncode)
        parts = ("startup_sec", "eval_time_sec", "wall_time_sec", "steady_time_sec")
        own = " / ".join(_f(_num(r.row.get(k)), 1) for k in parts) if r.row else ""
        lines.append(
            f"| {r.name} | {where} | {exit_} | {_f(r.wall_s, 1)} | "
            f"{_f(best[0]) if best else 'n/a'} | {best[1] if best else 'n/a'} | "
            f"{_f(r.evals[last]) + f' ({last})' if last is not None else 'n/a'} | {own} |"
        )
    lines += ["", "| trainer | seeds | best val loss: median (min to max) | at step: median |"]
    lines.append("| --- | --- | --- | --- |")
    for trainer in TRAINERS:
        bests = [b for r in runs if r.trainer == trainer and (b := r.best())]
        if not bests:
            lines.append(f"| {trainer} | 0 | n/a | n/a |")
            continue
        losses = [b[0] for b in bests]
        lines.append(
            f"| {trainer} | {len(bests)} | {statistics.median(losses):.4f} "
            f"({min(losses):.4f} to {max(losses):.4f}) | "
            f"{statistics.median(b[1] for b in bests):g} |"
        )
    alone = {r.trainer: r for r in runs if r.alone and r.wall_s and not r.stopped}
    lines.append("")
    if len(alone) == 2 and alone["nanoGPT"].returncode == 0 and alone["lmprof"].returncode == 0:
        n, m = alone["nanoGPT"].wall_s, alone["lmprof"].wall_s
        lines.append(
            f"Whole run, each alone on the GPU: nanoGPT {n:.1f} s, lmprof {m:.1f} s: lmprof "
            f"{n / m:.2f}x as fast (goal: 2x). Shared runs' times are not whole-run timings."
        )
    else:
        lines.append("Whole run: no pair of complete runs alone on the GPU to compare.")
    return "\n".join(lines) + "\n"


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the results folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed offsets k")
    p.add_argument(
        "--concurrency", type=int, default=4, help="processes at once after the first seed"
    )
    p.add_argument(
        "--deadline", type=float, default=0, help="stop runs this many s after the start; 0: none"
    )
    p.add_argument("--smoke", action="store_true", help="a tiny CPU run of the whole pipeline")
    p.add_argument("--nanogpt", type=Path, default=ROOT / "ext" / "nanoGPT")
    p.add_argument("--text", type=Path, default=ROOT / "ext" / "tinyshakespeare" / "input.txt")
    p.add_argument(
        "--lmprof-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="lmprof overrides after the recipe's (how lmprof runs it, not what it trains)",
    )
    p.add_argument(
        "--trainers",
        nargs="+",
        choices=TRAINERS,
        default=list(TRAINERS),
        help="which trainers run (one alone: a loss check against an earlier run of the other)",
    )
    a = p.parse_args(argv)
    for path, what in ((a.nanogpt / "train.py", "nanoGPT's train.py"), (a.text, "input.txt")):
        if not path.is_file():
            p.error(f"{what} not found at {path} (fetch it into ext/, see the module docstring)")
    if a.concurrency < 1 or len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
        p.error("--concurrency must be at least 1 and --seeds distinct offsets >= 0")
    started = time.perf_counter()
    deadline = started + a.deadline if a.deadline > 0 else float("inf")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nanogpt_recipe_") as tmp:
        scratch = Path(tmp)
        halves = prepare(scratch, a.nanogpt.resolve(), a.text.resolve())
        runs = []
        for seed in a.seeds:
            for trainer in a.trainers:
                if trainer == "nanoGPT":
                    args = nanogpt_argv(a.nanogpt.resolve(), scratch, seed, a.smoke)
                else:
                    args = lmprof_argv(out, scratch, halves, seed, a.smoke, tuple(a.lmprof_set))
                runs.append(Run(trainer, seed, args, out / "logs" / f"{trainer}_seed{seed}.log"))
        first, rest = runs[: len(a.trainers)], runs[len(a.trainers) :]
        for r in first:
            r.alone = True
            run_all([r], scratch, 1, deadline)
        run_all(rest, scratch, a.concurrency, deadline)
    for r in runs:
        read_results(r, out)
    text = table(runs, a.smoke)
    (out / "nanogpt_recipe.md").write_text(text)
    record = {
        "command": [sys.executable, *sys.argv],
        "seconds": time.perf_counter() - started,
        "runs": [asdict(r) | {"log": str(r.log), "best": r.best()} for r in runs],
    }
    (out / "nanogpt_recipe.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(text, end="")
    return 0 if all(r.returncode == 0 and not r.stopped for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
