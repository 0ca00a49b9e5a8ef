"""``make gpu-check`` (``benchmarks/gpu_check.sh`` and ``benchmarks/gpu_check.py``) without a GPU: the one-line
refusal with status 2, and the JSON it writes, from a few seconds of training on the CPU."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gpu_check
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10" time="1.0"></testsuite>
</testsuites>
"""


def test_no_cuda_is_one_line_and_status_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_check.json"
    for extra in ([], ["--check-device"]):
        assert gpu_check.main(["--output", str(out), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.err == gpu_check.NO_CUDA + "\n" and captured.out == ""
    assert not out.exists()


def test_shell_script_stops_before_the_tests_without_cuda(tmp_path):
    """The script's first step is the device check: no CUDA, no test suite, no JSON."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GPU_CHECK_DIR=str(tmp_path), PY=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == gpu_check.NO_CUDA
    assert list(tmp_path.iterdir()) == []


def test_tiny_cpu_run_writes_the_json(tmp_path, capsys):
    """The whole check on the CPU (3 s of training on a 32x32 subject): every field, consistent with the run."""
    junit = tmp_path / "pytest.xml"
    junit.write_text(JUNIT)
    out = tmp_path / "check" / "gpu_check.json"
    args = ["--device", "cpu", "--minutes", "0.05", "--resolution", "32", "--num-train", "20", "--threads", "1"]
    assert gpu_check.main([*args, "--output", str(out), "--junit", str(junit)]) == 0
    report = json.loads(out.read_text())
    assert (tmp_path / "check" / "data" / "nerface" / "transforms_train.json").is_file()  # --work-dir: out's folder
    run = report["run"]
    assert report["method"] == "sahs-fast" and report["device"] == "cpu" and report["gpu"] is None
    assert report["torch"] == torch.__version__ and isinstance(report["tinycudann_importable"], bool)
    assert report["steps"] == run["steps_total"] >= 1 and report["train_seconds"] >= 3.0
    assert report["steps_per_s"] == pytest.approx(report["steps"] / report["train_seconds"])
    assert report["rays_per_s"] == pytest.approx(report["steps"] * report["rays_per_step"] / report["train_seconds"])
    assert report["render_fps"] > 0 and report["render_frames"] == 2  # every held-out frame (20 // 10)
    assert math.isfinite(report["heldout_psnr"]) and report["heldout_psnr"] == run["equal_time"]["psnr"]
    assert report["peak_memory_mb"] > 0 and report["memory_kind"] == "peak RSS of the run process"
    assert report["tests"] == {"passed": 4, "failed": 2, "errors": 1, "skipped": 3, "total": 10, "junit": str(junit)}
    assert datetime.datetime.fromisoformat(report["date"]).tzinfo is not None
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("gpu-check: cpu: ") and f"{report['steps']} steps" in line and str(out) in line
