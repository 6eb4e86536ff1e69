"""The dashboard: the real optuna-dashboard server, a real headless browser, a sweep writing live.

A small `quick` study is swept into a temporary SQLite file once per module and published (note
and fit figures); `python -m sweeps dashboard` then serves it from a subprocess on a free port. A
small designed study checks that its note quotes the answer and cites the confirmation trials
behind it; the trials' flat attributes and the stored spec text are checked against the records.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
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

from analysis import report as rpt
from kit import DESIGN, write_spec
from sweeps.config import ENV_STORAGE
from sweeps.dashboard import notes
from sweeps.dashboard import publish as pub
from sweeps.dashboard import serve as dashboard
from sweeps.study import spec as specs
from sweeps.study import storage as st
from sweeps.study.record import read
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
        assert f"| {bias} | [{trial.number}](/dashboard/studies/{study._study_id}/trials?numbers={trial.number}) |" in note
        assert f"/artifacts/{study._study_id}/{meta.artifact_id}" in note
        assert meta.artifact_id in get_note(optuna.Trial(study, trial._trial_id))
        assert read(trial).config["activation"] != "sin"  # the control never heads the table
    assert "### The spec" in note and Path(spec.path).read_text().strip() in note


def test_publish_again_reuses_figures_and_is_cheap(made):
    study = made["study"]
    before = sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(study))
    t0 = time.perf_counter()
    pub.publish(study, made["spec"], pub.artifact_dir_for(made["url"]))
    assert time.perf_counter() - t0 < 2.0
    assert sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(study)) == before


def test_a_trial_cited_no_more_says_so(made, tmp_path):
    from optuna_dashboard import get_note, save_note

    from sweeps.dashboard import cited

    study = optuna.create_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r.db'}")
    for value in (0.1, 0.2):
        t = study.ask()
        t.set_user_attr("config", {"bias": "both", "activation": "tanh"})
        study.tell(t, value)
    old = study.get_trials()[1]  # the worse one: not cited
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    png = tmp_path / pub.figure_name(old)
    png.write_bytes(PNG_SIGNATURE)  # as if an earlier publish had drawn it
    optuna.artifacts.upload_artifact(artifact_store=optuna.artifacts.FileSystemArtifactStore(artifacts),
                                     file_path=str(png), study_or_trial=study)
    save_note(optuna.Trial(pub._note_handle(study), old._trial_id),
              notes.trial_note(study, cited.Cited(old, ["best with bias = `both` (non-control units)"]), None))
    pub.publish(study, made["spec"], artifacts)
    note = get_note(optuna.Trial(study, old._trial_id))
    assert note.startswith(notes.retired_heading(old)) and "best with bias = `both`" in note
    assert "[0](" in get_note(study) and "[1](" not in get_note(study)


def test_best_by_bias_skips_failed_and_orders_placements():
    study = optuna.create_study()
    for bias, value in (("both", 0.5), ("none", 0.2), ("both", 0.1), ("hidden", None)):
        t = study.ask()
        t.set_user_attr("config", {"bias": bias})
        study.tell(t, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
    best = pub.best_by_bias(study.trials)
    assert list(best) == ["none", "both"] and best["both"].value == 0.1


def test_control_units_are_shown_apart_never_as_the_best():
    from sweeps.dashboard import cited

    study = optuna.create_study()
    for bias, activation, value in (("both", "tanh", 0.5), ("both", "sin", 1e-9), ("none", "sin", 1e-8),
                                    ("none", "relu", 0.4)):
        t = study.ask()
        t.set_user_attr("config", {"bias": bias, "activation": activation})
        study.tell(t, value)
    best = pub.best_by_bias(study.trials)
    assert {b: t.value for b, t in best.items()} == {"none": 0.4, "both": 0.5}
    picked = cited.searched(study.trials)
    assert [c.control for c in picked] == [False, False, True] and picked[-1].trial.value == 1e-9


# --- what trials record for the dashboard's table ----------------------------------------------------

def test_trials_carry_flat_short_attributes(made):
    for t in made["study"].get_trials():
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        ua, rec = t.user_attrs, read(t)
        mses = [math.inf if m is None else m for m in rec.seeds.test_mse]
        assert ua["seeds_fit"] == f"{sum(m < made['spec'].success_threshold for m in mses)}/{len(mses)}"
        assert ua["median_test_mse"] == pytest.approx(t.value, rel=1e-3)
        assert ua["log10_median_test_mse"] == (pytest.approx(math.log10(t.value), abs=1e-3)
                                               if 0 < t.value < math.inf else None)
        assert ua["best_test_mse"] == pytest.approx(min(mses), rel=1e-3)
        assert ua["evals_median"] == statistics.median(rec.seeds.evals)
        assert ua["seconds_per_fit_s"] == pytest.approx(statistics.median(rec.seeds.seconds), rel=1e-2)
        assert ua["trial_wall_s"] == pytest.approx(rec.run["wall_time_s"], rel=1e-2)
        assert ua["device"] == rec.run["device"] == "cpu"
        flat = [ua[k] for k in ("seeds_fit", "median_test_mse", "log10_median_test_mse", "evals_median",
                                "seconds_per_fit_s", "device")]
        assert all(len(json.dumps(v)) <= 12 for v in flat), flat  # short enough for a table column
        assert rec.labels == {}  # flat copies are not mistaken for labels (a program's name)


def test_study_keeps_its_spec_as_toml_text(made, tmp_path):
    text = made["study"].user_attrs["spec_toml"]
    assert text == Path(made["spec"].path).read_text()  # unchanged: the file itself
    url = f"sqlite:///{tmp_path / 'o.db'}"
    spec = specs.load("quick", ["steps=50", "study.seeds=2"])
    run(spec, Options(storage=url, trials=1, progress=False, study_name="over"), echo=lambda *a, **k: None)
    text = optuna.load_study(study_name="over", storage=url).user_attrs["spec_toml"]
    assert text.startswith("# Ran with --set overrides")
    assert "#   fixed.steps = 50 (the file: 300)" in text and "#   study.seeds = 2 (the file: 4)" in text
    assert text.endswith(Path(spec.path).read_text())  # the file follows, unchanged


def test_report_and_dashboard_agree_on_the_address():
    assert rpt.DASHBOARD_URL == dashboard.url_for(dashboard.DEFAULT_HOST, dashboard.DEFAULT_PORT)


# --- a designed study's note: the answer and the trials behind it -----------------------------------

@pytest.fixture(scope="module")
def designed(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("designed")
    url = f"sqlite:///{folder / 'studies.db'}"
    text = DESIGN.replace('name = "d"', 'name = "d"\ndescription = "a design, see [x](javascript:alert(1))"')
    spec = specs.load(str(write_spec(folder / "d.toml", text, confirm=4, steps=200, biases='["none", "both"]')))
    run(spec, Options(storage=url, progress=False), echo=lambda *a, **k: None)
    study = optuna.load_study(study_name="d", storage=st.open_storage(url, create=False))
    pub.publish(study, spec, pub.artifact_dir_for(url))
    return {"url": url, "spec": spec, "study": study}


def _expected_citations(study: optuna.Study, threshold: float) -> dict[str, int]:
    """From the raw trials: the confirmation trial each citation should name (most fits, then lowest median)."""
    rows = []
    for t in study.get_trials():
        if t.params.get("phase") != "confirm":
            continue
        cfg = read(t).config
        mses = [math.inf if m is None else m for m in read(t).seeds.test_mse]
        rows.append((cfg, -sum(m < threshold for m in mses), statistics.median(mses), t.number))

    def best(keep) -> int:  # noqa: ANN001
        return min((r for r in rows if keep(r[0])), key=lambda r: r[1:])[3]

    out = {f"bias = `{b}`": best(lambda c, b=b: c["bias"] == b and c["activation"] != "sin") for b in ("none", "both")}
    for o in ("adam", "lm"):
        out[f"optimizer = `{o}`"] = best(lambda c, o=o: c["optimizer"] == o and c["hidden"] == 4
                                         and c["bias"] == "both" and c["activation"] != "sin")
    out["control arm"] = best(lambda c: c["activation"] == "sin")
    return out


def test_designed_note_quotes_the_answer_and_cites_its_trials(designed):
    from optuna_dashboard import get_note

    from analysis.answer import answer
    from analysis.cells import confirmed
    from analysis.load import load_study

    study, spec = designed["study"], designed["spec"]
    note = get_note(study)
    data = load_study(st.open_readonly(designed["url"]), designed["url"], "d")
    sentences = answer(confirmed(data), None)
    assert len(sentences) >= 3
    for s in sentences:
        assert f"- {notes.plain_sentence(s.text)}" in note
        assert "tables/" not in notes.plain_sentence(s.text) and "#figure-" not in notes.plain_sentence(s.text)
    sid = study._study_id
    metas = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}
    by_number = {t.number: t for t in study.get_trials()}
    for why, number in _expected_citations(study, spec.success_threshold).items():
        row = next(line for line in note.splitlines() if line.startswith(f"| [{number}]("))
        assert why in row, (why, row)
        assert f"/dashboard/studies/{sid}/trials?numbers={number}" in row
        artifact_id = metas[pub.figure_name(by_number[number])]
        assert f"/artifacts/{sid}/{artifact_id}" in note
        trial_note = get_note(optuna.Trial(study, by_number[number]._trial_id))
        assert artifact_id in trial_note and why in trial_note and notes.MARK in trial_note
    cited = [int(line.split("](")[0][3:]) for line in note.splitlines() if line.startswith("| [")]
    assert all(by_number[n].params["phase"] == "confirm" for n in cited)  # never a tuning trial
    assert f"`{notes.REPORTS / rpt.slug('d') / 'index.html'}`" in note
    assert "](javascript:" not in note.partition("### The spec")[0]  # defused (in the TOML code block it is inert)
    assert note.rstrip().endswith(Path(spec.path).read_text().rstrip() + "\n```")


def test_designed_publish_keeps_hand_written_trial_notes(designed):
    from optuna_dashboard import get_note, save_note

    study = designed["study"]
    first = next(t for t in study.get_trials() if get_note(optuna.Trial(study, t._trial_id)))
    handle = optuna.Trial(pub._note_handle(study), first._trial_id)
    save_note(handle, "my own note")
    pub.publish(study, designed["spec"], pub.artifact_dir_for(designed["url"]))
    assert get_note(optuna.Trial(study, first._trial_id)) == "my own note"


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
    # optuna-dashboard caches a study's trials for 2 s: the hammer's last read may still be served.
    deadline = time.monotonic() + 15
    while len(get_json(f"{base}/api/studies/{study_id(base, 'live')}")["trials"]) != 8 and time.monotonic() < deadline:
        time.sleep(0.5)
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
