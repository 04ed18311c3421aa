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
