"""Analysis: every artifact from a full sweep, only what applies from a partial one, one-line
errors on bad input, and a report that renders offline in headless Chromium."""

from __future__ import annotations

import base64
import csv
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmprof.errors import UserError
from lmprof.results import append_row

pytest.importorskip("matplotlib")

from lmprof.analysis import Analysis, analyze  # noqa: E402
from lmprof.cli.analyze import cmd_analyze, main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {
    "device_name": "NVIDIA H200",
    "gpu_count": 1,
    "torch_version": "2.11.0+cu130",
    "git_commit": "abc1234",
    "lmprof_version": "0.1.0",
}


def _row(
    name: str,
    tag: str,
    status: str = "ok",
    *,
    seq: int = 512,
    bs: int = 16,
    precision: str = "fp16",
    attention: str = "sdpa",
    ckpt: str = "none",
    compile_: bool = False,
    gpus: int = 1,
    tps: float | None = None,
    mem: float | None = None,
    mfu: float | None = None,
    params: float = 124.4,
    **extra: object,
) -> dict[str, object]:
    ok = status in ("ok", "diverged")
    row = {
        "run_name": name,
        "tag": tag,
        "status": status,
        "status_detail": "" if ok else f"{status}: CUDA out of memory. Tried to allocate 2.00 GiB",
        "total_params_m": params,
        "sequence_length": seq,
        "batch_size": bs,
        "fp16": precision == "fp16",
        "precision": precision,
        "attention": attention,
        "flash_attention": attention == "flash",
        "grad_checkpoint": ckpt,
        "compile": compile_,
        "ddp_gpus": gpus,
        "throughput": tps * 0.9 if ok and tps else None,
        "steady_tokens_per_sec": tps if ok else None,
        "steady_tokens_per_sec_per_gpu": tps / gpus if ok and tps else None,
        "peak_gpu_mem_gb": mem if ok else None,
        "mfu": mfu if ok else None,
        "eval_perplexity": 40.0 if ok else None,
        "eval_loss": math.log(40.0) if ok else None,
        "training_time_sec": 100.0 if ok else 3.0,
        "config_hash": f"h-{tag}-{name}",
        **ENV,
    }
    row.update(extra)
    return row


