"""Building and loading the C kernels (sweeps.engine.native), choosing an engine, and cancelling."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from sweeps.engine import data as datasets
from sweeps.engine import first_order_native as fon
from sweeps.engine import native
from sweeps.engine import second_order_native as son
from sweeps.engine.fit import choose, engine_name, fit
from sweeps.engine.jobs import Job
from kit import ROOT, config

CPU = torch.device("cpu")
needs_kernels = pytest.mark.skipif(not (fon.available()[0] and son.available()[0]),
                                   reason=f"native kernels unavailable: {fon.available()[1]} {son.available()[1]}")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache and nothing remembered; restored afterwards."""
    monkeypatch.setenv("SWEEPS_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SWEEPS_NATIVE", raising=False)
    native.forget()
    yield tmp_path
    native.forget()


def _jobs(steps=30):
    return [Job(config(hidden=h, activation="tanh", optimizer=o, data="r50", steps=steps, lr=1e-3), s)
            for s, (h, o) in enumerate([(2, "adam"), (5, "sgd"), (3, "lm"), (4, "bfgs")])]


# ------------------------------------------------------------------------- build and fallback ----

def test_no_compiler_falls_back_to_the_torch_path(monkeypatch, fresh):
    expected = fit(_jobs(), device=CPU, batch_size=8, engine="torch")
    monkeypatch.setattr(native, "compiler", lambda: None)
    ok, why = fon.available()
    assert not ok and "no C compiler" in why
    assert not choose("adam", "auto", CPU) and not choose("lm", None, CPU)
    for a, b in zip(fit(_jobs(), device=CPU, batch_size=8), expected):
        assert (a.params, a.test_mse, a.curve, a.evals) == (b.params, b.test_mse, b.curve, b.evals)
    with pytest.raises(native.NativeUnavailable, match="no C compiler"):
        fit(_jobs(), device=CPU, batch_size=8, engine="native")


def test_switched_off_and_broken_builds_say_why(monkeypatch, fresh):
    monkeypatch.setenv("SWEEPS_NATIVE", "0")
    assert native.available("first_order") == (False, "native kernels are turned off (SWEEPS_NATIVE=0)")
    assert not choose("bfgs", "auto", CPU)
    monkeypatch.delenv("SWEEPS_NATIVE")
    native.forget()
    kernels = fresh / "kernels"
    kernels.mkdir()
    (kernels / "broken.c").write_text("int f(void) { return missing_symbol; }\n")
    monkeypatch.setattr(native, "KERNELS", kernels)
    ok, why = native.available("broken")
    assert not ok and "failed to build broken.c" in why and "missing_symbol" in why
    assert not list((fresh / "cache").glob("*.so")) and not list((fresh / "cache").glob(".*"))  # nothing half-built


def test_a_build_without_openmp_or_libmvec_still_loads(monkeypatch, fresh):
    """Variants are tried in order: with -fopenmp failing, a single-threaded build is used."""
    monkeypatch.setattr(native, "VARIANTS", tuple(
        native.Variant(v.name, v.cflags + ("-DFAIL_ME",) if v.openmp else v.cflags, v.ldflags, v.openmp, v.libmvec)
        for v in native.VARIANTS))
    kernels = fresh / "kernels"
    kernels.mkdir()
    (kernels / "tiny.c").write_text("#ifdef FAIL_ME\n#error openmp build refused\n#endif\nint tiny(void) { return 7; }\n")
    monkeypatch.setattr(native, "KERNELS", kernels)
    lib = native.load("tiny")
    assert lib.lib.tiny() == 7 and not lib.openmp and lib.variant.name != "portable"
    assert native.available("tiny") == (True, "built without OpenMP (one thread)")


CHILD = """
import json, sys
from pathlib import Path
from sweeps.engine import native
native.KERNELS = Path(sys.argv[1])
lib = native.load("tiny")
print(json.dumps([str(lib.path), lib.built, lib.lib.tiny()]))
"""


def _child_env(cache):
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_NATIVE"}
    return {**env, "SWEEPS_NATIVE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def test_concurrent_first_builds_are_safe(tmp_path):
    kernels, cache = tmp_path / "kernels", tmp_path / "cache"
    kernels.mkdir()
    (kernels / "tiny.c").write_text("int tiny(void) { return 42; }\n")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(kernels)], stdout=subprocess.PIPE,
                              env=_child_env(cache), text=True)
             for _ in range(4)]  # all racing to build the same library into an empty cache
    got = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({path for path, _, _ in got}) == 1 and all(value == 42 for _, _, value in got)
    assert [p.name for p in cache.iterdir()] == [os.path.basename(got[0][0])]  # no temporary leftovers
    again = subprocess.run([sys.executable, "-c", CHILD, str(kernels)], capture_output=True, env=_child_env(cache),
                           text=True, check=True)
    assert json.loads(again.stdout)[1] is False  # the cached build is reused, not rebuilt


def test_a_damaged_cached_library_is_rebuilt(tmp_path):
    kernels, cache = tmp_path / "kernels", tmp_path / "cache"
    kernels.mkdir()
    (kernels / "tiny.c").write_text("int tiny(void) { return 42; }\n")

    def run():
        return json.loads(subprocess.run([sys.executable, "-c", CHILD, str(kernels)], capture_output=True,
                                         env=_child_env(cache), text=True, check=True).stdout)

    path, built, _ = run()
    assert built
    damaged = cache / "damaged"
    damaged.write_bytes(b"not a shared library")
    os.replace(damaged, path)
    assert run() == [path, True, 42]


