"""Comparisons a user can trust: noise measured, intervals on ratios, implausible values flagged."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from lmprof.results import append_row
from lmprof.stats import from_runs, median_interval, median_rank, noise, quantile, ratio

pytest.importorskip("matplotlib")

from lmprof.analysis import analyze  # noqa: E402


def test_noisy_flag_for_short_or_spread_windows() -> None:
    rng = random.Random(0)
    steady = noise([100 + rng.gauss(0, 0.5) for _ in range(60)])
    assert not steady.noisy and steady.n == 60 and steady.p10 < steady.p50 < steady.p90
    short = noise([100.0] * 5)
    assert short.noisy and "5 steady steps" in short.reason
    spread = noise([100 + rng.gauss(0, 30) for _ in range(60)])
    assert spread.noisy and "too spread for a 5% comparison" in spread.reason


def test_median_interval_coverage() -> None:
    lo, hi, cov = median_interval(list(range(1, 21)))
    assert cov >= 0.95 and lo < 10.5 < hi
    assert median_interval([1.0, 2.0, 3.0])[2] < 0.95


def _exact_ranks(n_max: int, confidence: float) -> dict[int, tuple[int, float]]:
    """The exact big-integer method's (j, coverage) for every n in 2..n_max: the largest j with
    1 - 2 S/2^n >= confidence, S = sum of C(n, i) for i < j (the float comparison the method
    makes), j = 1 when none. Walked along n (S(n+1, k) = 2 S(n, k) - C(n, k)) and along j, a
    rank or so per n, so every n up to thousands costs a fraction of a second."""
    out = {}
    n, k, s, c, p = 2, 0, 1, 1, 4  # k = j - 1, s = S(n, k), c = C(n, k), p = 2^n

    def cov(s: int) -> float:
        return 1 - 2 * (s / p)

    while True:
        while k + 1 < n // 2 and cov(s + (up := c * (n - k) // (k + 1))) >= confidence:
            k, s, c = k + 1, s + up, up
        while k > 0 and cov(s) < confidence:
            s, c, k = s - c, c * k // (n - k + 1), k - 1
        out[n] = (k + 1, cov(s))
        if n == n_max:
            return out
        s, c, p, n = 2 * s - c, c * (n + 1) // (n + 1 - k), p * 2, n + 1


def _brute_ranks(n: int, confidence: float) -> tuple[int, float]:
    """The exact method as it was written: each tail summed from scratch (cubic in n)."""

    def cov(j: int) -> float:
        return 1 - 2 * (sum(math.comb(n, i) for i in range(j)) / 2**n)

    best = 1
    for j in range(1, n // 2 + 1):
        if cov(j) < confidence:
            break
        best = j
    return best, cov(best)


def test_median_rank_picks_the_exact_methods_ranks_for_every_n_up_to_3000() -> None:
    for conf in (0.95, 0.99, 0.5):  # the walk is the method itself where that is cheap
        walked = _exact_ranks(120, conf)
        assert all(walked[n] == _brute_ranks(n, conf) for n in range(2, 121)), conf
    for conf, n_max in ((0.95, 3000), (0.99, 1000)):
        for n, (j, coverage) in _exact_ranks(n_max, conf).items():
            got_j, got_cov = median_rank(n, conf)
            assert got_j == j, (n, conf)
            assert math.isclose(got_cov, coverage, rel_tol=1e-10), (n, conf)
    # Beyond the walk, one n summed exactly (O(n) big-integer terms): the same rank.
    n, p, s, c, k = 20_011, 1 << 20_011, 1, 1, 0
    while 1 - 2 * ((s + (up := c * (n - k) // (k + 1))) / p) >= 0.95:
        k, s, c = k + 1, s + up, up
    assert median_rank(n) == (k + 1, pytest.approx(1 - 2 * (s / p), rel=1e-10))
    assert median_rank(0) == median_rank(1) == (1, 0.0)
    assert median_rank(5) == (1, 1 - 2 / 32)  # below 6 values: the range, with what it covers


def test_a_100k_step_window_is_summarised_exactly() -> None:
    rng = random.Random(1)
    times = [100 + rng.gauss(0, 2) for _ in range(100_000)] + [float("nan"), float("inf")]
    n = noise(times)
    xs = sorted(times[:-2])
    j, cov = median_rank(len(xs))
    assert n.n == 100_000 and (n.ci_low, n.ci_high, n.ci_coverage) == (xs[j - 1], xs[-j], cov)
    assert (n.p10, n.p50, n.p90) == tuple(quantile(xs, q) for q in (0.1, 0.5, 0.9))
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    assert n.cv == pytest.approx(sd / mean, rel=1e-9)
    assert 0.95 <= cov < 0.951 and n.ci_low < n.p50 < n.ci_high and not n.noisy


def _row(name: str, tag: str, tps: float, p50: float, half: float, **extra: object) -> dict:
    return {
        "run_name": name,
        "tag": tag,
        "status": "ok",
        "sequence_length": 128,
        "batch_size": 8,
        "precision": "fp32",
        "attention": "vanilla",
        "grad_checkpoint": "none",
        "compile": False,
        "ddp_gpus": 1,
        "steady_tokens_per_sec": tps,
        "step_time_p50_ms": p50,
        "step_time_p50_ci_low_ms": p50 * (1 - half),
        "step_time_p50_ci_high_ms": p50 * (1 + half),
        "config_hash": f"h-{name}",
        **extra,
    }


def _analyze(tmp_path: Path, rows: list[dict]) -> dict[str, str]:
    results = tmp_path / "results.csv"
    for r in rows:
        append_row(results, r)
    done = analyze(results, tmp_path / "out")
    html = done.report.read_text()
    return {p.file: p.reading for p in done.plots} | {"html": html}


def test_identical_configurations_never_state_a_speedup(tmp_path: Path) -> None:
    # Noisy single runs of one configuration, 5.8k vs 14.4k tokens/s (the trial's numbers).
    rows = [
        _row("opts_baseline", "opts", 5800, 100, 0.6),
        _row("opts_same", "opts", 14400, 40, 0.6),
    ]
    got = _analyze(tmp_path, rows)
    reading = next(v for k, v in got.items() if k.startswith("optimization_"))
    assert "noisy: no verdict" in reading and "faster" not in reading
    # Tight intervals: a disagreement between identical settings is flagged, not a speedup.
    rows = [
        _row("opts_baseline", "opts", 5800, 100, 0.01),
        _row("opts_same", "opts", 14400, 40, 0.01),
    ]
    got = _analyze(tmp_path / "b", rows)
    reading = next(v for k, v in got.items() if k.startswith("optimization_"))
    assert "flagged as implausible, no verdict" in reading and "gives" not in reading
    assert "One run per configuration" in got["html"]


def test_planted_2x_slowdown_found_with_interval_excluding_one(tmp_path: Path) -> None:
    rows = []
    for k, (b, s) in enumerate(((1000, 500), (1010, 498), (990, 503))):
        rows.append(_row(f"opts_baseline_rep{k + 1}", "opts", b, 100, 0.01))
        rows.append(_row(f"opts_ckpt_rep{k + 1}", "opts", s, 200, 0.01, grad_checkpoint="full"))
    got = _analyze(tmp_path, rows)
    reading = got["optimization_gradient_checkpointing_comparison.png"]
    assert "gives 0.50x [" in reading
    lo, hi = (float(x) for x in reading.split("0.50x [")[1].split("]")[0].split(","))
    assert hi < 1.0 and lo < 0.5 < hi
    assert "(median of 3)" in got["html"]
    est = ratio(from_runs([500, 498, 503]), from_runs([1000, 1010, 990]))
    assert est.high < 1 and not est.includes_one


def test_planted_superlinear_scaling_is_flagged(tmp_path: Path) -> None:
    rows = [
        _row("ddp_1", "ddp", 1000, 100, 0.01, ddp_gpus=1),
        _row("ddp_2", "ddp", 7970, 25, 0.01, ddp_gpus=2),
    ]
    got = _analyze(tmp_path, rows)
    reading = got["scaling_efficiency_vs_gpus.png"]
    assert "implausible" in reading and "not a finding" in reading
    table = (tmp_path / "out" / "tables" / "ddp.csv").read_text()
    assert "IMPLAUSIBLE" in table


def test_mfu_above_100_percent_is_flagged(tmp_path: Path) -> None:
    rows = [_row("seq_len_128", "seq_len", 1000, 100, 0.01, mfu=1.4, peak_gpu_mem_gb=1.0)]
    got = _analyze(tmp_path, rows)
    assert "MFU 140% is above 100%" in got["html"]


def test_repeats_that_disagree_beyond_their_intervals_are_one_flag_per_configuration(tmp_path):
    # Three repeats 2% apart with 0.5% intervals each: every pair disagrees; one line says so.
    rows = [
        _row(f"opts_baseline_rep{k}", "opts", tps, 1e5 / tps, 0.005)
        for k, tps in enumerate((1000, 1020, 1040), start=1)
    ]
    got = _analyze(tmp_path, rows)
    html = got["html"]
    assert html.count("differ in tokens/s beyond their own step-time intervals") == 1
    assert "3 pair(s)" in html and "1,000 to 1,040" in html


def test_a_users_own_tag_with_a_baseline_run_is_compared(tmp_path):
    rows = []
    for k, (b, c) in enumerate(((1000, 1500), (1010, 1490), (990, 1510)), start=1):
        rows.append(_row(f"my_baseline_rep{k}", "mystudy", b, 1e5 / b, 0.01))
        rows.append(_row(f"my_compiled_rep{k}", "mystudy", c, 1e5 / c, 0.01, compile=True))
    got = _analyze(tmp_path, rows)
    reading = got["optimization_compile_comparison.png"]
    assert "1.50x [" in reading and "no measurable difference" not in reading
