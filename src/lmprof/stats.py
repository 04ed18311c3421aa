"""The statistics behind every comparison lmprof states: no torch, no scipy (numpy only to
sort a run's step times in `noise`).

* `quantile`, `quantiles`: linear interpolation between order statistics (numpy's default);
  `quantiles` sorts once for several.
* `median_interval`: the distribution-free interval for a median from order statistics (the
  binomial(n, 1/2) ranks, `median_rank`); it needs 6 values for 95% coverage, and says what it
  reached. O(n log n) for the sort, O(sqrt(n)) for the ranks.
* `noise`: a run's steady-window step times summarised, with the `noisy` verdict.
* `Estimate`: a value on the log scale with its standard error and degrees of freedom, from
  replicate runs (t interval of the log values) or from one run's own step-time spread.
* `ratio`: the ratio of two estimates with its 95% interval (Welch on the log scale) and its
  basis: a verdict only between repeats, or between single runs both steady with a small
  spread ("single runs"); a noisy side gives "noisy: no verdict", whatever the interval says.
  `verdict`: what the text may say ("no measurable difference" where the interval includes 1).
* `bootstrap_ratio`: the percentile bootstrap of the ratio of medians, with a fixed seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
# A run supports a 5% comparison when its median's 95% interval is within +-2.5%: two such
# runs' intervals then cannot both contain values 5% apart.
COMPARE_PCT = 5.0
MIN_STEADY_STEPS = 10
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t (the multiplier of a 95% interval)."""
    if not math.isfinite(df) or df > 30:
        return 1.96 if not math.isfinite(df) or df > 120 else 2.0
    return _T975[max(int(df), 1) - 1]


def _at(xs: Sequence[float], q: float) -> float:
    """The q-quantile of values already sorted."""
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * min(max(q, 0.0), 1.0)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    return _at(sorted(values), q)


def quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Several quantiles of one list (see `quantile`), sorting it once."""
    xs = sorted(values)
    return [_at(xs, q) for q in qs]


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (sample standard deviation over mean); NaN below 2 values."""
    if len(values) < 2:
        return float("nan")
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var) / m if m else float("nan")


_LN2 = math.log(2.0)


def _lower_tail(n: int, k: int) -> float:
    """P(B <= k) for B ~ binomial(n, 1/2), k below n/2, in floating point: the term at k from
    log-gamma, then each term below from the one above (C(n, i-1) = C(n, i) i / (n-i+1)) until
    they stop adding to the sum. About 4 sqrt(n) terms near the median, where the ranks of its
    interval lie; the exact big-integer sum costs O(n) terms of n bits each."""
    if k < 0:
        return 0.0
    term = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * _LN2)
    total, i = 0.0, k
    while term > 0.0:
        total += term
        if term < total * 1e-17:  # the rest, a geometric tail, cannot change the sum
            break
        term *= i / (n - i + 1)
        i -= 1
    return total


def median_rank(n: int, confidence: float = CONFIDENCE) -> tuple[int, float]:
    """(j, coverage) for n sorted values: the largest j <= n/2 whose order statistics x(j),
    x(n+1-j) cover the median with probability 1 - 2 P(B < j) >= `confidence`, B ~ binomial(n,
    1/2); j = 1 (the range) with the coverage it has when none does. The normal approximation
    with continuity correction guesses j, exact tails step to it (a rank or so away)."""
    if n < 2:
        return 1, 0.0
    top = n // 2

    def coverage(j: int) -> float:
        return 1.0 - 2.0 * _lower_tail(n, j - 1)

    j = 1
    if 0.0 < confidence < 1.0:
        z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
        j = min(max(math.floor(n / 2 + 0.5 - z * math.sqrt(n) / 2), 1), top)
    cov = coverage(j)
    if cov >= confidence:
        while j < top and (up := coverage(j + 1)) >= confidence:
            j, cov = j + 1, up
        return j, cov
    while j > 1:
        j -= 1
        cov = coverage(j)
        if cov >= confidence:
            break
    return j, cov


