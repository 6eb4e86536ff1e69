"""The one short script to run on a lent GPU machine (`python -m sweeps.tools.gpu_check`): models/s
at batch sizes from 4096 to 262144, the default designed study's engine time, and the CPU/CUDA
agreement tests; prints JSON (and writes it to $OUT/gpu.json when $OUT is set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import DEFAULTS, Config
from ..engine import Job, fit


def _rate(batch: int, steps: int = 2000) -> float:
    cfg = Config(**{**DEFAULTS, "hidden": 4, "activation": "tanh", "optimizer": "adam", "lr": 0.01,
                    "data": "r50", "steps": steps})
    jobs = [Job(cfg, s) for s in range(batch)]
    dev = torch.device("cuda")
    fit(jobs[:64], device=dev, batch_size=64)  # warm up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit(jobs, device=dev, batch_size=batch)
    torch.cuda.synchronize()
    return batch / (time.perf_counter() - t0)


def main() -> int:
    """Measure and print the GPU numbers."""
    out: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    out["models_per_s"] = {str(b): _rate(b) for b in (4096, 16384, 65536, 262144)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", "default", "--device", "cuda", "--no-progress",
                           "--storage", "sqlite:////tmp/gpu_check.db"], capture_output=True, text=True)
    out["default_study_s"], out["default_rc"] = time.perf_counter() - t0, proc.returncode
    out["default_tail"] = proc.stdout[-500:] + proc.stderr[-500:]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu"], capture_output=True,
                           text=True)
    out["gpu_tests"] = tests.stdout.strip().splitlines()[-1:] if tests.stdout else tests.stderr[-500:]
    text = json.dumps(out, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
