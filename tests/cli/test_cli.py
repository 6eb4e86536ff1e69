"""The command line's conventions: --version, --json, --set, `sweeps report`, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from kit import ROOT, TINY
from sweeps import __version__
from sweeps.cli import main
from sweeps.study import spec as specs


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    spec = tmp / "tiny.toml"
    spec.write_text(TINY)
    url = f"sqlite:///{tmp / 's.db'}"
    assert main(["run", str(spec), "--storage", url, "--no-progress", "-q"]) == 0
    return {"tmp": tmp, "spec": spec, "url": url}


def test_version():
    out = subprocess.run([sys.executable, "-m", "sweeps", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"sweeps {__version__}"


def test_list_show_specs_as_json(swept, capsys):
    assert main(["list", "--storage", swept["url"], "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["study"] == "tiny" and row["trials"] >= 6 and row["sampler"] == "tpe"
    assert main(["show", "tiny", "--storage", swept["url"], "--json", "--top", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["top"]) == 3 and shown["fixed"]["data"] == "r50"
    values = [r["median_test_mse"] for r in shown["top"]]
    assert values == sorted(values)
    assert main(["specs", "--json"]) == 0
    names = {r["spec"] for r in json.loads(capsys.readouterr().out)}
    assert {"default", "ablation", "explore", "quick"} <= names


def test_show_prints_what_varies_and_one_line_of_the_rest(swept, capsys):
    assert main(["show", "tiny", "--storage", swept["url"]]) == 0
    out = capsys.readouterr().out.splitlines()
    same = next(line for line in out if line.startswith("same in all of these:"))
    assert "data=r50" in same and "steps=60" in same
    header = next(line for line in out if line.lstrip().startswith("#"))
    assert "data" not in header.split() and "steps" not in header.split()


def test_set_changes_a_setting_and_a_changed_space_needs_a_new_name(swept, capsys):
    spec = specs.load(str(swept["spec"]), ["steps=40", "study.seeds=2", "bias=both"])
    assert spec.fixed["steps"] == 40 and spec.seeds == 2 and "bias" not in spec.space and spec.fixed["bias"] == "both"
    assert main(["run", str(swept["spec"]), "--storage", swept["url"], "--no-progress", "--set", "steps=40"]) == 2
    assert "--study NEW_NAME" in capsys.readouterr().err
    assert main(["run", str(swept["spec"]), "--storage", swept["url"], "--no-progress", "-q", "--set", "steps=40",
                 "--set", "study.trials=2", "--study", "tiny-40"]) == 0
    trials = optuna.load_study(study_name="tiny-40", storage=swept["url"]).trials
    assert len(trials) == 2 and all(t.user_attrs["config"]["steps"] == 40 for t in trials)


@pytest.mark.parametrize("args, needle", [
    (["--set", "steps"], "expected KEY=VALUE"),
    (["--set", "widht=3"], "unknown key 'widht'"),
    (["--set", "steps=-5"], "fixed.steps"),
    (["--study", "my study"], "study name 'my study'"),
    (["--study", "a/b"], "study name 'a/b'"),
])
def test_bad_flags_are_one_line_errors(swept, capsys, args, needle):
    try:
        code = main(["run", str(swept["spec"]), "--storage", swept["url"], "--no-progress", *args])
    except SystemExit as exc:  # argparse's errors leave through SystemExit
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err


def test_sweeps_report_is_the_report(swept, capsys):
    out = swept["tmp"] / "reports"
    assert main(["report", "--storage", swept["url"], "--out", str(out), "--study", "tiny"]) == 0
    assert (out / "tiny" / "index.html").is_file() and str(out / "tiny" / "index.html") in capsys.readouterr().out
    assert main(["report", "--storage", swept["url"], "--study", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("line, expected", [
    ("sweeps ru", {"run"}),
    ("sweeps run de", {"default"}),
    ("sweeps run default --st", {"--storage", "--study"}),
    ("sweeps show --j", {"--json"}),
])
def test_shell_completion(tmp_path, line, expected):
    """What bash gets when it asks (argcomplete's protocol: the candidates written to a file)."""
    out = tmp_path / "candidates"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    proc = subprocess.run([sys.executable, "-m", "sweeps"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {c.strip() for c in out.read_text().split("\x0b")} == expected  # a lone candidate ends in a space


def test_a_best_trial_of_sin_units_is_called_the_control(swept, capsys):
    assert main(["run", str(swept["spec"]), "--storage", swept["url"], "--no-progress", "--set", "activation=sin",
                 "--set", "study.trials=2", "--study", "tiny-sin"]) == 0
    best = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("best median test MSE"))
    assert best.endswith("(sin units represent sin(x) exactly: a control, not an answer)")
    assert main(["run", str(swept["spec"]), "--storage", swept["url"], "--no-progress"]) == 0
    best = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("best median test MSE"))
    assert "control" not in best
