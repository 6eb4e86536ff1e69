"""What optuna-dashboard shows of a study beyond Optuna's own data, and serving it.

`publish` writes the study's and its drawn trials' notes (`notes`) and uploads their fit figures
(`figure`) at the end of every run; `serve` runs optuna-dashboard on loopback for a storage.
"""
