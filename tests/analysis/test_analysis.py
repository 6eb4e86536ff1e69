"""The report: built from hand-made studies whose answers are known, and from a real tiny sweep.

Trials are made with `optuna.trial.create_trial` carrying the attributes the runner writes (seeds,
fit, config, run), so every table cell below is computed by hand. The storage must come out of the
report byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from pg import pg_url  # noqa: F401  (fixture)

from analysis.cli import main
from analysis.stats import wilson

THRESHOLD = 1e-3
SPEC = {"name": "hand", "description": "hand-made trials with known answers", "sampler": "tpe", "seeds": 4,
        "success_threshold": THRESHOLD, "data_seed": 0,
        "fixed": {"data": "r50", "loss": "sum", "init": "torch", "scaling": "none", "steps": 100,
                  "precision": "float32"},
        "space": {"hidden": {"name": "hidden", "low": 1, "high": 8, "log": False},
                  "bias": {"name": "bias", "choices": ["none", "both"], "log": False},
                  "activation": {"name": "activation", "choices": ["relu", "sin"], "log": False},
                  "optimizer": {"name": "optimizer", "choices": ["sgd", "adam"], "log": False},
                  "lr": {"name": "lr", "low": 1e-4, "high": 1.0, "log": True}}}
DISTS = {"hidden": IntDistribution(1, 8), "bias": CategoricalDistribution(["none", "both"]),
         "activation": CategoricalDistribution(["relu", "sin"]),
         "optimizer": CategoricalDistribution(["sgd", "adam"]), "lr": FloatDistribution(1e-4, 1.0, log=True)}


def fitted(hidden: int, activation: str, bias: str) -> list[float]:
    """Own-layout parameters [w1 | b1 | w2 | b2]: with `sin`, exactly sin(x) (one unit, w1 = w2 = 1)."""
    w1 = [1.0] + [0.0] * (hidden - 1) if activation == "sin" else [0.1] * hidden
    w2 = [1.0] + [0.0] * (hidden - 1)
    b1 = [0.0] * hidden if bias == "none" else [0.05] * hidden
    return w1 + b1 + w2 + [0.0]


def make_trial(params: dict[str, Any], mses: list[float | None], *, state: TrialState | None = None,
               spec: dict[str, Any] = SPEC, extra: dict[str, Any] | None = None) -> optuna.trial.FrozenTrial:
    """A trial as the runner writes it: value = median over seeds (None = diverged = inf)."""
    config = {**spec["fixed"], **params}
    finite = sorted(m if m is not None else math.inf for m in mses)
    n = len(mses)
    value = (finite[(n - 1) // 2] + finite[n // 2]) / 2
    diverged = sum(m is None for m in mses)
    all_diverged = diverged == n
    h = config["hidden"]
    n_params = 2 * h + (h if config["bias"] in ("hidden", "both") else 0) + (1 if config["bias"] in ("output", "both") else 0)
    attrs: dict[str, Any] = {
        "success_rate": sum(m is not None and m < spec["success_threshold"] for m in mses) / n,
        "diverged": diverged, "n_params": n_params, "config": config,
        "seeds": {"seed": list(range(n)), "test_mse": mses, "train_mse": mses, "steps": [config["steps"]] * n,
                  "diverged_at": [5 if m is None else None for m in mses]},
        "fit": {"hidden": h, "activation": config["activation"], "shift": 0.0, "scale": 1.0,
                "params": [None if m is None else fitted(h, config["activation"], config["bias"]) for m in mses],
                "median_seed": None if all_diverged else 0,
                "curve": [] if all_diverged else [[0, 0.5], [10, 0.1], [100, mses[0] or 0.1]]},
        "run": {"device": "cpu", "torch": "2.13.0+cpu", "optuna": optuna.__version__, "python": "3.11", "host": "test",
                "spec": spec["name"], "spec_hash": "abc", "batch_size": 64, "started": "2026-01-01T00:00:00+00:00",
                "round_wall_s": 1.0, "round_trials": 4, "wall_time_s": 0.25},
    }
    if all_diverged:
        attrs["fail_reason"] = "diverged"
    attrs.update(extra or {})
    dists = {k: DISTS[k] for k in params if k in spec["space"]}
    searched = {k: v for k, v in params.items() if k in dists}
    if state is None:
        state = TrialState.FAIL if all_diverged else TrialState.COMPLETE
    return create_trial(state=state, params=searched, distributions=dists, user_attrs=attrs,
                        value=value if state == TrialState.COMPLETE else None)


def p(hidden: int, bias: str, activation: str, optimizer: str, lr: float) -> dict[str, Any]:
    return {"hidden": hidden, "bias": bias, "activation": activation, "optimizer": optimizer, "lr": lr}


FIT = [1e-6, 1e-6, 1e-6, 1e-6]
HALF = [1e-4, 2e-4, 0.5, 0.6]  # 2 of 4 seeds fit; median (2e-4 + 0.5) / 2
MISS = [0.4, 0.4, 0.4, 0.4]


def hand_trials() -> list[optuna.trial.FrozenTrial]:
    return [
        make_trial(p(4, "both", "sin", "adam", 0.9), [x * 1 for x in FIT]),           # 0: best, lr at the edge
        make_trial(p(2, "both", "sin", "sgd", 0.01), [x * 2 for x in FIT]),           # 1
        make_trial(p(8, "both", "sin", "adam", 0.001), [x * 3 for x in FIT]),         # 2
        make_trial(p(4, "none", "sin", "sgd", 0.01), HALF),                           # 3
        make_trial(p(3, "none", "sin", "adam", 0.01), HALF),                          # 4
        make_trial(p(5, "none", "sin", "sgd", 0.1), HALF),                            # 5
        make_trial(p(4, "both", "relu", "sgd", 0.01), MISS),                          # 6
        make_trial(p(6, "both", "relu", "adam", 0.01), MISS),                         # 7
        make_trial(p(4, "none", "relu", "sgd", 0.5), [None, None, None, None]),       # 8: all diverged: FAIL
        make_trial(p(4, "none", "relu", "sgd", 0.5), [0.3] * 4, state=TrialState.FAIL,
                   extra={"fail_reason": "interrupted"}),                             # 9: not finished
    ]


def make_study(url: str, name: str, trials: list[optuna.trial.FrozenTrial], spec: dict[str, Any] = SPEC) -> None:
    study = optuna.create_study(study_name=name, storage=url, direction="minimize")
    study.set_user_attr("spec", {**spec, "name": name})
    study.add_trials(trials)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def local_refs(html: str) -> list[str]:
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    return [r for r in refs if not r.startswith(("#", "http:", "https:", "mailto:"))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The hand-made study, a seed-replay study and an nnet CSV in one storage; every report built once."""
    root = tmp_path_factory.mktemp("report")
    db = root / "studies.db"
    url = f"sqlite:///{db}"
    make_study(url, "hand", hand_trials())
    replay_spec = {**SPEC, "seeds": 2, "space": {}}
    make_study(url, "seed-replay", [
        make_trial({"hidden": 4, "bias": "none", "activation": "relu", "optimizer": "sgd", "lr": 1e-5},
                   [0.45, 0.47], spec=replay_spec, extra={"program": "low-level"}),
        make_trial({"hidden": 4, "bias": "both", "activation": "tanh", "optimizer": "adam", "lr": 0.01},
                   [2e-4, 0.01], spec=replay_spec, extra={"program": "framework"}),
    ], spec=replay_spec)
    optuna.create_study(study_name="empty", storage=url)
    # As sweeps.nnet_reference records R's runs: one trial per data set, no fitted parameters, odd config keys.
    nnet = optuna.create_study(study_name="nnet-reference", storage=url)
    nnet.set_user_attr("spec", {"name": "nnet-reference", "description": "R's own nnet", "data_seed": 0,
                                "success_threshold": THRESHOLD})
    for data_name, mses in (("r50", [1e-5, 2e-3, 4e-6]), ("grid1000", [1e-7, float("inf"), 3e-6])):
        nnet.add_trial(create_trial(
            params={"data": data_name}, distributions={"data": CategoricalDistribution(["grid1000", "r50"])},
            value=sorted(mses)[1],
            user_attrs={"success_rate": sum(m < THRESHOLD for m in mses) / 3, "diverged": 0,
                        "config": {"hidden": 4, "bias": "both", "activation": "sigmoid", "optimizer": "bfgs",
                                   "data": data_name, "abstol": 1e-8},
                        "seeds": {"seed": [1, 2, 3], "test_mse": mses, "seconds": [0.1] * 3},
                        "run": {"engine": "R nnet", "wall_time_s": 0.3}}))
    (root / "nnet_reference.csv").write_text(
        "data,seed,test_mse,seconds\nr50,1,1e-5,0.2\nr50,2,2e-3,0.3\nr50,3,4e-6,0.1\ngrid1000,1,1e-7,1.5\n")
    before = digest(db)
    out = root / "reports"
    return {"url": url, "db": db, "before": before, "out": out, "rc": main(["report", "--storage", url, "--out", str(out)])}


