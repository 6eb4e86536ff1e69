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
    assert {"default", "quick", "factorial"} <= set(names)
    for name in names:
        s = specs.load(name)
        assert s.name == name
    default = specs.load("default")
    assert set(default.space) == {"hidden", "bias", "activation", "optimizer", "lr"}
    assert default.seeds == 8 and default.sampler == "tpe" and default.trials >= 200
    fac = specs.load("factorial")
    assert fac.sampler == "grid" and len(fac.grid_cells()) == fac.trials


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