def full_rows() -> list[dict[str, object]]:
    rows = []
    for seq, mem in ((128, 2.0), (256, 3.1), (512, 5.6), (1024, 11.8)):
        rows.append(
            _row(
                f"seq_len_{seq}",
                "seq_len",
                seq=seq,
                tps=100_000 - seq * 20,
                mem=mem,
                mfu=0.30 + seq / 10_000,
                predicted_peak_mem_gb=mem * 1.05,
            )
        )
    rows.append(_row("seq_len_2048", "seq_len", "oom", seq=2048, predicted_peak_mem_gb=26.0))
    for bs, t32, m32, t16, m16 in (
        (4, 20e3, 3.0, 45e3, 2.0),
        (8, 35e3, 5.0, 80e3, 3.4),
        (16, 50e3, 9.0, 110e3, 6.1),
        (32, None, None, 100e3, 6.2),
    ):
        rows.append(
            _row(
                f"bs_fp32_{bs}",
                "bs_fp32",
                "oom" if t32 is None else "ok",
                bs=bs,
                precision="fp32",
                tps=t32,
                mem=m32,
                mfu=0.2,
            )
        )
        rows.append(_row(f"bs_fp16_{bs}", "bs_fp16", bs=bs, tps=t16, mem=m16, mfu=0.4))
    # A resumed baseline: interrupted first, then finished; the report must use the ok row.
    rows.append(
        _row("vanilla_baseline", "vanilla_opts", "interrupted", seq=1024, attention="vanilla")
    )
    rows.append(
        _row("vanilla_baseline", "vanilla_opts", seq=1024, attention="vanilla", tps=40e3, mem=20.0)
    )
    rows.append(
        _row(
            "vanilla_gradient_checkpointing",
            "vanilla_opts",
            seq=1024,
            attention="vanilla",
            ckpt="full",
            tps=30e3,
            mem=8.0,
        )
    )
    rows.append(
        _row("opt_flash_attention", "vanilla_opts", seq=1024, attention="flash", tps=60e3, mem=12.0)
    )
    rows.append(_row("opts_baseline", "opts", tps=90e3, mem=10.0))
    rows.append(_row("opts_compile", "opts", compile_=True, tps=110e3, mem=9.5))
    rows.append(_row("opts_checkpointing", "opts", ckpt="full", tps=70e3, mem=5.0))
    rows.append(_row("opts_bs64_compile", "opts", "oom", bs=64, compile_=True))
    for n, (layers, params, tps, mfu) in enumerate(
        ((4, 30.0, 300e3, 0.25), (8, 60.0, 170e3, 0.33), (12, 124.0, 95e3, 0.41))
    ):
        rows.append(
            _row(
                f"model_{layers}l",
                "model_size",
                params=params,
                tps=tps,
                mem=4.0 + n * 3,
                mfu=mfu,
                n_layers=layers,
                d_model=768,
            )
        )
    rows.append(_row("model_48l", "model_size", "oom", params=1500.0, n_layers=48, d_model=1600))
    for gpus, eff in ((1, 1.0), (2, 0.97), (4, 0.93), (8, 0.88)):
        rows.append(
            _row(
                f"ddp_{gpus}gpu", "ddp", gpus=gpus, tps=100e3 * gpus * eff, mem=6.0, gpu_count=gpus
            )
        )
    for attn, tps, mem, status in (
        ("vanilla", 50e3, 14.0, "ok"),
        ("sdpa", 90e3, 7.0, "ok"),
        ("flash", 95e3, 6.5, "ok"),
        ("mem_efficient", 85e3, 6.8, "ok"),
        ("cudnn", None, None, "failed"),
    ):
        rows.append(_row(f"attn_{attn}", "attention", status, attention=attn, tps=tps, mem=mem))
    for prec, tps, mem in (
        ("fp32", 30e3, 12.0),
        ("tf32", 55e3, 12.0),
        ("bf16", 100e3, 7.0),
        ("fp16", 101e3, 7.0),
    ):
        rows.append(
            _row(
                f"prec_{prec}",
                "precision",
                precision=prec,
                tps=tps,
                mem=mem,
                joules_per_token=700.0 / tps,  # 700 W whatever the precision
            )
        )
    rows.append(_row("lr_3e-4", "lr_sweep", tps=90e3, mem=6.0, lr=3e-4))
    rows.append(_row("lr_1e-3", "lr_sweep", "diverged", tps=90e3, mem=6.0, lr=1e-3))
    return rows


