"""Build, cache and load the engine's C kernels (sweeps/engine/kernels/*.c); cancel them mid-call.

`load(name)` compiles `kernels/<name>.c` into a shared library once per (source, flags, compiler,
CPU) and loads it with ctypes; `available(name)` says whether that works here and, if not, why
(callers then use the torch path). Nothing is built at import time.

- Compiler: `$CC`, else `cc`, else `gcc`, found at run time. The code is compiled with
  `-march=native` for the machine that runs it, so what that flag means on this CPU (the
  driver's expanded instruction-set flags) is part of the cache key: a cache shared by several
  machines never hands one a library built for another.
- Build variants, the first that builds and loads wins (`VARIANTS`): OpenMP with glibc's vector
  maths (libmvec), OpenMP alone, one thread with libmvec, one thread alone, then a portable
  build without `-march=native`. Kernels read `NO_LIBMVEC` and `_OPENMP`.
- Cache: `$SWEEPS_NATIVE_CACHE`, else `$XDG_CACHE_HOME/sine-sweeps/native`, else
  `~/.cache/sine-sweeps/native`. Each build goes to a private temporary directory, then is
  renamed into place (atomic on one file system): workers building the same library at once
  each load a complete one. A cached file that does not load is rebuilt once.
- `SWEEPS_NATIVE=0` turns every native kernel off (the torch path is used).

Cancelling. A kernel call holds its thread until it returns, and Python runs signal handlers in
the main thread only between bytecodes, so a Ctrl-C would wait for the call. Every kernel polls a
process-wide flag (`cancel_address()`) every few dozen steps and returns early when it is set.
`run(fn, batch)` makes the call from a helper thread when called on the main thread, so that the
main thread keeps handling signals: a KeyboardInterrupt (or any exception) raised while it waits
sets the flag, waits for the kernel to return (milliseconds), clears the flag and re-raises.
`cancel()` sets the flag from anywhere (another thread, a signal handler): the calls in flight
and every later one until `clear_cancel()` stop at once and raise `Cancelled`.

Only x86-64 and 64-bit ARM are supported; anything else reports itself unavailable.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KERNELS = Path(__file__).with_name("kernels")
SUPPORTED_MACHINES = ("x86_64", "amd64", "aarch64", "arm64")
# No -ffast-math: the kernels must see NaN and inf (divergence) and must not reassociate sums.
# -fno-math-errno and -fno-trapping-math change no result (errno and FP exception flags are
# never read) but let sqrt inline and conditional code vectorize.
TUNED = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=gnu11")
PORTABLE = ("-O2", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=gnu11")
BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class Variant:
    """One way to build: compiler flags, link flags (after the source), and what it provides."""

    name: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    openmp: bool
    libmvec: bool


# -fopenmp-simd keeps the kernels' `omp simd` loops (and libmvec's `declare simd`) without threads.
VARIANTS = (
    Variant("openmp+libmvec", TUNED + ("-fopenmp",), ("-lmvec", "-lm"), True, True),
    Variant("openmp", TUNED + ("-fopenmp", "-DNO_LIBMVEC"), ("-lm",), True, False),
    Variant("libmvec", TUNED + ("-fopenmp-simd",), ("-lmvec", "-lm"), False, True),
    Variant("plain", TUNED + ("-DNO_LIBMVEC",), ("-lm",), False, False),
    Variant("portable", PORTABLE + ("-DNO_LIBMVEC",), ("-lm",), False, False),
)


class NativeUnavailable(RuntimeError):
    """A native kernel cannot be used here; the message says why."""


class Cancelled(KeyboardInterrupt):
    """A kernel call stopped early because `cancel()` was called: training was interrupted.

    A KeyboardInterrupt, so that whoever handles Ctrl-C handles this the same way."""


@dataclass(frozen=True)
class Library:
    """A loaded kernel library and how it came to be."""

    name: str
    path: Path
    lib: ctypes.CDLL
    variant: Variant
    built: bool  # True if this process compiled it (False: loaded from the cache)
    seconds: float  # time to build (if built) and load

    @property
    def openmp(self) -> bool:
        return self.variant.openmp


_lock = threading.Lock()
_loaded: dict[str, Library] = {}
_failed: dict[str, str] = {}


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("SWEEPS_NATIVE_CACHE"):
        return Path(os.environ["SWEEPS_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sine-sweeps" / "native"


def compiler() -> str | None:
    """The C compiler to use: $CC, cc or gcc, whichever is found first (None if none is)."""
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate:
            path = shutil.which(candidate)
            if path:
                return path
    return None


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _identity(cc: str, flags: tuple[str, ...]) -> str:
    """Compiler version and what -march=native means on this CPU (the driver's expanded flags)."""
    version = _run([cc, "--version"]).stdout.strip()
    # `-###` prints the commands the driver would run: for -march=native that includes the
    # resolved CPU and instruction-set flags (gcc and clang alike).
    expanded = _run([cc, *flags, "-###", "-E", "-x", "c", os.devnull]).stderr
    return f"{version}\n{platform.machine()}\n{expanded}"


def _key(source: str, cc: str, variant: Variant) -> str:
    h = hashlib.sha256()
    for part in (source, " ".join(variant.cflags), " ".join(variant.ldflags), _identity(cc, variant.cflags)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _build(name: str, source: str, cc: str, variant: Variant, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-build-") as tmp:
        # Compiled from a copy, so the library is built from exactly the text hashed (a kernel
        # may include itself by its own name: the copy keeps that name).
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / f"{name}.so"
        proc = _run([cc, *variant.cflags, "-o", str(out), str(src), *variant.ldflags], timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            raise NativeUnavailable(f"{Path(cc).name} failed to build {name}.c ({variant.name}):\n" + "\n".join(tail))
        os.replace(out, target)  # atomic: a concurrent loader sees no file or the whole one


def load(name: str) -> Library:
    """Build (or find in the cache) and load kernels/<name>.c. Raises NativeUnavailable."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            raise NativeUnavailable(_failed[name])
        try:
            lib = _load(name)
        except NativeUnavailable as exc:
            _failed[name] = str(exc)
            raise
        _loaded[name] = lib
        return lib


def _load(name: str) -> Library:
    start = time.perf_counter()
    if os.environ.get("SWEEPS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise NativeUnavailable("native kernels are turned off (SWEEPS_NATIVE=0)")
    if platform.machine().lower() not in SUPPORTED_MACHINES:
        raise NativeUnavailable(f"unsupported platform {platform.machine()!r} (x86-64 or 64-bit ARM only)")
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        raise NativeUnavailable("a 64-bit Python is needed")
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc or clang)")
    path = KERNELS / f"{name}.c"
    try:
        source = path.read_text()
    except OSError as exc:
        raise NativeUnavailable(f"kernel source {path} cannot be read: {exc}") from exc
    errors = []
    for variant in VARIANTS:
        try:
            target = cache_dir() / f"{name}-{_key(source, cc, variant)}.so"
            built = not target.exists()
            if built:
                _build(name, source, cc, variant, target)
            try:
                lib = ctypes.CDLL(str(target))
            except OSError:
                if built:
                    raise
                # A cached file that does not load (damaged, or from another system sharing the
                # cache under the same key): build it again, once.
                _build(name, source, cc, variant, target)
                built = True
                lib = ctypes.CDLL(str(target))
        except (NativeUnavailable, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        return Library(name, target, lib, variant, built, time.perf_counter() - start)
    raise NativeUnavailable("\n".join(dict.fromkeys(errors)))


def available(name: str, library: Callable[[], Any] | None = None) -> tuple[bool, str]:
    """(True, note) if kernels/<name>.c builds and loads here (note: "" or what the build lacks)
    and so does the calling module's `library()` (its ABI check and signatures), else (False, why)."""
    try:
        lib = load(name)
        if library is not None:
            library()
    except NativeUnavailable as exc:
        return False, str(exc)
    return True, "" if lib.openmp else "built without OpenMP (one thread)"


def forget() -> None:
    """Drop what this process remembers (loaded libraries stay mapped); for tests."""
    with _lock:
        _loaded.clear()
        _failed.clear()


# ---------------------------------------------------------------------------- cancelling ----

_cancel = ctypes.c_int32(0)
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0  # a forked child inherits the executor but not its thread: it needs its own


def cancel() -> None:
    """Stop every kernel call in flight, and every later one until `clear_cancel()`: they return
    within a few dozen steps and raise `Cancelled`. Safe from any thread or a signal handler."""
    _cancel.value = 1


def clear_cancel() -> None:
    """Let kernel calls run again after `cancel()`."""
    _cancel.value = 0


def cancelled() -> bool:
    """Whether `cancel()` is in force."""
    return _cancel.value != 0


def cancel_address() -> int:
    """The address of the flag the kernels poll (an int32: nonzero means stop)."""
    return ctypes.addressof(_cancel)


def run(fn: Callable[..., int], *args: Any) -> int:
    """`fn(*args)` (a ctypes kernel entry point), interruptible: see the module docstring.

    The caller keeps every buffer the call writes into alive until this returns, which it does
    only once the kernel has returned, whatever was raised meanwhile.
    """
    global _pool, _pool_pid
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)  # signals reach the main thread only; cancel() still works
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            # One long-lived thread: the kernel's OpenMP team stays warm between calls.
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeps-native")
            _pool_pid = os.getpid()
        pool = _pool
    future = pool.submit(fn, *args)
    try:
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                continue
    except BaseException:
        was = _cancel.value
        _cancel.value = 1
        while not future.done():  # the kernel still writes into the caller's buffers: wait
            try:
                concurrent.futures.wait([future])
            except BaseException:  # a second Ctrl-C: keep waiting, it is a matter of milliseconds
                continue
        _cancel.value = was
        raise