def test_the_cache_key_follows_the_source(monkeypatch, fresh):
    kernels = fresh / "kernels"
    kernels.mkdir()
    monkeypatch.setattr(native, "KERNELS", kernels)
    paths = []
    for value in (1, 2, 1):
        (kernels / "tiny.c").write_text(f"int tiny(void) {{ return {value}; }}\n")
        native.forget()
        lib = native.load("tiny")
        assert lib.lib.tiny() == value
        paths.append((lib.path, lib.built))
    assert paths[0][0] != paths[1][0] and paths[2] == (paths[0][0], False)


# --------------------------------------------------------------------------- choosing an engine ----

def test_engine_names_and_the_environment(monkeypatch):
    monkeypatch.delenv("SWEEPS_ENGINE", raising=False)
    assert engine_name() == "auto" and engine_name("Torch") == "torch"
    monkeypatch.setenv("SWEEPS_ENGINE", "torch")
    assert engine_name() == "torch" and engine_name("native") == "native"  # the argument wins
    assert not choose("adam", None, CPU)
    monkeypatch.setenv("SWEEPS_ENGINE", "fast")
    with pytest.raises(ValueError, match=r"unknown engine 'fast' \(from \$SWEEPS_ENGINE\)"):
        fit(_jobs(), device=CPU, batch_size=4)
    with pytest.raises(ValueError, match="unknown engine 'gpu'"):
        engine_name("gpu")


@needs_kernels
def test_auto_is_native_on_a_cpu_but_for_compiled_first_order(monkeypatch):
    monkeypatch.delenv("SWEEPS_ENGINE", raising=False)
    assert choose("adam", None, CPU) and choose("bfgs", "auto", CPU) and choose("lm", "native", CPU)
    assert not choose("adam", None, CPU, compile=True) and choose("lm", None, CPU, compile=True)
    assert not choose("adam", "auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="CPU only"):
        choose("adam", "native", torch.device("cuda"))


@needs_kernels
def test_every_engine_gives_one_result_per_job_in_order():
    jobs = _jobs(50)
    for engine in ("auto", "native", "torch"):
        res = fit(jobs, device=CPU, batch_size=3, engine=engine)
        assert [len(r.params) for r in res] == [3 * j.config.hidden + 1 for j in jobs]
        assert all(r.seconds > 0 and r.curve[-1][0] == r.steps for r in res)


# ---------------------------------------------------------------------------------- cancelling ----

def _long_first_order():
    """Work that would take minutes: finishing instead of raising means cancelling failed."""
    return [Job(config(hidden=16, activation="gelu", optimizer="adam", lr=1e-4, data="uniform1000",
                       steps=5_000_000, precision="float64"), s) for s in range(8)]


@needs_kernels
def test_cancel_from_another_thread_stops_a_kernel_call():
    timer = threading.Timer(0.3, native.cancel)
    timer.start()
    try:
        with pytest.raises(native.Cancelled):
            fit(_long_first_order(), device=CPU, batch_size=8)
        assert native.cancelled()  # until cleared: every later call stops at once too
        with pytest.raises(native.Cancelled):
            son.fit_batch([Job(config(optimizer="lm", data="r50", steps=10), 0)], datasets.make("r50"))
        with pytest.raises(native.Cancelled):  # the torch loops look at the flag too (first order
            fit(_jobs(300), device=CPU, batch_size=8, engine="torch")  # every 256 steps)
        with pytest.raises(native.Cancelled):
            fit([j for j in _jobs(300) if j.config.optimizer == "bfgs"], device=CPU, batch_size=8, engine="torch")
    finally:
        timer.cancel()
        native.clear_cancel()
    assert all(r.params for r in fit(_jobs(), device=CPU, batch_size=8))


@needs_kernels
def test_a_keyboard_interrupt_in_the_main_thread_cancels_the_call_in_flight():
    """SIGINT lands while the main thread waits for the kernel: KeyboardInterrupt comes out, the
    kernel has stopped (its buffers are no longer written), and the flag is cleared again."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, interrupt)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            fit(_long_first_order(), device=CPU, batch_size=8)
        assert not isinstance(info.value, native.Cancelled)  # the signal's own interrupt
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert not native.cancelled()
    assert all(r.params for r in fit(_jobs(), device=CPU, batch_size=8))


# ------------------------------------------------------------------------------------ batches ----

def test_gpu_batches_hold_one_power_of_two_bucket_of_hidden_sizes(monkeypatch):
    """On CUDA the torch path cuts a group where the hidden size leaves its bucket (1, 2, 3-4,
    5-8, 9-16, …) and where the batch would pass `batch_elements` (here: no GPU is needed, the
    batch's training is replaced by a recorder)."""
    fitting = importlib.import_module("sweeps.engine.fit")  # the module: the package exports `fit` the function
    seen = []

    def record(jobs, data, device, compile=False, *, native_kernel=None, engine=None):
        seen.append([j.config.hidden for j in jobs])
        return [fitting.Result(0.0, 0.0, 1, None, (), ()) for _ in jobs]

    monkeypatch.setattr(fitting, "fit_batch", record)
    monkeypatch.setattr(fitting, "batch_elements", lambda device: 16 * 50 * 4)  # 4 models of H = 16 on r50
    jobs = [Job(config(hidden=h, data="r50", steps=5), s) for s, h in enumerate([16, 1, 3, 9, 4, 2, 12, 16, 16, 16, 5])]
    out = fit(jobs, device=torch.device("cuda"), batch_size=64, engine="torch")
    assert len(out) == len(jobs)
    assert seen == [[1], [2], [3, 4], [5], [9, 12, 16, 16], [16, 16]]
    assert fitting._bucket(1) == 0 and fitting._bucket(4) == fitting._bucket(3) == 2 and fitting._bucket(5) == 3