def _interval(xs: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """median_interval of values already sorted."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), 0.0
    j, coverage = median_rank(n, confidence)
    return xs[j - 1], xs[n - j], coverage


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(low, high, coverage): the order statistics x(j), x(n+1-j) of `median_rank`. Below 6
    values no pair reaches 95%: the range is returned with the coverage it has."""
    return _interval(sorted(values), confidence)


@dataclass
class Noise:
    """A run's steady window: step-time quantiles (ms), spread and whether it can be compared."""

    n: int
    p10: float
    p50: float
    p90: float
    cv: float
    ci_low: float
    ci_high: float
    ci_coverage: float
    noisy: bool
    reason: str

    @property
    def rel_halfwidth(self) -> float:
        """The median interval's half-width relative to the median (0.02 = +-2%)."""
        if not self.n or not self.p50:
            return float("nan")
        return (self.ci_high - self.ci_low) / 2 / self.p50

    def row(self) -> dict[str, object]:
        return {
            "step_time_p10_ms": self.p10,
            "step_time_cv": self.cv,
            "step_time_p50_ci_low_ms": self.ci_low,
            "step_time_p50_ci_high_ms": self.ci_high,
            "noisy": self.noisy,
            "noisy_reason": self.reason,
        }


def noise(
    step_ms: Sequence[float],
    min_steps: int = MIN_STEADY_STEPS,
    compare_pct: float = COMPARE_PCT,
) -> Noise:
    """Summarise the steady window; `noisy` when it is too short or too spread for a
    `compare_pct` comparison (the median's 95% interval wider than +-compare_pct/2)."""
    import numpy as np

    # numpy for the O(n) filter and the one sort: a million step times in a tenth of a second
    # (pure Python takes about ten times that). None and non-finite times are dropped.
    arr = np.asarray(step_ms, dtype=np.float64).ravel()
    arr = np.sort(arr[np.isfinite(arr)])
    xs = arr.tolist()
    n = len(xs)
    lo, hi, cov = _interval(xs, CONFIDENCE)
    p10, p50, p90 = _at(xs, 0.1), _at(xs, 0.5), _at(xs, 0.9)
    spread = float("nan")
    if n >= 2 and (mean := float(arr.mean())):
        spread = float(np.sqrt(np.square(arr - mean).sum() / (n - 1))) / mean
    reasons = []
    if n < min_steps:
        reasons.append(
            f"{n} steady step{'s' if n != 1 else ''} (fewer than {min_steps}): "
            "too few for a median interval"
        )
    elif cov < CONFIDENCE:
        reasons.append(f"the median's interval covers only {cov:.0%}")
    if n >= 2 and p50 > 0:
        half = max(p50 - lo, hi - p50) / p50 * 100
        if half > compare_pct / 2:
            reasons.append(
                f"the median step time is known only to +-{half:.1f}% (CV {spread:.0%}): "
                f"too spread for a {compare_pct:g}% comparison"
            )
    return Noise(
        n,
        p10,
        p50,
        p90,
        spread,
        lo,
        hi,
        cov,
        bool(reasons),
        "; ".join(reasons),
    )


@dataclass
class Estimate:
    """A positive quantity as log-scale centre, standard error and degrees of freedom.

    `n` is the number of runs behind it; `source` says where the uncertainty came from:
    'runs' (spread across replicate runs), 'steps' (one run's own step-time spread, which does
    not see run-to-run variation) or 'none' (nothing recorded: the interval is unknown).
    `noisy`: one run whose timing cannot support a comparison (its `noisy` flag, or a median
    interval wider than +-COMPARE_PCT/2): no ratio with it is a verdict."""

    log: float
    se: float
    df: float
    n: int
    source: str
    noisy: bool = False

    @property
    def value(self) -> float:
        return math.exp(self.log)

    @property
    def known(self) -> bool:
        return self.source != "none" and math.isfinite(self.se)

    def interval(self) -> tuple[float, float]:
        if not self.known:
            return float("nan"), float("nan")
        w = t975(self.df) * self.se
        return math.exp(self.log - w), math.exp(self.log + w)


def from_runs(values: Sequence[float]) -> Estimate | None:
    """Replicates: the geometric mean with a t interval of the log values (None: no value)."""
    xs = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not xs:
        return None
    logs = [math.log(v) for v in xs]
    n = len(logs)
    m = sum(logs) / n
    if n < 2:
        return Estimate(m, float("nan"), float("nan"), 1, "none")
    var = sum((v - m) ** 2 for v in logs) / (n - 1)
    return Estimate(m, math.sqrt(var / n), n - 1, n, "runs")


def from_spread(
    value: float, low: float | None, high: float | None, noisy: bool = False
) -> Estimate:
    """One run: its value with the 95% interval of its median step time (a rate's interval is
    the step time's, inverted: the relative width is the same). `noisy`: the run's own flag;
    an interval wider than +-COMPARE_PCT/2 makes it noisy too."""
    if (
        low is None
        or high is None
        or not (0 < low <= high)
        or not math.isfinite(low + high)
        or value <= 0
    ):
        return Estimate(math.log(value), float("nan"), float("nan"), 1, "none", noisy)
    mid = math.sqrt(low * high)
    half = max(math.log(high / mid), 1e-9)
    wide = math.expm1(half) * 100 > COMPARE_PCT / 2
    return Estimate(math.log(value), half / 1.96, math.inf, 1, "steps", noisy or wide)


# A ratio's basis: what it rests on, and whether that supports a verdict.
REPEATS = "repeats"  # both sides repeated (interleaved): run-to-run variation is in the interval
SINGLE = "single runs"  # one run a side, both steady with a small spread: labelled as such
NOISY = "noisy"  # a single run whose timing is noisy: no verdict
UNKNOWN = "unknown"  # a side recorded no spread: no interval, no verdict
VERDICT_BASES = (REPEATS, SINGLE)


@dataclass
class Ratio:
    """new / base with its 95% interval and its basis; `source` is where the interval came
    from ('runs', 'steps', 'none'); `why` says what stops a verdict, where something does."""

    value: float
    low: float
    high: float
    source: str  # 'runs', 'steps', or 'none'
    basis: str = SINGLE
    why: str = ""

    @property
    def known(self) -> bool:
        return self.source != "none"

    @property
    def is_verdict(self) -> bool:
        """Whether a table, a sentence or a plot may state what this ratio says."""
        return self.known and self.basis in VERDICT_BASES

    @property
    def includes_one(self) -> bool:
        return not self.known or self.low <= 1.0 <= self.high

    def text(self, digits: int = 2) -> str:
        if not self.known:
            return f"{self.value:.{digits}f}x (interval unknown)"
        return f"{self.value:.{digits}f}x [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def withheld(self, basis: str, why: str) -> Ratio:
        """The same numbers with no verdict (a contradiction, repeats not interleaved, ...)."""
        return Ratio(self.value, self.low, self.high, self.source, basis, why)

    @property
    def no_verdict(self) -> str:
        """The mark a withheld ratio carries wherever it is shown."""
        if not self.known:
            return "interval unknown: no verdict"
        if self.basis == NOISY:
            return "noisy: no verdict"
        return f"{self.basis}: no verdict"


def _basis(new: Estimate, base: Estimate) -> tuple[str, str]:
    noisy = [e for e in (new, base) if e.n < 2 and e.noisy]
    if noisy:
        return NOISY, (
            "a single run with noisy timing: its median step time is too spread, or its "
            "steady window too short, for a comparison; repeat with --repeat"
        )
    if new.n >= 2 and base.n >= 2:
        return REPEATS, ""
    return SINGLE, ""


def ratio(new: Estimate, base: Estimate) -> Ratio:
    """new/base; the interval is Welch's on the log scale (normal where both are single runs)."""
    r = math.exp(new.log - base.log)
    basis, why = _basis(new, base)
    if not (new.known and base.known):
        why = why or "a side recorded no step-time spread to bound it"
        return Ratio(
            r, float("nan"), float("nan"), "none", UNKNOWN if basis != NOISY else basis, why
        )
    var = new.se**2 + base.se**2
    source = "runs" if "runs" in (new.source, base.source) else "steps"
    if var == 0:
        return Ratio(r, r, r, source, basis, why)
    # Welch-Satterthwaite; an infinite df (one run's spread) contributes no term.
    terms = [e.se**4 / e.df for e in (new, base) if math.isfinite(e.df) and e.df > 0]
    df = var**2 / sum(terms) if terms else math.inf
    w = t975(df) * math.sqrt(var)
    return Ratio(r, math.exp(math.log(r) - w), math.exp(math.log(r) + w), source, basis, why)


def verdict(rt: Ratio, more: str = "faster", less: str = "slower") -> str:
    """What a sentence may claim: a change only where the ratio is a verdict and its interval
    excludes 1; single runs say so."""
    if not rt.is_verdict:
        return f"{rt.no_verdict} ({rt.text()}{': ' + rt.why if rt.why else ''})"
    single = rt.basis == SINGLE
    if rt.includes_one:
        return f"no measurable difference ({rt.text()}{', single runs' if single else ''})"
    word = more if rt.value > 1 else less
    return f"{rt.text()}, {word}{' (single runs)' if single else ''}"


def bootstrap_ratio(
    new: Sequence[float],
    base: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(ratio of medians, low, high) by the percentile bootstrap, resampling each side."""
    rng = random.Random(seed)
    a, b = list(new), list(base)
    stats = []
    for _ in range(n_boot):
        ra = median([rng.choice(a) for _ in a])
        rb = median([rng.choice(b) for _ in b])
        if rb:
            stats.append(ra / rb)
    tail = (1 - confidence) / 2
    low, high = quantiles(stats, (tail, 1 - tail))
    return median(a) / median(b), low, high


def disagree(a: Estimate, b: Estimate) -> bool:
    """Two measurements of one configuration whose difference their intervals do not explain."""
    return not ratio(a, b).includes_one


def sig(value: float | None, digits: int = 3) -> str:
    """A number to `digits` significant digits, without exponent for everyday sizes."""
    if value is None or not math.isfinite(value):
        return ""
    if value == 0:
        return "0"
    mag = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - mag, 0)
    return f"{value:,.{decimals}f}"
