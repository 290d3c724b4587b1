"""The packages' layers, as pyproject.toml's [tool.importlinter] contracts state
them, hold: `lint-imports` (import-linter, in the dev extra) passes.

    dcae_deploy.bench                     dcae-bench, the reports
    dcae_deploy.export                    dcae-export
    dcae_deploy.calibration | dcae        INT8 calibration | the PyTorch reference (independent)
    dcae_deploy.runtime                   the torch-free codec, `dcae`

A package imports only from the layers below it, and the runtime imports no
torch, no `dcae` and no other dcae_deploy package (docs/architecture.md).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), "lint-imports not installed: pip install -e '.[dev]'"
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    # Both contracts ran (a contract dropped from pyproject.toml would pass silently).
    assert "Contracts: 4 kept, 0 broken." in report, report[-4000:]


def test_optional_backends_register_themselves_when_first_asked_for():
    """backends.py names the TensorRT backends by module and never imports it:
    the module is imported by the first `get_backend` of one of its names, and
    registers its classes itself (the import runs one way)."""
    script = (
        "import sys\n"
        "from dcae_deploy.runtime import backends\n"
        "assert {'tensorrt', 'onnxruntime-trt'} <= set(backends.backend_names())\n"
        "assert backends.TENSORRT_MODULE not in sys.modules\n"
        "try:\n"
        "    backends.get_backend('tensorrt')\n"
        "except backends.BackendUnavailableError as exc:\n"
        "    assert 'TensorRT' in str(exc)\n"
        "module = sys.modules[backends.TENSORRT_MODULE]\n"
        "assert backends._REGISTRY['tensorrt'] is module.TensorRTBackend\n"
        "assert backends._REGISTRY['onnxruntime-trt'] is module.OnnxRuntimeTensorRTBackend\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
