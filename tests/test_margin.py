"""The model's portable margin (`dcae.margin`): computed in float64 with a
simulated float32, so every machine gets the same delta for a model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dcae.margin import MARGIN_FACTOR, MARGIN_IMAGE, Float32Rounding, margin_from_error
from dcae_deploy.runtime.cpu import second_float_path
from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.portable import DEFAULT_MARGIN, MAX_MARGIN

REPO = Path(__file__).resolve().parents[1]


def _is_float32(t: torch.Tensor) -> bool:
    return t.dtype == torch.float64 and torch.equal(t, t.float().double())


def test_float32_rounding_rounds_every_operation_output():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32).double()
    layer.weight.data = layer.weight.data.float().double()
    layer.bias.data = layer.bias.data.float().double()
    x = torch.randn(8, 64).float().double()
    exact = layer(x)
    assert not _is_float32(exact)  # float64 keeps digits that float32 drops
    with torch.no_grad(), Float32Rounding():
        out = layer(x)
        gated = torch.nn.functional.gelu(out) * torch.softmax(out, dim=-1)  # functional ops too
        halves = out.chunk(2, dim=-1)
        inplace = out.clone()
        inplace.add_(exact)  # written into its first argument: rounded there
        index = torch.argmax(out, dim=-1)
    assert torch.equal(out, exact.float().double())
    assert _is_float32(gated) and all(_is_float32(h) for h in halves)
    assert _is_float32(inplace) and torch.equal(inplace, (out + exact).float().double())
    assert index.dtype == torch.int64
    assert torch.get_default_dtype() == torch.float32


def test_margin_from_error_is_the_factor_times_the_error_rounded_up_over_the_floor():
    assert MARGIN_FACTOR == 240.0
    assert margin_from_error(1.0e-7) == DEFAULT_MARGIN  # 2.4e-5: the floor
    assert margin_from_error(1.9838e-7) == 4.8e-5  # 4.76e-5, up to two digits
    assert margin_from_error(4.2145e-6) == 1.1e-3  # 1.0115e-3
    assert margin_from_error(2.5e-6) == 6.0e-4  # exact: not rounded up further
    for error in (float("nan"), float("inf"), MAX_MARGIN / MARGIN_FACTOR * 1.01):
        with pytest.raises(BadInputError, match="no portable margin"):
            margin_from_error(error)


_CHILD = """
import json, torch
from dcae import load_checkpoint
from dcae.golden import golden_model
from dcae.margin import margin_record
print(json.dumps({"kernels": torch.backends.cpu.get_cpu_capability(),
                  "embedded": margin_record(load_checkpoint()), "tiny": margin_record(golden_model("tiny"))}))
"""


@pytest.mark.slow
def test_the_margin_is_the_same_on_other_kernels():
    """The embedded model's and the tiny golden model's margin records under
    this CPU's default kernels and, in a subprocess, under others (AVX2 where
    the default is AVX-512, SSE4.1 on an AVX2-only CPU): the same margin, the
    same simulated error to 1e-6, and nothing in the record that names the
    machine. The float32 reference's own scales differ between these kernels
    (tests/test_portable.py)."""
    from dcae import load_checkpoint
    from dcae.golden import golden_model
    from dcae.margin import margin_record

    here = {"embedded": margin_record(load_checkpoint()), "tiny": margin_record(golden_model("tiny"))}
    name, env = second_float_path()
    done = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2"):
        assert there["kernels"] == {"avx2": "AVX2", "sse41": "DEFAULT"}[name]
        assert there["kernels"] != torch.backends.cpu.get_cpu_capability()
    for model in ("embedded", "tiny"):
        a, b = here[model], there[model]
        assert set(a) == {"error", "error_of", "factor", "image", "margin"}, a
        assert a["margin"] == b["margin"], (model, a, b)
        assert a["factor"] == b["factor"] == MARGIN_FACTOR and a["image"] == b["image"] == MARGIN_IMAGE.name
        assert np.isclose(a["error"], b["error"], rtol=1e-6, atol=0), (model, a["error"], b["error"])
    # The embedded model's margin (docs/portable.md, "How delta is chosen").
    assert here["embedded"]["margin"] == 4.7e-5
    assert here["tiny"]["margin"] == 1.1e-3
