"""The one key=value rule of every command (lmprof.cli.words)."""

from lmprof.cli.words import split_words


def test_a_key_value_word_is_an_override_wherever_it_stands():
    w = split_words("d_model=128", ["n_heads=4"], ["seq_len", "batch_size=4"])
    assert w.config is None
    assert w.overrides == ["d_model=128", "n_heads=4", "batch_size=4"]
    assert w.tags == ["seq_len"]


def test_config_files_and_plain_tags_stay_put():
    w = split_words("configs/a=b.yaml", ["x=1"], None)
    assert (w.config, w.overrides, w.tags) == ("configs/a=b.yaml", ["x=1"], None)
    assert split_words(None, [], ["batch_size=4"]).tags is None


def test_estimate_tags_take_no_override(tmp_path, capsys):
    from lmprof.cli import main

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base_config:\n  d_model: 64\n  n_heads: 2\n  batch_size: 8\n"
        "experiments:\n  - name: seq\n    tag: seq\n    params:\n      sequence_length: [32]\n"
    )
    assert main(["estimate", str(sweep), "--tags", "seq", "batch_size=4", "--json"]) == 0
    assert '"batch_size": 4' in capsys.readouterr().out


def _sweep(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base_config:\n  d_model: 64\n  n_heads: 2\n  batch_size: 8\n  data.source: synthetic\n"
        f"  logging.output_dir: {tmp_path}\n"
        "experiments:\n  - name: seq\n    tag: seq\n    params:\n      sequence_length: [32]\n"
    )
    return str(sweep)


def test_every_command_reads_overrides_after_a_list_option(tmp_path):
    from lmprof.cli import parse

    sweep = _sweep(tmp_path)
    for argv in (
        ["sweep", sweep, "--tags", "seq", "batch_size=4"],
        ["estimate", sweep, "--tags", "seq", "batch_size=4"],
    ):
        args = parse(argv)
        assert (args.tags, args.overrides) == (["seq"], ["batch_size=4"])
    args = parse(["find-max", "--vary", "batch_size", "batch_size=4"])
    assert (args.vary, args.overrides) == (["batch_size"], ["batch_size=4"])


def test_sweep_applies_an_override_given_after_tags(tmp_path, capsys):
    from lmprof.cli import main
    from lmprof.sweep.plan import plan_sweep

    sweep = _sweep(tmp_path)
    assert main(["sweep", sweep, "--tags", "seq", "n_heads=3", "--dry-run"]) == 2
    assert "n_heads" in capsys.readouterr().err  # the override reached the runs (3 !| 64)
    (plan,) = plan_sweep(sweep, ["seq"], ["batch_size=4"], check_env=False)
    assert plan.cfg.training.batch_size == 4


def test_nanogpt_and_torchtitan_style_flags_are_overrides_in_every_command(tmp_path):
    from lmprof.cli import parse

    sweep = _sweep(tmp_path)
    for command in (["run"], ["estimate"], ["find-max", "--vary", "batch_size"], ["sweep", sweep]):
        args = parse(
            [*command, "--max_steps=10", "--training.lr", "0.01", "--max-grad-norm", "0.5"]
        )
        assert args.overrides == ["max_steps=10", "training.lr=0.01", "max_grad_norm=0.5"]
    args = parse(["run", "--compile", "--d_model", "128"])
    assert args.overrides == ["compile=true", "d_model=128"] and args.config is None
    # A command's own option wins over a config key of the same spelling.
    args = parse(["estimate", "--vocab-size", "300", "--vocab_size=512"])
    assert (args.vocab_size, args.overrides) == (300, ["vocab_size=512"])


def test_estimate_output_follows_flag_style_overrides(capsys):
    from lmprof.cli import main

    assert main(["estimate", "--training.batch_size", "4", "--sequence_length=64", "--json"]) == 0
    assert '"tokens_per_step": 256' in capsys.readouterr().out


def test_an_unknown_flag_is_one_line(capsys):
    from lmprof.cli import main

    assert main(["run", "--max-stepz=10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max_steps" in err


def test_run_experiments_takes_the_same_words(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "run_experiments", Path(__file__).resolve().parents[1] / "run_experiments.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = _sweep(tmp_path)
    assert module.main(["--config", sweep, "--tags", "seq", "--batch_size=4", "--dry-run"]) == 0
    assert module.main(["--config", sweep, "--tags", "seq", "--n_heads", "3", "--dry-run"]) == 2
    assert "n_heads" in capsys.readouterr().err
