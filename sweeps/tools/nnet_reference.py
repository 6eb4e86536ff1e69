"""R's own `nnet` on this project's data sets and seeds: the reference the report sets beside ours.

`python -m sweeps.tools.nnet_reference [--storage URL] [--out studies/nnet_reference.csv]` writes the
training points and the 1001-point test grid of each data set to temporary CSV files, so R fits
exactly our points, and runs `sweeps/tools/r/nnet_reference.R` through `Rscript`: the question's call
`nnet(x, y, size=4, maxit=10000, linout=TRUE, abstol=1e-8, reltol=1e-9)` once per seed, after
R's `set.seed(seed)` (nnet's own U(-0.7, 0.7) initial weights), timing each call. With
`--same-init` it starts R from this project's `nnet`-init weights of each seed instead, so both
implementations start from the same point. The CSV has one row per fit: data, seed, test_mse,
train_mse, seconds, cpu_seconds, iterations, convergence, value, wts. `--storage` also records the
table as study `nnet-reference` (one trial per data set, value = median test MSE), replaced on
each run.

Without `Rscript` (or without R's nnet package) it prints how to install them and exits 2;
nothing else in the project depends on R.
"""

from __future__ import annotations

import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_STORAGE, DEFAULTS, ENV_STORAGE, PRESETS, Config
from ..console import OneLineParser
from ..engine import data as datasets
from ..engine.model import init_one
from ..study.errors import StorageError
from ..study.storage import resolve_url

INSTALL_HINT = ("Rscript with R's nnet package is needed: on Debian/Ubuntu "
                "`apt-get install r-base-core r-cran-nnet`, elsewhere install R and run "
                "install.packages('nnet')")
DATASETS = ("r50", "uniform1000", "grid1000")
DEFAULT_OUT = "studies/nnet_reference.csv"
STUDY = "nnet-reference"
COLUMNS = ("data", "seed", "test_mse", "train_mse", "seconds", "cpu_seconds", "iterations", "convergence", "value",
           "wts")


class RMissing(RuntimeError):
    """Rscript or R's nnet package is not available."""


@dataclass(frozen=True)
class Call:
    """The nnet() arguments that matter here (the `nnet` preset's, by default)."""

    size: int = PRESETS["nnet"]["hidden"]
    maxit: int = PRESETS["nnet"]["steps"]
    abstol: float = PRESETS["nnet"]["abstol"]
    reltol: float = PRESETS["nnet"]["reltol"]


def rscript() -> str:
    """Path of Rscript; RMissing if there is none."""
    path = shutil.which("Rscript")
    if path is None:
        raise RMissing(INSTALL_HINT)
    return path


def nnet_order(params: torch.Tensor, hidden: int) -> list[float]:
    """Own-layout parameters [w1|b1|w2|b2] in nnet's weight order.

    nnet stores weights by destination unit, the bias unit first: (b1_h, w1_h) for each hidden
    unit h, then (b2, w2_1, …, w2_H) for the output.
    """
    p = params.tolist()
    w1, b1, w2, b2 = p[:hidden], p[hidden:2 * hidden], p[2 * hidden:3 * hidden], p[3 * hidden]
    out: list[float] = []
    for h in range(hidden):
        out += [b1[h], w1[h]]
    return out + [b2] + w2


def same_init_weights(seed: int, call: Call) -> list[float]:
    """This project's initial weights of the `nnet` preset for `seed`, in nnet's order."""
    values = {**DEFAULTS, **PRESETS["nnet"], "hidden": call.size}
    return nnet_order(init_one(Config(**values), seed), call.size)