def write_details(details: Path, name: str, steps: int = 40, scale: float = 1.0) -> None:
    details.mkdir(parents=True, exist_ok=True)
    with open(details / f"{name}_metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "step",
                "loss",
                "perplexity",
                "accuracy",
                "lr",
                "tokens_seen",
                "step_time_ms",
                "tokens_per_sec",
                "elapsed_sec",
            ]
        )
        for s in range(1, steps + 1):
            loss = 2.5 + 8.0 * scale / math.sqrt(s)
            w.writerow([s, loss, math.exp(loss), 0.3, 3e-4, s * 8192, 80.0, 1e5, s * 0.08 * scale])
    with open(details / f"{name}_eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["step", "tokens_seen", "elapsed_sec", "eval_loss", "eval_perplexity", "eval_accuracy"]
        )
        for s in (steps // 2, steps):
            loss = 2.6 + 8.0 * scale / math.sqrt(s)
            w.writerow([s, s * 8192, s * 0.08 * scale, loss, math.exp(loss), 0.3])


def make_sweep(root: Path, rows: list[dict[str, object]] | None = None) -> Path:
    results = root / "results.csv"
    for row in full_rows() if rows is None else rows:
        append_row(results, row)
    details = root / "results" / "details"
    for i, name in enumerate(
        (
            "seq_len_128",
            "seq_len_512",
            "vanilla_baseline",
            "vanilla_gradient_checkpointing",
            "opt_flash_attention",
            "model_4l",
            "model_12l",
        )
    ):
        write_details(details, name, scale=1.0 + 0.2 * i)
    return results


EXPECTED_PLOTS = [
    "memory_vs_sequence_length.png",
    "mfu_vs_sequence_length.png",
    "throughput_vs_batch_size.png",
    "memory_vs_batch_size.png",
    "mfu_vs_batch_size.png",
    "throughput_vs_model_size.png",
    "scaling_efficiency_vs_gpus.png",
    "energy_per_token_vs_throughput.png",
    "perplexity_over_time.png",
    "loss_vs_tokens.png",
    "loss_vs_time.png",
    "time_to_target_loss.png",
    "optimization_gradient_checkpointing_vanilla_opts_comparison.png",
    "optimization_gradient_checkpointing_opts_comparison.png",
    "optimization_flash_attention_vanilla_opts_comparison.png",
    "optimization_compile_comparison.png",
    "optimization_compile_and_batch_64_comparison.png",
    "optimization_sdpa_attention_comparison.png",
    "optimization_mem_efficient_attention_comparison.png",
    "optimization_cudnn_attention_comparison.png",
    "optimization_flash_attention_attention_comparison.png",
    "optimization_tf32_comparison.png",
    "optimization_bf16_comparison.png",
    "optimization_fp16_comparison.png",
]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Analysis]:
    """One analysis of the full sweep, shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("full")
    return root / "results", analyze(make_sweep(root), root / "results")


def test_full_sweep_writes_every_artifact(full: tuple[Path, Analysis]) -> None:
    import matplotlib.image as mpimg

    out, done = full

    written = sorted(p.file for p in done.plots)
    assert written == sorted(EXPECTED_PLOTS), done.skipped
    assert done.skipped == []
    for file in EXPECTED_PLOTS:
        img = mpimg.imread(out / file)
        assert img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 0.05, file
    for tag in (
        "seq_len",
        "bs_fp32",
        "bs_fp16",
        "vanilla_opts",
        "opts",
        "model_size",
        "ddp",
        "attention",
        "precision",
        "lr_sweep",
    ):
        assert (out / "tables" / f"{tag}.csv").is_file() and (
            out / "tables" / f"{tag}.md"
        ).is_file()

    readings = {p.file: p.reading for p in done.plots}
    # Computed, not canned: the numbers come from the rows above.
    assert (
        "the largest that fit was 1024; 2048 ran out of memory"
        in readings["memory_vs_sequence_length.png"]
    )
    # fp16 vs fp32 at the largest batch both finished (16): 110k/50k tokens/s, 6.1 vs 9.0 GB;
    # the rows record no step-time spread, so the ratio is shown but is no verdict.
    assert (
        "fp16 has 2.2x the tokens/s of fp32 at batch 16 (interval unknown: no verdict) and 32% "
        "less memory" in readings["throughput_vs_batch_size.png"]
    )
    assert (
        "; for fp32, the largest that fit was batch 16 and batch 32 ran out of memory."
        in readings["throughput_vs_batch_size.png"]
    )
    assert (
        "8 GPUs give 7.04x the tokens/s of 1 (88% scaling efficiency, interval unknown: no verdict)"
        in readings["scaling_efficiency_vs_gpus.png"]
    )
    assert (
        "uses 60% less peak memory than vanilla_baseline and shows 0.75x its tokens/s, interval "
        "unknown: no verdict"
        in readings["optimization_gradient_checkpointing_vanilla_opts_comparison.png"]
    )
    assert "attn_cudnn failed" in readings["optimization_cudnn_attention_comparison.png"]
    assert readings["perplexity_over_time.png"].startswith(
        "The lowest final evaluation perplexity of 7 evaluated run(s) is seq_len_128's 47.70 at step 40"
    )

    # The resumed baseline counts once, with its ok row, and the report says so.
    opts = _csv(out / "tables" / "vanilla_opts.csv")
    base = [r for r in opts if r["run_name"] == "vanilla_baseline"]
    assert len(base) == 1 and base[0]["status"] == "ok" and base[0]["optimisation"] == "baseline"
    flash = next(r for r in opts if r["run_name"] == "opt_flash_attention")
    # No step-time spread recorded: the speed change is withheld, the memory change is not.
    assert flash["tokens_per_sec_change_pct"] == "interval unknown: no verdict"
    assert flash["peak_mem_change_pct"] == "-40.0"
    ddp = _csv(out / "tables" / "ddp.csv")
    no = " (interval unknown: no verdict)"
    assert [r["scaling_efficiency_pct"] for r in ddp] == [
        "100.0",
        f"97.0{no}",
        f"93.0{no}",
        f"88.0{no}",
    ]
    unknown = (out / "tables" / "lr_sweep.md").read_text()
    assert "lr_1e-3" in unknown and "diverged" in unknown

    page = (out / "report.html").read_text()
    assert page.count("<b>Rows of one run</b>") == 1 and "latest ok row" in page
    assert re.search(r"vanilla_baseline \(lines \d+: interrupted, (\d+): ok; using \1\)", page)
    assert page.count("data:image/png;base64,") == len(EXPECTED_PLOTS)
    assert "NVIDIA H200" in page and "abc1234" in page and "2.11.0+cu130" in page
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"(src|href)=['\"](https?:)?//", page)
    runs_table = page.split("id='runs'>", 1)[1].split("</table>", 1)[0]
    assert runs_table.count("<tr>") == 1 + len({(r["tag"], r["run_name"]) for r in full_rows()})


def test_report_structure_each_section_once_and_every_figure_exists(
    full: tuple[Path, Analysis],
) -> None:
    out, done = full
    page = (out / "report.html").read_text()
    sections = re.findall(r"<h2>([^<]+)</h2>", page)
    assert len(sections) == len(set(sections)), sections
    assert {"Runs", "Notes", "Plots", "Speed at equal quality"} <= set(sections)
    # Each note, and each paragraph, is said once: no explanation repeated per ratio.
    for item in re.findall(r"<li>(.*?)</li>", page):
        if len(item) > 80:
            assert page.count(item) == 1, item
    # Every figure the page shows is a file beside it, embedded as that file's bytes, once.
    figures = re.findall(r"<figure id='([^']+)'>", page)
    assert sorted(figures) == sorted(p.file for p in done.plots)
    for file in figures:
        data = base64.b64encode((out / file).read_bytes()).decode("ascii")
        assert page.count(data) == 1, file
    # What the notes say is not plotted was not written.
    for file in re.findall(r"Not plotted: <code>([^<]+)</code>", page):
        assert not (out / file).exists() and file not in figures, file
    # Every table the report links to exists.
    for link in re.findall(r"<code>(tables/[^<]+)</code>", page):
        assert (out / link).is_file(), link


def test_partial_input_writes_only_what_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [r for r in full_rows() if r["tag"] == "seq_len"]
    results = tmp_path / "results.csv"
    for row in rows:
        append_row(results, row)
    out = tmp_path / "out"

    class Args:
        pass

    args = Args()
    args.results, args.out, args.details = str(results), str(out), None
    assert cmd_analyze(args) == 0  # type: ignore[arg-type]
    printed = capsys.readouterr().out

    assert sorted(p.name for p in out.glob("*.png")) == [
        "memory_vs_sequence_length.png",
        "mfu_vs_sequence_length.png",
    ]
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["seq_len.csv", "seq_len.md"]
    assert "skipped throughput_vs_batch_size.png: no runs tagged bs_fp32/bs_fp16" in printed
    assert "skipped optimization_*_comparison.png: no runs tagged opts" in printed
    assert "skipped perplexity_over_time.png: no details directory" in printed
    assert "skipped scaling_efficiency_vs_gpus.png: no runs tagged ddp" in printed
    page = (out / "report.html").read_text()
    assert "Not plotted: <code>throughput_vs_batch_size.png</code>" in page
    assert page.count("data:image/png;base64,") == 2


def test_seed_style_table_without_status_or_tag(tmp_path: Path) -> None:
    # The seed's writer had no status or tag columns: rows are finished runs, untagged.
    results = tmp_path / "results.csv"
    results.write_text(
        "run_name,total_params_m,sequence_length,batch_size,fp16,throughput,peak_gpu_mem_gb\n"
        "a,124,512,16,True,50000,6.1\nb,124,512,32,True,80000,11.0\n"
    )
    done = analyze(results, tmp_path / "out")
    assert (tmp_path / "out" / "tables" / "untagged.csv").is_file()
    assert "untagged" in (tmp_path / "out" / "tables" / "untagged.md").read_text().lower()
    assert done.report is not None and done.report.is_file()


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no results table"),
        (b"", "is empty"),
        (b"foo,bar\n1,2\n", "missing column(s) run_name, sequence_length, batch_size"),
        (b'{"run_name": "a", "rows": []}\n', "missing column(s)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "not a readable CSV"),
        (b"run_name,sequence_length,batch_size\n", "header but no runs"),
        (b"run_name,sequence_length,batch_size\na,1,2,3,4\n", "line 2 has 5 cells"),
    ],
)
def test_malformed_input_is_one_line(tmp_path: Path, content: bytes | None, expected: str) -> None:
    results = tmp_path / "results.csv"
    if content is not None:
        results.write_bytes(content)
    with pytest.raises(UserError) as err:
        analyze(results, tmp_path / "out")
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_analysis_script_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "results.csv"
    bad.write_text("not,a,results\ntable,at,all\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "analysis.py"),
            "--results",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "missing column(s)" in proc.stderr


def test_missing_matplotlib_still_writes_tables_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = make_sweep(tmp_path, [r for r in full_rows() if r["tag"] == "ddp"])
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["--results", str(results), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert (
        "no plots: plots need matplotlib, which is not installed: pip install 'lmprof[analysis]'"
        in out
    )
    assert "scaling_efficiency_vs_gpus.png" in out and "wrote 1 table(s)" in out
    assert (tmp_path / "o" / "tables" / "ddp.csv").is_file()
    assert not list((tmp_path / "o").glob("*.png"))
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<b>No plots:</b> plots need matplotlib" in page and "ddp_8gpu" in page
    assert "Not plotted: <code>scaling_efficiency_vs_gpus.png</code>" in page


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("CI"),
    reason="chromium is not installed (CI installs it)",
)
def test_report_renders_offline_in_chromium(full: tuple[Path, Analysis], tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    _, done = full
    assert done.report is not None
    browser = _chromium()
    assert browser is not None, "CI must install chromium"
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2000",
    ]
    url = done.report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout

    # The rendered DOM has the runs table, its rows, and the plots as embedded images.
    assert '<table class="runs" id="runs">' in dom
    assert "opt_flash_attention" in dom and "seq_len_2048" in dom
    assert re.search(r"<img alt=\"[^\"]+\" src=\"data:image/png;base64,[A-Za-z0-9+/]{1000}", dom)
    # The sort script works: two clicks on tokens/s put the fastest run (8 GPUs) first.
    clicked = tmp_path / "clicked.html"
    clicked.write_text(
        done.report.read_text().replace(
            "</body>",
            """<script>
      var th = Array.from(document.querySelectorAll("#runs th")).find(h => h.textContent === "tokens/s");
      th.click(); th.click();</script></body>""",
        )
    )
    sorted_dom = subprocess.run(
        [*flags, "--dump-dom", clicked.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    first = re.search(r"<tbody><tr><td>([^<]+)</td>", sorted_dom)
    assert first is not None and first.group(1) == "ddp_8gpu"

    # The screenshot shows something: the header and table at the top, the first plot below.
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 1900 and img.shape[1] >= 1200
    assert img[:600].std() > 0.05, "top of the page is blank"

    def pixels(region: object, rgb: tuple[int, int, int], tol: float = 0.06) -> int:
        return int((abs(region - [c / 255 for c in rgb]) < tol).all(axis=-1).sum())  # type: ignore[operator]

    # The runs table is drawn: its green 'ok' badges are on screen.
    assert pixels(img[:1200], (0xD4, 0xED, 0xDA)) > 500, "no runs table rows on screen"
    # The first plot is drawn: fp16's orange line exists only in the embedded PNG.
    assert pixels(img[1000:], (0xFF, 0x7F, 0x0E)) > 300, "the first plot did not render"