def read_csv(path: Path):  # noqa: ANN201
    import pandas as pd

    return pd.read_csv(path)


def test_builds_every_study_with_an_index_and_leaves_the_storage_alone(built, capsys):
    assert built["rc"] == 0
    out = built["out"]
    for name in ("hand", "seed-replay", "nnet-reference"):
        assert (out / name / "index.html").is_file() and (out / name / "report.md").is_file()
    assert not (out / "empty").exists()  # nothing finished: skipped with a warning, listed in the index
    index = (out / "index.html").read_text()
    assert "hand/index.html" in index and "empty" in index
    assert digest(built["db"]) == built["before"]
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(built["url"])) == [
        "empty", "hand", "nnet-reference", "seed-replay"]
    nnet = read_csv(out / "nnet-reference" / "tables" / "by_data.csv").set_index("data")
    assert nnet.loc["r50", "successes"] == 2 and nnet.loc["grid1000", "successes"] == 2


def test_bias_activation_table_has_the_known_cells(built):
    t = read_csv(built["out"] / "hand" / "tables" / "by_bias_activation.csv")
    assert list(zip(t["bias"], t["activation"])) == [("none", "relu"), ("none", "sin"), ("both", "relu"), ("both", "sin")]
    cell = {(b, a): r for (b, a), (_, r) in zip(zip(t["bias"], t["activation"]), t.iterrows())}
    both_sin = cell[("both", "sin")]
    assert both_sin["trials"] == 3 and both_sin["fitting_trials"] == 3
    assert both_sin["successes"] == 12 and both_sin["seeds"] == 12 and both_sin["success_rate"] == 1.0
    assert both_sin["best_mse"] == pytest.approx(1e-6) and both_sin["median_mse"] == pytest.approx(2e-6)
    assert both_sin["best_trial"] == 0
    low, high = wilson(12, 12)
    assert both_sin["ci_low"] == pytest.approx(float(low)) and both_sin["ci_high"] == 1.0
    none_sin = cell[("none", "sin")]
    assert none_sin["success_rate"] == 0.5 and none_sin["fitting_trials"] == 0
    assert none_sin["best_mse"] == pytest.approx((2e-4 + 0.5) / 2)
    assert bool(cell[("both", "relu")]["thin"]) and cell[("both", "relu")]["trials"] == 2
    none_relu = cell[("none", "relu")]  # the all-diverged trial counts, with MSE inf; the interrupted one does not
    assert none_relu["trials"] == 1 and math.isinf(none_relu["best_mse"]) and none_relu["diverged_share"] == 1.0