def _write_xy(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y"])
        w.writerows((repr(a), repr(b)) for a, b in zip(x.tolist(), y.tolist()))


def run(data_names: Sequence[str] = DATASETS, seeds: Sequence[int] = tuple(range(1, 17)), *,
        data_seed: int = 0, call: Call = Call(), same_init: bool = False, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Fit R's nnet once per (data set, seed); returns the rows of the reference table."""
    exe = rscript()
    script = resources.files("sweeps.tools") / "r" / "nnet_reference.R"
    with tempfile.TemporaryDirectory(prefix="nnet-reference-") as tmp, resources.as_file(script) as script_path:
        folder = Path(tmp)
        jobs = folder / "jobs.csv"
        with jobs.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["data", "train", "test", "seed", "size", "maxit", "abstol", "reltol", "wts"])
            for name in data_names:
                d = datasets.make(name, data_seed)
                train, test = folder / f"{name}.csv", folder / f"{name}-test.csv"
                _write_xy(train, d.x, d.y)
                _write_xy(test, d.x_test, d.y_test)
                for seed in seeds:
                    wts = " ".join(repr(v) for v in same_init_weights(seed, call)) if same_init else ""
                    w.writerow([name, train, test, seed, call.size, call.maxit, repr(call.abstol), repr(call.reltol), wts])
        out = folder / "out.csv"
        proc = subprocess.run([exe, "--vanilla", str(script_path), str(jobs), str(out)],
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode == 3:
            raise RMissing(INSTALL_HINT)
        if proc.returncode != 0:
            raise RuntimeError(f"Rscript failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        with out.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    return [_typed(r) for r in rows]


def _typed(row: dict[str, str]) -> dict[str, Any]:
    return {"data": row["data"], "seed": int(row["seed"]), "test_mse": float(row["test_mse"]),
            "train_mse": float(row["train_mse"]), "seconds": float(row["seconds"]),
            "cpu_seconds": float(row.get("cpu_seconds") or "nan"),
            "iterations": int(row["iterations"]), "convergence": int(row["convergence"]),
            "value": float(row["value"]), "wts": row["wts"]}


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the reference rows as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def store_study(rows: Sequence[dict[str, Any]], url: str, *, call: Call, data_seed: int, threshold: float = 1e-3,
                name: str = STUDY) -> None:
    """Record the table as an Optuna study: one trial per data set, value = median test MSE."""
    import optuna

    from ..study.record import SPEC, host, reference_attrs
    from ..study.storage import open_storage, quiet_optuna

    quiet_optuna()
    storage = open_storage(url)
    if name in [s.study_name for s in storage.get_all_studies()]:
        optuna.delete_study(study_name=name, storage=storage)  # a reference is recomputed whole
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    study.set_metric_names(["test_mse_median"])
    r_version = _r_version()
    study.set_user_attr(SPEC, {"name": name, "description": "R's own nnet on the same data sets (sweeps.nnet_reference)",
                                 "call": vars(call), "data_seed": data_seed, "success_threshold": threshold})
    names = sorted({r["data"] for r in rows})
    dist = optuna.distributions.CategoricalDistribution(names)
    for data_name in names:
        mine = [r for r in rows if r["data"] == data_name]
        mses = [r["test_mse"] for r in mine]
        config = {**DEFAULTS, **PRESETS["nnet"], "hidden": call.size, "steps": call.maxit, "abstol": call.abstol,
                  "reltol": call.reltol, "data": data_name}
        run = {"engine": "R nnet", "r": r_version, "host": host(), "wall_time_s": sum(r["seconds"] for r in mine)}
        study.add_trial(optuna.trial.create_trial(
            params={"data": data_name}, distributions={"data": dist}, value=statistics.median(mses),
            user_attrs=reference_attrs(config, mine, threshold=threshold, run=run,
                                       extra_columns=("seconds", "convergence"))))


def _r_version() -> str:
    proc = subprocess.run([rscript(), "--vanilla", "-e",
                           "cat(R.version.string, '| nnet', as.character(packageVersion('nnet')))"],
                          capture_output=True, text=True)
    return proc.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Run R's nnet on every data set and seed; returns the exit code."""
    p = OneLineParser(prog="python -m sweeps.tools.nnet_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"CSV to write (default {DEFAULT_OUT})")
    p.add_argument("--storage", help=f"where to record the table as study 'nnet-reference' "
                                     f"(default: ${ENV_STORAGE}, else {DEFAULT_STORAGE})")
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=DATASETS, help="data sets (default: all three)")
    p.add_argument("--seeds", type=int, default=16, help="seeds 1..N (default 16)")
    p.add_argument("--data-seed", type=int, default=0, help="the specs' data_seed (default 0)")
    p.add_argument("--same-init", action="store_true", help="start R from this project's nnet-init weights")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    call = Call()
    try:
        t0 = time.perf_counter()
        rows = run(args.data, range(1, args.seeds + 1), data_seed=args.data_seed, call=call, same_init=args.same_init)
    except RMissing as exc:
        print(f"nnet-reference: {exc}", file=sys.stderr)
        return 2
    path = write_csv(rows, args.out)
    args.storage = resolve_url(args.storage)
    if args.storage:
        try:
            store_study(rows, args.storage, call=call, data_seed=args.data_seed)
        except StorageError as exc:
            print(f"nnet-reference: wrote {path}, but {exc}", file=sys.stderr)
            return 2
    print(f"R nnet: {len(rows)} fits in {time.perf_counter() - t0:.1f} s -> {path}"
          + (f" and study '{STUDY}'" if args.storage else ""))
    for name in args.data:
        mses = [r["test_mse"] for r in rows if r["data"] == name]
        secs = [r["seconds"] for r in rows if r["data"] == name]
        print(f"  {name:12s} median test MSE {statistics.median(mses):.3g}, under 1e-3: {sum(m < 1e-3 for m in mses)}/{len(mses)}, "
              f"{statistics.mean(secs):.3f} s per fit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
