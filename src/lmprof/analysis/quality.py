"""Speed at equal quality: the tokens, seconds, joules and dollars each run needed to reach one
evaluation loss, compared with its tag's baseline.

Throughput alone can reward a setting that trains faster but learns less per token; the cost of
reaching the same loss does not. The target is the worst final evaluation loss among the runs of
a tag (so every run reaches it) unless `--target-loss` sets one. Between evaluation points the
loss is interpolated linearly. Repeats of a configuration give the median and a 95% interval,
and ratios against the baseline come from lmprof.stats, whose verdict says "no measurable
difference" where the interval includes 1. No matplotlib here: the table and the report's
section are written without it; only `time_to_target_loss` draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lmprof.errors import UserError
from lmprof.profiling.energy import cost_columns
from lmprof.stats import Ratio, from_runs, median, ratio, sig, verdict

from .common import Context, Plot, Skip
from .compare import baselines
from .load import ELAPSED_SEC, EVAL_LOSS, GPU_HOUR_USD, JOULES_PER_TOKEN, TOKENS_SEEN, Run
from .uncertainty import ratio_cell

# (key, what a sentence calls it, unit, words for a ratio above / below 1)
METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("tokens", "tokens", "tokens", "more tokens", "fewer tokens"),
    ("seconds", "time", "s", "slower", "faster"),
    ("joules", "energy", "J", "more energy", "less energy"),
    ("usd", "cost", "USD", "dearer", "cheaper"),
)
WORDS = {m[0]: (m[3], m[4]) for m in METRICS}
NOT_REACHED = "not reached"


def parse_target(text: str | float | None) -> float | None:
    """`--target-loss`: a positive number (nats/token), or None for the default."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(
            f"--target-loss takes a loss in nats/token (a positive number), not {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--target-loss must be a positive, finite loss, not {text!r}")
    return value


@dataclass
class Reach:
    """One run's way to the target; None where it never got there (or did not record it)."""

    run: Run
    final_loss: float
    tokens: float | None = None
    seconds: float | None = None
    joules: float | None = None
    usd: float | None = None
    at_first_eval: bool = False  # already below target at its first evaluation: an upper bound

    @property
    def reached(self) -> bool:
        return self.tokens is not None or self.seconds is not None

    def get(self, metric: str) -> float | None:
        return getattr(self, metric)


