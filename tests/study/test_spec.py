"""Spec loading: bundled specs are valid; every bad input is a one-line error naming file and key,
exit code 2, and no storage is created or touched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kit import ROOT
from sweeps.study import spec as specs
from sweeps.cli import main


GOOD = """
[study]
trials = 3
seeds = 2
[fixed]
data = "r50"
steps = 10
[space.hidden]
low = 1
high = 4
[space.lr]
low = 1e-3
high = 1e-1
log = true
"""


def test_bundled_specs_load():
    names = specs.bundled_specs()
    assert {"default", "ablation", "explore", "quick", "seed-replay"} <= set(names)
    for name in names:
        s = specs.load(name)
        assert s.name == name
    explore = specs.load("explore")
    assert set(explore.space) == {"hidden", "bias", "activation", "optimizer", "lr"}
    assert explore.seeds == 8 and explore.sampler == "tpe" and explore.trials >= 200


def test_the_default_is_the_designed_study_of_the_question():
    from sweeps.study.design import trials_planned

    default = specs.load("default")
    assert default.sampler == "design" and default.design.confirm_seeds >= 16
    cells = default.cells()
    crossed = {k: set(default.space[k].choices) for k in default.design.crossed}
    assert crossed["bias"] == {"none", "hidden", "output", "both"}
    assert crossed["optimizer"] == {"sgd", "momentum", "adam", "rmsprop", "bfgs", "lm"}
    assert {1, 2, 3, 4, 6, 8, 16} <= crossed["hidden"]
    assert {"relu", "tanh", "sigmoid", "gelu", "softplus"} <= crossed["activation"]
    grid = default.space["lr"].grid
    assert len(grid) >= 6 and min(grid) <= 1e-4 and max(grid) >= 1.0
    assert len(cells) == 4 * 6 * 6 * 7 and all(c.control == (c.settings["activation"] == "sin") for c in cells)
    second = [c for c in cells if c.settings["optimizer"] in ("bfgs", "lm")]
    assert second and all(c.lrs == () for c in second)  # no learning rate to tune or to show
    assert trials_planned(cells) == sum(len(c.lrs) for c in cells if c.tuned) + len(cells)
    assert default.fixed["data"] == "r50" and default.fixed["loss"] == "sum" and default.fixed["steps"] >= 10000
    ablation = specs.load("ablation")
    rows = ablation.cells()
    assert rows[0].ladder == "start" and rows[0].settings["activation"] == "relu" and rows[0].lrs == (1e-5,)
    assert {"start", "one change", "cumulative", "remove from nnet"} == {c.ladder for c in rows}
    assert all(len(c.label) > 3 for c in rows) and len({c.label for c in rows}) == len(rows)


DESIGN_BAD = [
    ("[design]\nbogus = 1\n", "design.bogus", "unknown key"),
    ("[design]\ncrossed = [\"hidden\"]\n", "design.crossed", "with `choices`"),
    ("[design]\n", "design", "either `crossed`"),
    ("[design]\ncrossed = [\"bias\"]\ntuned = \"steps\"\n", "design.tuned", "must be one of"),
    ("[design]\ncrossed = [\"bias\"]\ncontrol = { activation = [\"sin\"] }\n", "design.control.activation",
     "crossed key"),
    ("[[design.rows]]\nlabel = \"a\"\n[[design.rows]]\nlabel = \"a\"\n", "design.rows", "same label"),
    ("[[design.rows]]\nlabel = \"a\"\ntune = true\n", "design.rows[0].tune", "needs `tuned`"),
    ("[[design.rows]]\nlabel = \"a\"\nset = { widht = 3 }\n", "design.rows[0].set.widht", "unknown key"),
    ("[[design.rows]]\nlabel = \"a\"\nset = { preset = \"r\" }\n", "design.rows[0].set.preset", "unknown preset"),
    ("[[design.rows]]\nset = { bias = \"both\" }\n", "design.rows[0].label", "needs a label"),
]


@pytest.mark.parametrize("text, key, message", DESIGN_BAD)
def test_bad_designs_are_one_line_errors_naming_the_key(tmp_path, text, key, message):
    p = tmp_path / "d.toml"
    space = "" if "design.rows" in text else '[space.bias]\nchoices = ["none", "both"]\n'
    p.write_text('[study]\nsampler = "design"\n' + space + text)
    with pytest.raises(specs.SpecError) as err:
        specs.load(str(p))
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{p}: ") and f"{key}: " in line and message in line


def test_fixed_and_defaults_fill_every_key(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(GOOD)
    s = specs.load(str(p))
    assert s.name == "s" and s.fixed["data"] == "r50" and s.fixed["activation"] == "tanh"
    assert set(s.fixed) | set(s.space) == set(specs.CONFIG_KEYS)
    assert s.space["lr"].log and s.space["hidden"].low == 1


BAD = [
    ("[study]\nbogus = 1\n", "study.bogus", "unknown key"),
    ("[space.widht]\nlow = 1\nhigh = 2\n", "space.widht", "unknown key"),
    ("[study]\ntrials = \"ten\"\n", "study.trials", "must be int"),
    ("[study]\nseeds = 0\n", "study.seeds", "between 1 and 1024"),
    ("[space.activation]\nchoices = []\n", "space.activation.choices", "non-empty"),
    ("[space.activation]\nchoices = [\"relu\", \"swish\"]\n", "space.activation.choices", "'swish' is not one of"),
    ("[space.hidden]\nlow = 8\nhigh = 2\n", "space.hidden", "greater than high"),
    ("[space.lr]\nlow = 0.0\nhigh = 1.0\nlog = true\n", "space.lr.low", "above 0"),
    ("[space.lr]\nlow = 1e-3\n", "space.lr", "both `low` and `high`"),
    ("[fixed]\nsteps = 1.5\n", "fixed.steps", "must be int"),
    ("[fixed]\nloss = \"max\"\n", "fixed.loss", "not one of"),
    ("[study]\nsampler = \"cmaes\"\n", "study.sampler", "must be one of"),
    ("[space.hidden]\nlow = 1\nhigh = 4\n[fixed]\nhidden = 3\n", "fixed.hidden", "either searched or fixed"),
    ("[study]\nsampler = \"grid\"\n[space.lr]\nlow = 1e-3\nhigh = 1.0\n", "space.lr", "grid spec needs"),
    ("[study\n", "", "not valid TOML"),
]


@pytest.mark.parametrize("text,key,message", BAD)
def test_bad_spec_is_one_line_exit_2_and_touches_no_storage(tmp_path, capsys, text, key, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    db = tmp_path / "never.db"
    assert main(["run", str(p), "--storage", f"sqlite:///{db}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(p) in lines[0] and key in lines[0] and message in lines[0]
    assert not db.exists()


def test_bad_spec_exit_code_from_a_real_process(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(BAD[0][0])
    db = tmp_path / "studies.db"
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(p), "--storage", f"sqlite:///{db}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "study.bogus" in proc.stderr
    assert not db.exists()


def test_unknown_spec_name_and_missing_file():
    with pytest.raises(specs.SpecError, match="unknown spec 'nope'"):
        specs.load("nope")
    with pytest.raises(specs.SpecError, match="no such spec file"):
        specs.load("/nonexistent/x.toml")


def test_enqueue_must_set_every_searched_key(tmp_path):
    p = tmp_path / "e.toml"
    p.write_text(GOOD + "[[enqueue]]\nhidden = 2\n")
    with pytest.raises(specs.SpecError, match=r"enqueue\[0\]: must set every searched key; missing lr"):
        specs.load(str(p))
    p.write_text(GOOD + "[[enqueue]]\nhidden = 9\nlr = 0.01\n")
    with pytest.raises(specs.SpecError, match=r"enqueue\[0\].hidden: value 9 is outside"):
        specs.load(str(p))


def test_space_hash_ignores_budget_but_not_space(tmp_path):
    a = specs.parse({"study": {"trials": 5}, "space": {"hidden": {"low": 1, "high": 4}}}, path="a", default_name="a")
    b = specs.parse({"study": {"trials": 50}, "space": {"hidden": {"low": 1, "high": 4}}}, path="b", default_name="a")
    c = specs.parse({"study": {"trials": 5}, "space": {"hidden": {"low": 1, "high": 8}}}, path="c", default_name="a")
    assert a.space_hash() == b.space_hash() != c.space_hash()


def test_every_mistake_of_a_spec_is_named_in_one_line(tmp_path):
    p = tmp_path / "two.toml"
    p.write_text('[study]\nseeds = 0\nsampler = "grdi"\n[fixed]\nwidht = 3\nsteps = -1\n[space.lr]\nlow = 1\nhigh = 0\n'
                 '[space.hidden]\nlow = 1\nhigh = 4\n')
    with pytest.raises(specs.SpecError) as err:
        specs.load(str(p))
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{p}: 5 problems: ")
    for key in ("study.sampler: ", "study.seeds: ", "fixed.widht: ", "fixed.steps: ", "space.lr."):
        assert key in line
    assert "space.hidden" not in line  # the good parts are not blamed


def test_one_rule_for_study_names():
    from sweeps.study.spec import check_name

    assert check_name("default") and check_name("a_b-1.2")
    for bad in ("", "my study", "a/b", "-x", ".x", "x" * 101, "naïve\u200b"):
        assert not check_name(bad), bad
