"""Everything that talks to Optuna: specs, the search space, the trial record, storage, the runner.

`spec` loads TOML specs; `search` turns a spec's searched keys into Optuna suggestions; `record`
is the one schema of a trial's stored attributes; `storage` opens storages (`errors` words their
failures, `locks` serialises workers, `rdb` is the one home of Optuna's private API); `recovery`
keeps a shared study consistent across crashes; `runner` drives rounds of training through the
engine. Imports `sweeps.config` and `sweeps.engine`; nothing here imports the dashboard or the CLI.
"""