@dataclass
class Config:
    """A configuration (its replicates merged, as everywhere in the analysis)."""

    run: Run
    reaches: list[Reach]

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def n_reached(self) -> int:
        return sum(r.reached for r in self.reaches)

    @property
    def reached(self) -> bool:
        """Every replicate reached it: a median of the ones that did would flatter the rest."""
        return self.n_reached == len(self.reaches)

    def values(self, metric: str) -> list[float]:
        if not self.reached:
            return []
        return [v for r in self.reaches if (v := r.get(metric)) is not None]

    def median(self, metric: str) -> float | None:
        vs = self.values(metric)
        return median(vs) if vs else None

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95% interval across replicates (t on the log values, as the ratios use)."""
        est = from_runs(self.values(metric))
        if est is None or not est.known:
            return None
        return est.interval()


@dataclass
class Group:
    """The configurations of one tag, compared at one target loss."""

    tag: str
    target: float
    chosen: bool  # True: --target-loss; False: the worst final loss of the tag's runs
    configs: list[Config]
    base: Config
    metrics: list[str] = field(default_factory=list)  # those some run recorded

    def ratio(self, cfg: Config, metric: str) -> Ratio | None:
        if cfg is self.base:
            return None
        new, old = from_runs(cfg.values(metric)), from_runs(self.base.values(metric))
        if new is None or old is None:
            return None
        return ratio(new, old)


def _reach(run: Run, loss: np.ndarray, x: dict[str, np.ndarray], target: float) -> Reach:
    reach = Reach(run, float(loss[-1]))
    below = np.nonzero(loss <= target)[0]
    if not len(below):
        return reach
    i = int(below[0])
    # Linear between the last evaluation above the target and the first at or below it.
    frac = 1.0 if i == 0 else (loss[i - 1] - target) / (loss[i - 1] - loss[i])
    reach.at_first_eval = i == 0

    def at(col: str) -> float | None:
        xs = x.get(col)
        if xs is None:
            return None
        lo, hi = (xs[i], xs[i]) if i == 0 else (xs[i - 1], xs[i])
        value = float(lo + frac * (hi - lo))
        return value if math.isfinite(value) and value > 0 else None

    reach.tokens, reach.seconds = at(TOKENS_SEEN), at(ELAPSED_SEC)
    jpt = run.pos(JOULES_PER_TOKEN)
    if jpt is not None and reach.tokens is not None:
        # The steady window's energy per token stands for the whole way to the target.
        reach.joules = jpt * reach.tokens
    usd_h = run.pos(GPU_HOUR_USD)
    if usd_h is not None and reach.seconds is not None:
        reach.usd = cost_columns(usd_h, run.gpus, None, reach.seconds)["usd_per_run"]
    return reach


def _eval_points(ctx: Context, run: Run) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    curve = ctx.curve(run)
    if curve is None or EVAL_LOSS not in curve.eval:
        return None
    loss = curve.eval[EVAL_LOSS]
    keep = np.isfinite(loss)
    if not keep.any():
        return None
    cols = {c: curve.eval[c][keep] for c in (TOKENS_SEEN, ELAPSED_SEC) if c in curve.eval}
    return loss[keep], cols


def groups(ctx: Context) -> list[Group]:
    """Per tag, the configurations with evaluation points and their way to the target loss."""
    out = []
    for tag in ctx.table.tags:
        found: list[tuple[Run, list[tuple[Run, np.ndarray, dict[str, np.ndarray]]]]] = []
        for r in ctx.table.runs:
            if r.tag != tag:
                continue
            reps = [(m, *p) for m in r.replicates if m.measured and (p := _eval_points(ctx, m))]
            if reps:
                found.append((r, reps))
        if not found:
            continue
        finals = [float(loss[-1]) for _, reps in found for _, loss, _ in reps]
        target = ctx.target_loss if ctx.target_loss is not None else max(finals)
        configs = [
            Config(r, [_reach(m, loss, x, target) for m, loss, x in reps]) for r, reps in found
        ]
        base_run = baselines([c.run for c in configs])[0]
        base = next(c for c in configs if c.run is base_run)
        metrics = [
            m[0]
            for m in METRICS
            if any(r.get(m[0]) is not None for c in configs for r in c.reaches)
        ]
        out.append(Group(tag, target, ctx.target_loss is not None, configs, base, metrics))
    return out


# Said once, where the section starts: every ratio of a configuration run once would repeat it.
SINGLE_RUN_NOTE = (
    "A configuration run once has no spread for its cost to the target, so its ratios carry "
    "no interval and are marked 'interval unknown: no verdict'; repeat the runs (seeds: [..] "
    "or --repeat 3) for 95% intervals."
)


def ratio_words(rt: Ratio | None, metric: str) -> str:
    """The verdict a sentence may state; a ratio that is none is shown with its mark."""
    if rt is None:
        return ""
    if not rt.is_verdict:
        return f"{rt.value:.2f}x ({rt.no_verdict})"
    return verdict(rt, *WORDS[metric])


def has_single_runs(found: Sequence[Group]) -> bool:
    return any(len(c.reaches) < 2 for g in found for c in g.configs)


def _amount(value: float | None, metric: str) -> str:
    unit = {m[0]: m[2] for m in METRICS}[metric]
    return "" if value is None else f"{sig(value)} {unit}"


def sentences(group: Group) -> list[str]:
    """One sentence per configuration: how far it had to go, against the baseline."""
    how = "--target-loss" if group.chosen else "the worst final evaluation loss of the tag"
    lead = (
        f"Tag {group.tag or '(untagged)'}: target evaluation loss {group.target:.4g} ({how}); "
        f"baseline {group.base.name}"
    )
    base_text = _config_text(group.base)
    if not group.base.reached:
        out = [f"{lead}: {base_text}."]
    else:
        out = [f"{lead}, which needs {base_text}." if base_text else f"{lead}."]
    for cfg in group.configs:
        if cfg is group.base:
            continue
        text = _config_text(cfg)
        if not cfg.reached or not group.base.reached:
            out.append(f"{cfg.name}: {text}; no ratio to the baseline.")
            continue
        parts = [
            f"{m} to target {w}"
            for m in group.metrics
            if (w := ratio_words(group.ratio(cfg, m), m))
        ]
        out.append(f"{cfg.name} needs {text}; against {group.base.name}: {'; '.join(parts)}.")
    return out


def _config_text(cfg: Config) -> str:
    if not cfg.reached:
        n = len(cfg.reaches)
        best = min(r.final_loss for r in cfg.reaches)
        return (
            f"{NOT_REACHED} ({n - cfg.n_reached} of {n} run{'s' if n != 1 else ''} never got "
            f"there; best final loss {best:.4g})"
        )
    parts = []
    for m in ("tokens", "seconds"):
        v = cfg.median(m)
        if v is None:
            continue
        ci = cfg.interval(m)
        parts.append(_amount(v, m) + (f" [{sig(ci[0])}, {sig(ci[1])}]" if ci else ""))
    text = " and ".join(parts)
    if len(cfg.reaches) > 1:
        text += f" (median of {len(cfg.reaches)} runs, 95% interval)"
    if any(r.at_first_eval for r in cfg.reaches):
        text += " (below the target at its first evaluation: an upper bound)"
    return text


def table_rows(found: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """The time-to-target table: a row per configuration, a median, interval and ratio per
    metric some run recorded."""
    metrics = [m[0] for m in METRICS if any(m[0] in g.metrics for g in found)]
    unit = {"tokens": "tokens", "seconds": "sec", "joules": "joules", "usd": "usd"}
    header = ["tag", "run_name", "baseline", "target_loss", "runs", "reached"]
    for m in metrics:
        header += [f"{unit[m]}_to_target", f"{unit[m]}_95ci", f"{unit[m]}_ratio_95ci"]
    rows = []
    for g in found:
        for cfg in g.configs:
            row = [
                g.tag,
                cfg.name,
                "yes" if cfg is g.base else g.base.name,
                f"{g.target:.6g}",
                str(len(cfg.reaches)),
                f"{cfg.n_reached}/{len(cfg.reaches)}" if cfg.reached else NOT_REACHED,
            ]
            for m in metrics:
                v, ci = cfg.median(m), cfg.interval(m)
                rt = g.ratio(cfg, m) if cfg.reached and g.base.reached else None
                row += [
                    "" if v is None else f"{v:.6g}",
                    "" if ci is None else f"[{ci[0]:.6g}, {ci[1]:.6g}]",
                    ratio_cell(rt),
                ]
            rows.append(row)
    return header, rows


def time_to_target_loss(ctx: Context) -> list[Plot]:
    """Horizontal bars of tokens, seconds (and joules) to the target per configuration, a row
    of panels per tag: names on the y axis stay legible however many configurations a tag has."""
    from matplotlib.ticker import FuncFormatter

    from .style import FAIL_COLOR, figure, fmt_num, save

    found = groups(ctx)
    if not found:
        raise Skip("no run has evaluation points (results/details/<run>_eval.csv with eval_loss)")
    panel_metrics = [
        m for m in ("tokens", "seconds", "joules") if any(m in g.metrics for g in found)
    ]
    labels = {
        "tokens": "tokens to target",
        "seconds": "seconds to target",
        "joules": "joules to target",
    }
    most = max(len(g.configs) for g in found)
    fig, axes = figure(
        ncols=len(panel_metrics),
        nrows=len(found),
        width=max(4.6, 6.0 - len(panel_metrics) * 0.4),
        height=max(2.0, 0.42 * most + 1.1),
    )
    whiskers = False
    for row, g in zip(axes, found, strict=True):
        names = [c.name + (" (baseline)" if c is g.base else "") for c in g.configs]
        ys = list(range(len(g.configs)))[::-1]  # the first configuration on top
        for col, (ax, m) in enumerate(zip(row, panel_metrics, strict=True)):
            meds = [c.median(m) for c in g.configs]
            right = max((v for v in meds if v is not None), default=1.0)
            rights = [ci[1] for c in g.configs if (ci := c.interval(m))]
            right = max([right, *rights]) * 1.6  # room for the value and ratio beside a bar
            for y, c, v in zip(ys, g.configs, meds, strict=True):
                if v is None:
                    # Hatched to the end of the axis: the run went as far as it could.
                    ax.barh(y, right, color="none", edgecolor=FAIL_COLOR, hatch="//", linewidth=1)
                    why = NOT_REACHED if not c.reached else "not recorded"
                    ax.text(right * 0.5, y, why, ha="center", va="center", color=FAIL_COLOR,
                            fontsize=8, fontweight="bold")  # fmt: skip
                    continue
                ci = c.interval(m)
                err = None if ci is None else [[max(v - ci[0], 0)], [max(ci[1] - v, 0)]]
                whiskers = whiskers or err is not None
                color = ctx.palette("baseline" if c is g.base else c.name)
                ax.barh(y, v, color=color, edgecolor="black", linewidth=0.6, xerr=err, capsize=4)
                rt = g.ratio(c, m) if c.reached and g.base.reached else None
                text = fmt_num(v)
                if rt is not None:
                    text += f"  {rt.value:.2f}x" + ("" if rt.is_verdict else " (no verdict)")
                ax.text(v, y, "  " + text, ha="left", va="center", fontsize=8)
            ax.set_yticks(ys, names if col == 0 else [""] * len(names), fontsize=8)
            ax.set_ylim(-0.6, len(ys) - 0.4)
            ax.set_xlim(0, right)
            ax.set_xlabel(labels[m], fontsize=9)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_num(x) if x else "0"))
            ax.grid(False, axis="y")
            ax.set_title(f"tag {g.tag or '(untagged)'}: target loss {g.target:.4g}", fontsize=9)
    how = (
        "bars: median; whiskers: 95% interval across repeats"
        if whiskers
        else "one run per configuration: no interval, ratios are no verdict"
    )
    fig.suptitle(f"Cost to reach the target evaluation loss ({how})", fontsize=12)
    file = "time_to_target_loss.png"
    save(fig, ctx.out / file)
    reading = (
        f"Per tag, the tokens and seconds each configuration needed to reach the tag's target "
        f"evaluation loss, with its ratio to the tag's baseline ({len(found)} tag(s)); the "
        "section 'Speed at equal quality' states each in words and a table."
    )
    return [Plot(file, "Speed at equal quality", reading, ctx.out / file)]
