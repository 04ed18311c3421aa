"""Config loading: the schema, the seed's aliases, overrides, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmprof.cli import main
from lmprof.columns import config_row
from lmprof.config import build_config, load_config
from lmprof.errors import ConfigError, UserError

SEED = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "config.yaml"


def test_defaults_validate_and_name_the_run():
    cfg = build_config()
    assert cfg.logging.run_name.startswith("L4_d256_T256_B16_fp32_sdpa")
    assert len(cfg.hash()) == 16


def test_seed_flat_names_map_to_the_schema():
    cfg = build_config(
        {
            "model_type": "vanilla_transformer",
            "model_config": {
                "d_model": 512,
                "nhead": 8,
                "num_layers": 6,
                "dim_feedforward": 2048,
                "dropout": 0.2,
            },
            "learning_rate": "3e-4",
            "lr_scheduler": "linear",
            "num_warmup_steps": 10,
            "max_steps": 100,
            "logging_steps": 5,
            "seed": 7,
            "max_grad_norm": 0.5,
            "batch_size": 4,
            "sequence_length": 128,
            "fp16": True,
            "gradient_checkpointing": True,
            "use_flash_attention": True,
            "tokenizer_name": "gpt2",
            "dataset_name": "wikitext",
            "dataset_config": "wikitext-2-raw-v1",
            "debug_flash": True,
            "num_gpus": 2,
            "run_name": "seedrun",
            "tag": "opts",
        }
    )
    m, d, t, s, lg = cfg.model, cfg.data, cfg.training, cfg.system, cfg.logging
    assert (m.d_model, m.n_heads, m.n_layers, m.d_ff, m.dropout) == (512, 8, 6, 2048, 0.2)
    assert (m.norm, m.pos_encoding, m.activation) == ("post", "sinusoidal", "relu")
    assert m.attention == "flash"  # use_flash_attention came after model_type
    assert t.lr == pytest.approx(3e-4) and t.schedule == "linear" and t.warmup_steps == 10
    assert (t.max_steps, t.seed, t.max_grad_norm, t.batch_size) == (100, 7, 0.5, 4)
    assert (d.source, d.hf_dataset, d.hf_config, d.tokenizer) == (
        "hf",
        "wikitext",
        "wikitext-2-raw-v1",
        "gpt2",
    )
    assert (s.precision, s.gradient_checkpointing, s.num_gpus) == ("fp16", "full", 2)
    assert (lg.logging_steps, lg.debug_flash, lg.run_name, lg.tag) == (5, True, "seedrun", "opts")


@pytest.mark.skipif(not SEED.exists(), reason="the seed's sweep file is not beside the repo")
def test_seed_base_config_loads_unchanged():
    raw = yaml.safe_load(SEED.read_text())
    cfg = build_config(raw["base_config"])
    assert cfg.training.lr == pytest.approx(3e-4)
    assert cfg.training.max_steps == 8000 and cfg.training.warmup_steps == 500
    assert cfg.model.attention == "sdpa_mask" and cfg.system.precision == "fp16"


def test_overrides_dotted_leaf_and_alias():
    cfg = build_config(
        overrides=[
            "model.d_model=64",
            "n_heads=2",
            "fp16=false",
            "precision=bf16",
            "training.lr=1e-3",
        ]
    )
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.system.precision) == (64, 2, "bf16")
    assert cfg.training.lr == pytest.approx(1e-3)


def test_hash_ignores_where_outputs_go_but_not_what_is_computed():
    a = build_config(overrides=["output_dir=/tmp/a"])
    b = build_config(overrides=["output_dir=/tmp/b"])
    c = build_config(overrides=["batch_size=8"])
    assert a.hash() == b.hash() != c.hash()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("d_modle=64", "did you mean 'd_model'"),
        ("batch_size=abc", "expected an integer"),
        ("model.n_heads=5", "must divide model.d_model=256"),
        ("batch_size=0", "must be positive"),
        ("precision=fp8", "allowed: fp32, tf32, fp16, bf16"),
        ("attention=flashy", "allowed: vanilla, sdpa_mask, sdpa, flash"),
        ("compile_mode=fast", "allowed: default, reduce-overhead, max-autotune"),
        ("run_name=../evil", "plain file name"),
        ("dropout=1.5", "[0, 1)"),
        ("compile=maybe", "expected true or false"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(override, fragment):
    with pytest.raises(ConfigError) as info:
        build_config(overrides=[override])
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg
    assert override.split("=")[1] in msg


def test_the_region_scope_is_refused_with_fsdp_in_one_line():
    """FSDP's hooks wrap each block's call; a nested compile region around that call is refused
    before the run starts, naming the scopes that work."""
    with pytest.raises(ConfigError) as info:
        build_config(overrides=["compile=true", "compile_scope=region", "parallelism=fsdp"])
    msg = str(info.value)
    assert "system.compile_scope" in msg and "model or blocks" in msg and "\n" not in msg
    build_config(overrides=["compile=true", "compile_scope=region"])  # ddp (the default): fine


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["residual_stream=compute"], "precision fp32 computes in fp32"),
        (["residual_stream=compute", "precision=tf32"], "use residual_stream=fp32, or precision"),
        (["residual_stream=compute", "precision=bf16", "norm=post"], "needs model.norm=pre"),
    ],
)
def test_a_compute_dtype_stream_is_refused_where_it_cannot_be(overrides, fragment):
    """A compute-dtype residual stream needs an autocast dtype, and a pre-norm block (a
    post-norm block's norms write the stream in autocast's fp32)."""
    with pytest.raises(ConfigError) as info:
        build_config(overrides=overrides)
    msg = str(info.value)
    assert "system.residual_stream" in msg and fragment in msg and "\n" not in msg


def test_a_compute_dtype_stream_is_named_hashed_and_a_column():
    base = build_config(overrides=["precision=bf16"])
    low = build_config(overrides=["precision=bf16", "residual_stream=compute"])
    assert low.logging.run_name == base.logging.run_name + "_streamcompute"
    assert low.hash() != base.hash()
    # (At the default it stays out of the hash: test_llama's pinned hashes say so.)
    assert config_row(low)["residual_stream"] == "compute"
    assert config_row(base)["residual_stream"] == "fp32"
    # FSDP's mixed precision casts the parameters: its stream is the compute dtype, and says so.
    fsdp = build_config(overrides=["precision=bf16", "parallelism=fsdp"])
    assert config_row(fsdp)["residual_stream"] == "compute"
    fp32_fsdp = build_config(overrides=["parallelism=fsdp"])
    assert config_row(fp32_fsdp)["residual_stream"] == "fp32"


def test_bad_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base_config: {}\nexperiments: []\n")
    with pytest.raises(UserError, match="sweep file"):
        load_config(sweep)


def test_cli_prints_one_line_and_exits_2(capsys):
    assert main(["run", "model.n_heads=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmprof: error: model.n_heads=5")


def test_fp16_on_a_cpu_is_refused_before_work(capsys, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "fp16=true"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.parametrize(
    "override",
    ["lr=nan", "lr=inf", "lr=1e400", "weight_decay=nan", "energy.interval_ms=inf", "beta2=1"],
)
def test_non_finite_or_out_of_range_floats_are_refused(override):
    with pytest.raises(ConfigError) as info:
        build_config(overrides=[override])
    assert override.split("=")[0] in str(info.value)


def test_integers_must_fit_what_they_are_passed_to():
    with pytest.raises(ConfigError, match="at most"):
        build_config(overrides=["batch_size=" + str(10**30)])
    with pytest.raises(ConfigError, match="training.seed"):
        build_config(overrides=["seed=" + str(2**40)])


def test_every_field_documents_itself_and_help_config_prints_it():
    from lmprof.config import DOTTED_KEYS, describe_keys, spec

    text = describe_keys()
    for dotted in DOTTED_KEYS:
        s = spec(dotted)
        assert s.help, dotted
        assert dotted in text and s.help in text
        if s.choices:
            assert ", ".join(s.choices) in text
    # The rules are the validation's: a choice the spec lists is accepted, others refused.
    assert spec("system.precision").choices and "bf16" in spec("system.precision").choices
    with pytest.raises(ConfigError, match="allowed: " + ", ".join(spec("data.batching").choices)):
        build_config(overrides=["batching=zigzag"])


def test_the_config_loads_without_torch_or_any_pipeline_its_components_belong_to():
    # Each component's section lives beside its code (data/config.py, train/config.py, ...);
    # `lmprof.config` imports those modules alone, so `--help-config` and a sweep's planning
    # stay fast, and the pipelines (which import lmprof.config) import no cycle.
    import subprocess
    import sys

    code = (
        "import sys, lmprof.config\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')"
        " or m in ('lmprof.data.datamodule', 'lmprof.train.run', 'lmprof.train.loop',"
        " 'lmprof.profiling.energy')]\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # The pipelines still import with the config first, and their packages' names resolve.
    from lmprof.data import build_data
    from lmprof.data.datamodule import build_data as built_here
    from lmprof.train.run import run

    assert build_data is built_here and callable(run)


def test_model_args_are_the_model_section_plus_what_the_run_adds():
    import dataclasses

    from lmprof.config import ModelConfig
    from lmprof.model_args import ModelArgs

    cfg = build_config(overrides=["d_model=96", "n_heads=3", "bias=false", "sequence_length=48"])
    args = ModelArgs.from_config(cfg, vocab_size=300)
    for f in dataclasses.fields(ModelConfig):
        expected = cfg.max_seq_len if f.name == "max_seq_len" else getattr(cfg.model, f.name)
        assert getattr(args, f.name) == expected, f.name
    assert args.vocab_size == 300 and args.padded_vocab_size % cfg.model.vocab_multiple == 0
    assert args.max_seq_len == 48


def test_a_warmup_as_long_as_the_run_is_one_warning_line_not_an_error(tmp_path, capsys):
    from lmprof.cli import main
    from lmprof.config import build_config, warmup_warning

    assert warmup_warning(build_config({"max_steps": 50, "warmup_steps": 500}))
    assert warmup_warning(build_config({"max_steps": 50, "warmup_steps": 10})) is None
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"base_config:\n  num_warmup_steps: 500\n  logging.output_dir: {tmp_path}\n"
        "experiments:\n  - name: bs\n    tag: bs\n    params:\n      batch_size: [4, 8]\n"
        "    fixed_params:\n      max_steps: 50\n"
        "  - name: long\n    tag: long\n    params:\n      max_steps: [8000]\n"
    )
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bs_batchsize4" in err[0] and "long" not in err[0]


def test_where_results_are_tracked_is_not_part_of_the_experiments_identity():
    base = build_config().hash()
    tracked = build_config(
        overrides=["logging.wandb=true", "logging.mlflow=true", "logging.mlflow_uri=file:/x"]
    )
    assert tracked.hash() == base
