"""The dashboard: the real optuna-dashboard server, a real headless browser, a sweep writing live.

A small `quick` study is swept into a temporary SQLite file once per module and published (note
and fit figures); `python -m sweeps dashboard` then serves it from a subprocess on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps.config import ENV_STORAGE
from sweeps.dashboard import publish as pub
from sweeps.dashboard import serve as dashboard
from sweeps.study import spec as specs
from sweeps.study import storage as st
from sweeps.study.runner import Options, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRIALS = 4
LIVE_SPEC = """
[study]
name = "live"
description = "a small sweep written while the dashboard reads"
trials = 8
seeds = 2

[fixed]
data = "r50"
steps = 150

[space.hidden]
low = 1
high = 8

[space.bias]
choices = ["none", "hidden", "output", "both"]

[space.lr]
low = 1e-3
high = 0.1
log = true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def start_cli(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m sweeps dashboard ARGS` with stdout and stderr going to `log`."""
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "sweeps", "dashboard", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dashboard exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if get(base + "/api/meta", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"dashboard not answering after {timeout} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Any]:
    """A finished 4-trial `quick` study in a fresh SQLite file, published."""
    folder = tmp_path_factory.mktemp("dash")
    url = f"sqlite:///{folder / 'studies.db'}"
    spec = specs.load("quick")
    run(spec, Options(storage=url, trials=TRIALS, progress=False), echo=lambda *a, **k: None)
    study = optuna.load_study(study_name=spec.name, storage=st.open_storage(url, create=False))
    pub.publish(study, spec, pub.artifact_dir_for(url))
    return {"url": url, "folder": folder, "spec": spec, "study": study}


@pytest.fixture(scope="module")
def server(made) -> Any:
    """The dashboard CLI serving the study on a free port (default host)."""
    port = free_port()
    log = made["folder"] / "dashboard.log"
    proc = start_cli(["--storage", made["url"], "--port", str(port)], log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield {"base": base, "port": port, "proc": proc, "log": log}
    finally:
        stop(proc)


def study_id(base: str, name: str) -> int:
    summaries = get_json(base + "/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in summaries if s["study_name"] == name]
    assert ids, [s["study_name"] for s in summaries]
    return ids[0]


# --- publish ---------------------------------------------------------------------------------

def test_publish_writes_note_figures_and_trial_notes(made):
    from optuna_dashboard import get_note

    study, spec = made["study"], made["spec"]
    best = pub.best_by_bias(study.get_trials())
    assert best, "the quick study should have a complete trial"
    metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(study)}
    note = get_note(study)
    assert spec.description in note and "Best trial per bias placement" in note
    for bias, trial in best.items():
        meta = metas[pub.figure_name(trial)]
        assert meta.mimetype == "image/png"
        assert (pub.artifact_dir_for(made["url"]) / meta.artifact_id).read_bytes().startswith(PNG_SIGNATURE)
        assert f"| {bias} | {trial.number} |" in note
        assert f"/artifacts/{study._study_id}/{meta.artifact_id}" in note
        assert meta.artifact_id in get_note(optuna.Trial(study, trial._trial_id))


def test_publish_again_reuses_figures_and_is_cheap(made):
    study = made["study"]
    before = sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(study))
    t0 = time.perf_counter()
    pub.publish(study, made["spec"], pub.artifact_dir_for(made["url"]))
    assert time.perf_counter() - t0 < 2.0
    assert sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(study)) == before


def test_best_by_bias_skips_failed_and_orders_placements():
    study = optuna.create_study()
    for bias, value in (("both", 0.5), ("none", 0.2), ("both", 0.1), ("hidden", None)):
        t = study.ask()
        t.set_user_attr("config", {"bias": bias})
        study.tell(t, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
    best = pub.best_by_bias(study.trials)
    assert list(best) == ["none", "both"] and best["both"].value == 0.1


# --- the server ------------------------------------------------------------------------------

def test_api_lists_the_study_with_its_trials_and_note(server, made):
    base = server["base"]
    sid = study_id(base, made["spec"].name)
    detail = get_json(f"{base}/api/studies/{sid}")
    assert len(detail["trials"]) == TRIALS
    assert "Best trial per bias placement" in detail["note"]["body"]
    assert any(a["key"] == "config" for a in detail["union_user_attrs"])


def test_fit_figures_are_listed_and_downloadable(server, made):
    base = server["base"]
    sid = study_id(base, made["spec"].name)
    detail = get_json(f"{base}/api/studies/{sid}")
    listed = {a["filename"]: a["artifact_id"] for a in detail["artifacts"]}
    best = pub.best_by_bias(made["study"].get_trials())
    by_number = {t["number"]: t for t in detail["trials"]}
    for trial in best.values():
        artifact_id = listed[pub.figure_name(trial)]
        path = f"/artifacts/{sid}/{artifact_id}"
        assert path in by_number[trial.number]["note"]["body"]  # the trial's page shows its fit
        status, headers, body = get(base + path)
        assert status == 200 and body.startswith(PNG_SIGNATURE)
        assert headers["Content-Type"] == "image/png"


def test_plot_endpoint_works(server, made):
    base = server["base"]
    assert get_json(base + "/api/meta")["plotlypy_is_available"] is True
    sid = study_id(base, made["spec"].name)
    fig = get_json(f"{base}/api/studies/{sid}/plot/slice")  # plotly's figure JSON
    assert fig["data"] and fig["data"][0]["type"] == "scatter", fig


def test_default_binding_is_loopback(server):
    out = server["log"].read_text()
    assert f"on http://127.0.0.1:{server['port']}/dashboard" in out and "warning" not in out
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        pytest.skip("no /proc/net/tcp to read the listening address from")
    listening = [line.split()[1] for line in tcp.read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == server["port"]]
    assert listening == [f"0100007F:{server['port']:04X}"]  # 127.0.0.1, not 0.0.0.0


def test_browser_renders_study_and_trial_fit(server, made):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    base = server["base"]
    home = chromium_dom(f"{base}/dashboard")
    assert made["spec"].name in home and "Optuna Dashboard" in home
    sid = study_id(base, made["spec"].name)
    trial = next(iter(pub.best_by_bias(made["study"].get_trials()).values()))
    page = chromium_dom(f"{base}/dashboard/studies/{sid}/trials?numbers={trial.number}")
    assert f"Trial {trial.number}" in page
    assert f'src="/artifacts/{sid}/' in page  # the trial note's fit figure


def chromium_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                            "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_sweep_writing_while_dashboard_reads(server, made, tmp_path):
    """A sweep, a publish and the dashboard's polling share one SQLite file without lock errors."""
    base = server["base"]
    statuses: list[int] = []
    done = threading.Event()

    def hammer() -> None:  # what an open dashboard page does with live update on, only faster
        while not done.wait(0.05):
            try:
                status, _, body = get(base + "/api/studies")
                statuses.append(status)
                for s in json.loads(body)["study_summaries"] if status == 200 else []:
                    statuses.append(get(f"{base}/api/studies/{s['study_id']}")[0])
            except OSError:
                statuses.append(-1)  # no answer at all

    spec = tmp_path / "live.toml"
    spec.write_text(LIVE_SPEC)
    reader = threading.Thread(target=hammer, daemon=True)
    reader.start()
    try:  # one trial a round: eight rounds of writes (asks, attributes, tells, heartbeats)
        sweep = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec), "--batch-size", "2",
                                  "--storage", made["url"], "--no-progress"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        pub.publish(made["study"], made["spec"], pub.artifact_dir_for(made["url"]))  # a third writer
        out, err = sweep.communicate(timeout=300)
    finally:
        done.set()
        reader.join(timeout=60)
    assert sweep.returncode == 0, err
    assert "database is locked" not in out + err
    assert len(statuses) >= 5 and set(statuses) == {200}, statuses[-20:]
    assert len(get_json(f"{base}/api/studies/{study_id(base, 'live')}")["trials"]) == 8


# --- safety: host and password ---------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert dashboard.is_loopback(host) is loopback


def test_non_loopback_host_warns(made, tmp_path):
    # 192.0.2.1 is TEST-NET-1: never a local address, so the bind fails and nothing is exposed.
    log = tmp_path / "out.log"
    proc = start_cli(["--storage", made["url"], "--host", "192.0.2.1", "--port", str(free_port())], log)
    try:
        proc.wait(timeout=60)
    finally:
        stop(proc)
    lines = [line for line in log.read_text().splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "no authentication" in lines[0]
    assert proc.returncode == 1 and "error: cannot listen on 192.0.2.1" in log.read_text()


class _SilentServer:
    """Accepts TCP connections and never answers, so a PostgreSQL client waits until released."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.release = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)
            self.accepted.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()

    def close(self) -> None:
        self.release.set()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("via", ["argv", "env"])
def test_password_never_in_output_or_process_list(tmp_path, via):
    secret = "Pw-d0NotLeak-7731"
    fake = _SilentServer()
    url = f"postgresql+psycopg2://sweeps:{secret}@127.0.0.1:{fake.port}/studies"
    log = tmp_path / "out.log"
    if via == "argv":
        proc = start_cli(["--storage", url, "--port", str(free_port())], log)
    else:
        proc = start_cli(["--port", str(free_port())], log, env={ENV_STORAGE: url})
    try:
        assert fake.accepted.wait(60), log.read_text()  # connecting now: past any restart
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        if cmdline.exists():
            assert secret not in cmdline.read_bytes().decode(errors="replace")
        fake.close()  # the client sees the connection drop, then a refused port
        proc.wait(timeout=60)
    finally:
        fake.close()
        stop(proc)
    out = log.read_text()
    assert secret not in out
    assert proc.returncode == 2 and "postgresql+psycopg2://sweeps:***@127.0.0.1" in out, out