def test_per_key_tables_top10_and_checks(built):
    tables = built["out"] / "hand" / "tables"
    bias = read_csv(tables / "by_bias.csv")
    assert list(bias["bias"]) == ["none", "both"] and list(bias["trials"]) == [4, 5]
    assert list(bias["successes"]) == [6, 12] and list(bias["seeds"]) == [16, 20]
    opt = read_csv(tables / "by_optimizer.csv")
    assert dict(zip(opt["optimizer"], opt["trials"])) == {"sgd": 5, "adam": 4}
    hidden = read_csv(tables / "by_hidden.csv")
    assert list(hidden["hidden size"]) == ["2", "3-4", "5-8"]  # bins (1, 2], (2, 4], (4, 8] by values seen
    assert list(hidden["trials"]) == [1, 5, 3]
    top = read_csv(tables / "top10.csv")
    assert len(top) == 9 and list(top["number"][:3]) == [0, 1, 2] and math.isinf(top["value"].iloc[-1])
    trials = read_csv(tables / "trials.csv")
    assert len(trials) == 10 and trials["finished"].sum() == 9
    checks = read_csv(tables / "checks.csv")
    found = dict(zip(checks["name"], zip(checks["status"], checks["finding"])))
    assert found["edge: lr"][0] == "warning" and "highest 5%" in found["edge: lr"][1]
    assert found["edge: hidden"][0] == "ok"
    assert found["diverged"][0] == "ok" and "1 of 9 finished trials" in found["diverged"][1]
    assert found["failed"][0] == "note" and "1 interrupted" in found["failed"][1]
    assert "both/relu (2)" in found["thin cells: bias × activation"][1]
    assert not (tables / "importances.csv").exists()  # 8 complete trials: too few


def test_summary_words(built):
    md = (built["out"] / "hand" / "report.md").read_text()
    assert "**Best configuration**: trial #0, hidden=4, bias=both, activation=sin, optimizer=adam, lr=0.9" in md
    assert "median test MSE 1.00e-06 over 4 seeds, 4/4 seeds fit (100%), 13 parameters" in md
    assert "`relu`: too few trials (" not in md  # relu has 3 finished trials: a cell of its own
    assert "`relu` least (0% [0, 24] of seeds over 3 trials" in md
    assert "`2`: too few trials (1)" in md  # the hidden-size bin holding only trial #1
    assert "Leaving out `sin` units: with too few trials (2)" in md  # relu with b1: trials #6, #7
    assert "Parameter importances (PED-ANOVA) not computed: too few trials (8 complete" in md
    assert "**Best without `sin` units**: trial #6" in md


