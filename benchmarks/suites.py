"""The named GPU suites of `python -m benchmarks`: what the dated gpu_session*.sh scripts ran,
grouped by purpose, with the same arguments so that a committed result can be made again.

A step is one command run with the current interpreter: a script of benchmarks/ (run from the
repository root, as the scripts expect) or `-m lmprof ...` (run inside the step's folder, since
lmprof writes results.csv, results/ and logs/ under the current folder). Steps of one suite
that share a folder share one results.csv, as the old scripts' scratch folders did. In `args`,
`{root}` is the repository and `{dir}` the step's folder, both absolute at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

GPT2 = "{root}/configs/gpt2_small.yaml"


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    folder: str  # under the suite's --out DIR
    timeout: int | None = None  # seconds; the old scripts' `timeout N`, so a hang ends
    stdout: str | None = None  # the step prints a table: keep its stdout in this file too
    keep: dict[str, str] = field(default_factory=dict)  # folder file -> copy at DIR top level
    optional: bool = False  # its script may not exist yet: skipped with a line, not failed
    in_folder: bool = False  # a script that reads relative paths of an earlier step's folder

    @property
    def lmprof(self) -> bool:
        return self.args[:2] == ("-m", "lmprof")

    @property
    def script(self) -> str | None:
        """The benchmarks/ script this step runs, relative to the repository root."""
        return self.args[0] if self.args[0].endswith(".py") else None


@dataclass(frozen=True)
class Suite:
    name: str
    meaning: str
    replaces: str  # which of the deleted shell scripts it stands for (NOTES.md's lookup)
    steps: tuple[Step, ...]


def _run(name: str, folder: str, *overrides: str, timeout: int, **kw) -> Step:
    """One `lmprof run` of GPT-2 small (configs/gpt2_small.yaml) with key=value overrides."""
    args = ("-m", "lmprof", "run", GPT2, *overrides, f"run_name={name}")
    return Step(name, args, folder, timeout, **kw)


def _step_matrix(name: str, *configs: str, timeout: int | None = None) -> Step:
    args = ("benchmarks/step_throughput.py", "--out", "{dir}", "--only", *configs)
    return Step(name, args, f"step_{name}", timeout, keep={"step_throughput.md": f"{name}.md"})


STEP = Suite(
    "step",
    "isolated training-step throughput matrix (step_throughput.py): kernels, precisions, compile",
    "gpu_session1.sh, the step matrices of gpu_session2.sh and gpu_session5b.sh matrix, "
    "gpu_session5c.sh",
    (
        _step_matrix(
            "matrix",
            "small_seed_module_fp16",
            "small_seed_equiv_fp16",
            "small_vanilla_fp32",
            "small_vanilla_bf16",
            "small_sdpa_bf16",
            "small_flash_bf16",
            "small_mem_efficient_bf16",
            "small_cudnn_bf16",
            "small_cudnn_bf16_chunked",
            "small_flash_bf16_compile",
            "small_cudnn_bf16_compile",
            "small_cudnn_bf16_compile_chunked",
        ),
        _step_matrix(
            "matrix_more",
            "small_seed_equiv_fp16",
            "small_seed_equiv_mem_efficient_fp16",
            "small_cudnn_bf16_compile",
            "small_cudnn_bf16_compile_nobias",
            "small_cudnn_bf16_compile_b64",
            "medium_cudnn_bf16_compile",
            "small_long_131k",
        ),
        _step_matrix(
            "compile_modes",
            "small_cudnn_bf16_compile",
            "small_cudnn_bf16_compile_cudagraphs",
            "small_cudnn_bf16_compile_autotune",
            timeout=400,
        ),
        # Groups of step_throughput.py (its GROUPS): nanoGPT's GPT beside lmprof in one call,
        # and the small model whose step the per-step host work and tiny kernels show in.
        _step_matrix("vs_nanogpt", "vs_nanogpt", timeout=420),
        _step_matrix("small_kernels", "small_kernels", timeout=300),
        # model.loss choices (fused, pytorch, quack's two) beside nanoGPT at equal architecture.
        _step_matrix("losses", "losses", timeout=420),
    ),
)

OPS = Suite(
    "ops",
    "the fused LM head + cross-entropy and every model.loss against PyTorch: error and cost "
    "(ops_check.py)",
    "the ops_check.py call of gpu_session5b.sh matrix|curves",
    (
        Step(
            "ops_check",
            ("benchmarks/ops_check.py", "--out", "{dir}"),
            "ops",
            300,  # the model.loss choices, each compiled, and quack's kernels JIT-built once
            keep={"ops_check.md": "ops_check.md"},
        ),
    ),
)

MEMORY = Suite(
    "memory",
    "the memory model against real training steps on this GPU (memory_calibration.py)",
    "the memory_calibration.py call of gpu_session5b.sh matrix",
    (
        Step(
            "calibration",
            ("benchmarks/memory_calibration.py", "--out", "{dir}/memory_calibration.json"),
            "memory",
            170,
            stdout="memory_calibration.log",  # one line per run: measured vs predicted
            keep={"memory_calibration.log": "memory_calibration.log"},
        ),
    ),
)

_PROFILE = ("profile.enabled=true", "profile.wait=5", "profile.warmup=2", "profile.active=3")
_SHORT = ("attention=cudnn", "max_steps=12", "logging_steps=12", "eval_max_batches=2")
_BIAS = [
    step
    for b in ("true", "false")
    for step in (
        _run(
            f"compiled_bias_{b}",
            "profiling",
            "attention=cudnn",
            "compile=true",
            f"bias={b}",
            "data.source=synthetic",
            "max_steps=14",
            "logging_steps=14",
            "eval_max_batches=2",
            "profile.enabled=true",
            "profile.wait=8",
            "profile.warmup=2",
            "profile.active=3",
            timeout=200,
        ),
        Step(
            f"kernels_bias_{b}",
            ("benchmarks/trace_kernels.py", f"results/traces/compiled_bias_{b}/trace.json"),
            "profiling",
            stdout=f"compiled_bias_{b}_kernels.md",
            keep={f"compiled_bias_{b}_kernels.md": f"compiled_bias_{b}_kernels.md"},
            in_folder=True,
        ),
    )
]

PROFILING = Suite(
    "profiling",
    "FLOPs vs FlopCounterMode, profiler traces, measured peak, OOM snapshot, kernel tables",
    "flops_check.py and the trace run of gpu_session2.sh, gpu_next.sh, gpu_session5.sh",
    (
        Step(
            "flops_check",
            ("benchmarks/flops_check.py",),
            "profiling",
            stdout="flops_check.md",
            keep={"flops_check.md": "flops_check.md"},
        ),
        _run(
            "trace_gpt2_small",
            "profiling",
            *_SHORT,
            *_PROFILE,
            "profile.memory_snapshot=true",
            "profile.breakdown=true",
            timeout=120,
        ),
        _run(
            "measured_peak",
            "profiling",
            *_SHORT,
            *_PROFILE,
            "profile.peak=measured",
            timeout=150,
            keep={"results/tables/measured_peak_profile_ops.md": "measured_peak_profile_ops.md"},
        ),
        _run(
            "oom_snapshot",
            "profiling",
            "attention=cudnn",
            "batch_size=512",
            "max_steps=2",
            "logging_steps=1",
            "profile.memory_snapshot=true",
            timeout=120,
        ),
        *_BIAS,
    ),
)

_E2E = (
    "logging_steps=25",
    "eval_max_batches=10",
    "attention=cudnn",
    "compile=true",
    "max_steps=100",
    "warmup_steps=10",
)
E2E = Suite(
    "e2e",
    "end-to-end `lmprof run` of GPT-2 small, real tokens against synthetic, in-run kernel table",
    "the e2e runs of gpu_session2.sh and gpu_session5b.sh curves",
    (
        _run("e2e_real_cudnn_compile", "e2e", *_E2E, timeout=240),
        _run("e2e_synth_cudnn_compile", "e2e", *_E2E, "data.source=synthetic", timeout=150),
        _run(
            "e2e_cudnn_compile",
            "e2e",
            "attention=cudnn",
            "compile=true",
            "max_steps=300",
            "logging_steps=25",
            "profile.enabled=true",
            "profile.wait=200",
            "profile.warmup=2",
            "profile.active=3",
            timeout=150,
            keep={
                "results/tables/e2e_cudnn_compile_profile_ops.md": "e2e_cudnn_compile_profile_ops.md"
            },
        ),
    ),
)

SWEEP = Suite(
    "sweep",
    "the seq_len and bs_fp16 tags (one run out of memory), find-max, memory model check, plots",
    "gpu_session3.sh (its sweep and find-max), then memory_model_check.py and lmprof analyze",
    (
        Step(
            "sweep",
            ("-m", "lmprof", "sweep", "{root}/benchmarks/h200_sweep.yaml"),
            "sweep",
            250,
        ),
        Step(
            "find_max",
            (
                "-m",
                "lmprof",
                "find-max",
                GPT2,
                "run_name=findmax_gpt2_small",
                "--vary",
                "batch_size",
                "--steps",
                "2",
                "--max-probes",
                "6",
            ),
            "sweep",
            130,
        ),
        Step(
            "memory_model_check",
            ("benchmarks/memory_model_check.py", "{dir}"),
            "sweep",
            stdout="memory_model_check.md",
            keep={"memory_model_check.md": "memory_model_check.md"},
        ),
        Step(
            "analyze",
            ("-m", "lmprof", "analyze", "--results", "results.csv", "--out", "analysis"),
            "sweep",
        ),
    ),
)

CURVES = Suite(
    "curves",
    "loss curves of each optimisation against the fp32 vanilla reference and a second seed",
    "gpu_session4.sh and the sweep of gpu_session5b.sh curves, then curves_check.py",
    (
        Step(
            "sweep",
            ("-m", "lmprof", "sweep", "{root}/benchmarks/h200_curves.yaml"),
            "curves",
            300,
        ),
        Step(
            "curves_check",
            ("benchmarks/curves_check.py", "{dir}"),
            "curves",
            stdout="curves_check.md",
            keep={"curves_check.md": "curves_check.md"},
        ),
        Step(
            "analyze",
            ("-m", "lmprof", "analyze", "--results", "results.csv", "--out", "analysis"),
            "curves",
        ),
    ),
)

DISTRIBUTED = Suite(
    "distributed",
    "FSDP2 on one GPU against no wrapper, and checkpoint -> SIGKILL -> resume, bitwise",
    "the distributed_check.py call of gpu_session3.sh (and its resume part)",
    (
        Step(
            "throughput",
            (
                "benchmarks/distributed_check.py",
                "--out",
                "{dir}",
                "--only",
                "throughput",
                "--steps",
                "25",
            ),
            "distributed_throughput",  # each part rewrites distributed_check.md: own folders
            100,
            keep={"distributed_check.md": "distributed_throughput.md"},
        ),
        Step(
            "resume",
            ("benchmarks/distributed_check.py", "--out", "{dir}", "--only", "resume"),
            "distributed_resume",
            keep={"distributed_check.md": "resume_check.md"},
        ),
    ),
)

ENERGY = Suite(
    "energy",
    "joules per token, power, clocks and the roofline of the compiled step (energy_check.py)",
    "none (energy_check.py was run by hand)",
    (
        Step(
            "energy_check",
            ("benchmarks/energy_check.py", "--out", "{dir}", "--steps", "150"),
            "energy",
            keep={
                "energy_check.md": "energy_check.md",
                "results/tables/cudnn_compiled_profiled_roofline.md": "roofline.md",
            },
        ),
    ),
)

# FA4 against cuDNN and FlashAttention across T (and the compiled model with fa4): its
# crossover length is what lmprof.attention_kernels.FA4_MIN_SEQ_LEN should hold. The first FA4
# calls JIT-compile its CuTe kernels, and the model part compiles four models.
ATTENTION = Suite(
    "attention",
    "where FlashAttention-4 overtakes cuDNN by sequence length; the compiled model with fa4",
    "none (new)",
    (
        Step(
            "crossover",
            ("benchmarks/attention_crossover.py", "--out", "{dir}"),
            "attention",
            570,
            keep={"attention_crossover.md": "attention_crossover.md"},
        ),
    ),
)

# Comparisons with their noise (3 seeds each) and speed at equal quality, on real text with
# named splits: WikiText-2's validation file trains, its test file validates. The files are not
# in the repository: copy them to data/wikitext-2/ (an ignored folder) first.
WIKITEXT = "{root}/data/wikitext-2"
QUALITY = Suite(
    "quality",
    "GPT-2 small on WikiText-2: 3 seeds of a baseline and two optimisations, intervals, "
    "speed to a target eval loss",
    "none (new)",
    (
        Step(
            "sweep",
            (
                "-m",
                "lmprof",
                "sweep",
                "{root}/benchmarks/h200_quality.yaml",
                f"data.path={WIKITEXT}/valid.txt",
                f"data.val_path={WIKITEXT}/test.txt",
            ),
            "quality",
            540,
        ),
        Step(
            "analyze",
            ("-m", "lmprof", "analyze", "--results", "results.csv", "--out", "analysis"),
            "quality",
            keep={
                "analysis/tables/time_to_target_loss.md": "time_to_target_loss.md",
                "analysis/report.html": "report.html",
            },
        ),
    ),
)

# nanoGPT's shakespeare-char recipe by nanoGPT's own train.py (ext/nanoGPT, an ignored folder)
# and by lmprof on the same split: best validation loss per seed, and each whole process's time
# (the first seed of each alone, the rest sharing the GPU). Stops what runs at --deadline so the
# step fits one lease.
NANOGPT = Suite(
    "nanogpt",
    "nanoGPT's shakespeare-char recipe, nanoGPT train.py against lmprof: 3 seeds' best val "
    "loss, whole-run time",
    "none (new)",
    (
        Step(
            "recipe",
            ("benchmarks/nanogpt_recipe.py", "--out", "{dir}", "--deadline", "480"),
            "nanogpt",
            570,
            keep={"nanogpt_recipe.md": "nanogpt_recipe.md"},
        ),
        # The recipe's step is launch-bound on an H100 (5.5 ms of kernels in a 6.3 ms step) and
        # its compile is a fifth of the run: the whole run again, seed 0 alone, with lmprof
        # replaying CUDA graphs and compiling its six blocks as one region.
        Step(
            "recipe_fast",
            (
                "benchmarks/nanogpt_recipe.py",
                "--out",
                "{dir}",
                "--seeds",
                "0",
                "--deadline",
                "280",
                "--lmprof-set",
                "system.compile_mode=reduce-overhead",
                "system.compile_scope=region",
            ),
            "nanogpt_fast",
            300,
            keep={"nanogpt_recipe.md": "nanogpt_recipe_fast.md"},
        ),
    ),
)

_ORDER = (
    OPS,
    STEP,
    MEMORY,
    PROFILING,
    E2E,
    SWEEP,
    CURVES,
    DISTRIBUTED,
    ENERGY,
    ATTENTION,
    QUALITY,
    NANOGPT,
)
ALL = Suite(
    "all",
    "every suite above, in this order (longer than one 10-minute lease: use --only)",
    "every gpu_session*.sh and gpu_next.sh",
    # Named suite.step: the suites share step names (sweep, analyze).
    tuple(replace(st, name=f"{su.name}.{st.name}") for su in _ORDER for st in su.steps),
)
SUITES: dict[str, Suite] = {s.name: s for s in (*_ORDER, ALL)}
