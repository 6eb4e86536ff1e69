"""Batched Optuna sweeps of tiny 1-H-1 networks fitting sin(x) on [0, 10].

`spec` loads sweep specs, `space` defines the configuration vocabulary, `data`/`model`/
`optimizers`/`train` form the engine (no Optuna inside), `runner` drives Optuna studies, `storage`
opens SQLite/PostgreSQL safely, `cli` is the command line.
"""