def test_figures_are_pngs_of_sensible_size_and_html_links_exist(built):
    folder = built["out"] / "hand"
    pngs = sorted((folder / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"fits", "fits_without_sin", "success_heatmap", "mse_vs_hidden", "mse_by_optimizer", "mse_vs_lr",
            "history", "learning_curves"} <= names
    for png in pngs:
        w, h = png_size(png)
        assert 400 <= w <= 2500 and 250 <= h <= 2000, (png.name, w, h)
    for page in (folder / "index.html", built["out"] / "index.html", built["out"] / "seed-replay" / "index.html"):
        html = page.read_text()
        refs = local_refs(html)
        assert refs, page
        for ref in refs:
            assert (page.parent / ref).is_file(), f"{page} links to missing {ref}"
    html = (folder / "index.html").read_text()
    assert all(f'src="figures/{p.name}"' in html for p in pngs)  # no figure written but not shown
    md = (folder / "report.md").read_text()
    for ref in re.findall(r"\]\(([^)]+)\)", md):
        assert (folder / ref).is_file(), ref


def test_question_programs_and_nnet_tables(built):
    tables = built["out"] / "hand" / "tables"
    programs = read_csv(tables / "question_programs.csv")
    assert list(programs["program"]) == ["low-level", "framework"]
    assert programs["value"].tolist() == pytest.approx([0.46, (2e-4 + 0.01) / 2])
    assert programs["success_rate"].tolist() == [0.0, 0.5]
    nnet = read_csv(tables / "nnet_reference.csv").set_index("data")
    assert nnet.loc["r50", "runs"] == 3 and nnet.loc["r50", "fits"] == 2
    assert nnet.loc["r50", "median_mse"] == pytest.approx(1e-5) and nnet.loc["grid1000", "fits"] == 1
    html = (built["out"] / "hand" / "index.html").read_text()
    assert "The question&#x27;s programs side by side" in html or "The question's programs side by side" in html


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["report", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_missing_or_empty_study_is_a_one_line_error(built, capsys, tmp_path):
    url = built["url"]
    for study, expected in (("nope", "no study 'nope'"), ("empty", "study 'empty' is empty")):
        rc, out, err = _run(capsys, "--storage", url, "--study", study, "--out", str(tmp_path))
        assert rc == 2 and out == ""
        assert expected in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, "--storage", f"sqlite:///{tmp_path / 'absent.db'}", "--out", str(tmp_path))
    assert rc == 2 and "no such database" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "absent.db").exists()
    assert digest(built["db"]) == built["before"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def test_report_of_a_real_quick_sweep(backend, tmp_path, capsys, request):
    from sweeps.study import spec as specs
    from sweeps.study.runner import Options, run

    # PostgreSQL: a fresh database on the CI's server (the report opens it read-only there too)
    url = f"sqlite:///{tmp_path / 'q.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    run(specs.load("quick"), Options(storage=url, trials=4, progress=False))
    rc, out, err = _run(capsys, "--storage", url, "--study", "quick", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    folder = tmp_path / "r" / "quick"
    assert out.strip() == str(folder / "index.html")  # one study asked for: its path, no index page
    assert (tmp_path / "r" / "index.html").is_file()  # the index is rebuilt whenever a report is written
    top = read_csv(folder / "tables" / "top10.csv")
    assert 1 <= len(top) <= 4
    assert (folder / "figures" / "history.png").is_file()
    for png in (folder / "figures").glob("*.png"):
        png_size(png)
    for ref in local_refs((folder / "index.html").read_text()):
        assert (folder / ref).is_file()


def test_wilson_interval_and_markdown_tables():
    import pandas as pd

    from analysis.render import markdown_table

    low, high = wilson(5, 10)
    assert (float(low), float(high)) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson(0, 12)
    assert float(low) == 0.0 and float(high) == pytest.approx(3.8415 / 15.8415, abs=1e-4)
    assert all(math.isnan(float(v)) for v in wilson(0, 0))
    text = markdown_table(pd.DataFrame({"a|b": ["x|y", "two\nlines"], "n": ["1", "2"]}))
    assert text.splitlines() == ["| a\\|b | n |", "|---|---|", "| x\\|y | 1 |", "| two lines | 2 |"]
