"""End to end: specs into a temporary SQLite study, continuing, and the reference path."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from kit import TINY
from sweeps.study import spec as specs
from sweeps.cli import main
from sweeps.study.runner import Options, model_seed, run
from sweeps.config import Config




@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return specs.load(str(p))


def _study(url, name):
    return optuna.load_study(study_name=name, storage=url)


def test_quick_end_to_end_and_continue(sqlite_url, capsys):
    assert main(["run", "quick", "--storage", sqlite_url, "--trials", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6/6 trials finished" in out and "best median test MSE" in out
    study = _study(sqlite_url, "quick")
    first = {t.number: (t.params, t.value, t.user_attrs) for t in study.trials}
    assert len(first) >= 6
    t = next(t for t in study.trials if t.state.name == "COMPLETE")
    seeds = t.user_attrs["seeds"]
    assert len(seeds["test_mse"]) == 4 and len(seeds["seed"]) == 4
    mses = sorted(math.inf if m is None else m for m in seeds["test_mse"])  # None: a diverged seed
    assert t.value == pytest.approx((mses[1] + mses[2]) / 2)
    assert t.user_attrs["success_rate"] == sum(m < 1e-3 for m in mses) / 4
    assert t.user_attrs["n_params"] == Config(**t.user_attrs["config"]).n_params()
    assert {k: t.user_attrs["config"][k] for k in t.params} == t.params
    run_info = t.user_attrs["run"]
    assert run_info["device"] == "cpu" and run_info["torch"] and run_info["optuna"] == optuna.__version__
    assert run_info["spec"] == "quick" and len(run_info["spec_hash"]) == 16 and run_info["wall_time_s"] > 0
    assert len(t.user_attrs["fit"]["params"]) == 4

    # Again with the same budget: nothing new. With a bigger one: only the difference, nothing lost.
    assert main(["run", "quick", "--storage", sqlite_url, "--trials", "6", "--no-progress"]) == 0
    assert len(_study(sqlite_url, "quick").trials) == len(first)
    assert main(["run", "quick", "--storage", sqlite_url, "--trials", "9", "--no-progress"]) == 0
    again = _study(sqlite_url, "quick")
    done = [t for t in again.trials if t.state.name == "COMPLETE" or t.user_attrs.get("fail_reason") == "diverged"]
    assert len(done) == 9
    for t in again.trials:
        if t.number in first:
            assert (t.params, t.value, t.user_attrs) == first[t.number]


def test_batch_size_one_is_the_same_numbers(tmp_path, tiny):
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    run(tiny, Options(storage=a, batch_size=64, progress=False))
    run(tiny, Options(storage=b, batch_size=1, progress=False))
    ta, tb = _study(a, "tiny").trials, _study(b, "tiny").trials
    # The sampler's first draws are random and seeded, so both paths see the same configurations.
    assert [t.params for t in ta] == [t.params for t in tb]
    for x, y in zip(ta, tb):
        assert x.user_attrs["seeds"]["seed"] == y.user_attrs["seeds"]["seed"]
        for m, n in zip(x.user_attrs["seeds"]["test_mse"], y.user_attrs["seeds"]["test_mse"]):
            assert m == pytest.approx(n, rel=1e-9)


def test_model_seed_depends_on_trial_and_index_only():
    assert model_seed(0, 3, 1) == model_seed(0, 3, 1)
    assert len({model_seed(0, t, s) for t in range(20) for s in range(8)}) == 160
    assert model_seed(1, 3, 1) != model_seed(0, 3, 1)


def test_changed_space_under_an_existing_study_is_refused(tmp_path, tiny, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    run(tiny, Options(storage=url, progress=False, trials=2))
    before = [(t.number, t.state, t.value) for t in _study(url, "tiny").trials]
    changed = tmp_path / "tiny.toml"
    changed.write_text(TINY.replace("high = 8", "high = 16"))
    assert main(["run", str(changed), "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "different search space" in err and "--study" in err and len(err.splitlines()) == 1
    assert [(t.number, t.state, t.value) for t in _study(url, "tiny").trials] == before
    # The offered fix works.
    assert main(["run", str(changed), "--storage", url, "--study", "tiny-wide", "--trials", "1", "--no-progress"]) == 0


def test_grid_spec_runs_each_cell_once(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text(TINY.replace('trials = 6', 'trials = 100\nsampler = "grid"').replace(
        "[space.hidden]\nlow = 1\nhigh = 8", "[space.hidden]\nchoices = [1, 3]").replace(
        "log = true", "log = true\ngrid = [1e-3, 1e-2]"))
    url = f"sqlite:///{tmp_path / 'g.db'}"
    s = specs.load(str(p))
    summary = run(s, Options(storage=url, progress=False, batch_size=9))
    assert summary.budget == 16 == summary.finished
    cells = [tuple(sorted(t.params.items())) for t in _study(url, "tiny").trials]
    assert len(cells) == len(set(cells)) == 16
    assert run(s, Options(storage=url, progress=False)).trials_run == 0


def test_all_seeds_diverging_is_a_failed_trial_with_a_reason(tmp_path):
    p = tmp_path / "d.toml"
    p.write_text(TINY.replace("low = 1e-4\nhigh = 1e-2", "low = 50.0\nhigh = 100.0").replace(
        '[space.optimizer]\nchoices = ["sgd", "adam"]', '[space.optimizer]\nchoices = ["sgd"]'))
    url = f"sqlite:///{tmp_path / 'd.db'}"
    summary = run(specs.load(str(p)), Options(storage=url, progress=False, trials=2))
    trials = _study(url, "tiny").trials
    assert summary.finished == 2 and len(trials) == 2
    for t in trials:
        assert t.state.name == "FAIL" and t.user_attrs["fail_reason"] == "diverged"
        assert t.user_attrs["diverged"] == 3 and t.user_attrs["seeds"]["test_mse"] == [None, None, None]


def test_optuna_cli_reads_the_study(sqlite_url):
    assert main(["run", "quick", "--storage", sqlite_url, "--trials", "2", "--no-progress"]) == 0
    optuna_cli = shutil.which("optuna", path=str(Path(sys.executable).parent))
    proc = subprocess.run([optuna_cli, "trials", "--study-name", "quick", "--storage", sqlite_url, "-f", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) >= 2


def test_list_and_show(sqlite_url, capsys):
    assert main(["run", "quick", "--storage", sqlite_url, "--trials", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["list", "--storage", sqlite_url]) == 0
    assert "quick" in capsys.readouterr().out
    assert main(["show", "quick", "--storage", sqlite_url, "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "median MSE" in out and "r50" in out
    assert main(["show", "nope", "--storage", sqlite_url]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_storage_that_is_not_a_database(tmp_path, capsys):
    bad = tmp_path / "notes.db"
    bad.write_text("hello, not sqlite\n" * 10)
    assert main(["run", "quick", "--storage", f"sqlite:///{bad}", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not a SQLite database" in err and len(err.strip().splitlines()) == 1
    assert bad.read_text().startswith("hello")


def test_a_trial_whose_seeds_mostly_diverged_is_complete_at_inf_and_the_search_goes_on(tmp_path, tiny, monkeypatch):
    """2 of 3 seeds diverged: the median is +inf, the trial COMPLETE (a real result: it counts);
    TPE keeps asking with +inf values among the finished trials (they rank last)."""
    import dataclasses

    from sweeps.study import runner

    real = runner.fit

    def most_diverge(jobs, **kwargs):
        out = real(jobs, **kwargs)
        return [dataclasses.replace(r, test_mse=math.inf, train_mse=math.inf, diverged_at=1, params=None)
                if i % 3 else r for i, r in enumerate(out)]

    monkeypatch.setattr(runner, "fit", most_diverge)
    url = f"sqlite:///{tmp_path / 'inf.db'}"
    summary = run(tiny, Options(storage=url, progress=False, trials=30, batch_size=3))
    trials = _study(url, "tiny").trials
    assert summary.finished == 30 == len(trials)
    for t in trials:  # the seed left alone may diverge by itself: then all three did
        if t.state.name == "COMPLETE":
            assert t.value == math.inf and t.user_attrs["diverged"] == 2, t.number
        else:
            assert t.user_attrs["fail_reason"] == "diverged" and t.user_attrs["diverged"] == 3, t.number
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 20
    assert summary.best_value == math.inf
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 30  # TPE past its startup, still asking
