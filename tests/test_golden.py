"""The reference against the golden vectors of upstream DCAE (official
configuration, deterministic weights, seed 0).

Upstream's own code, run on this project's CPUs (AVX-512, torch 2.14.1 CUDA
build), does not reproduce the golden y bytes: g_a's output differs from the
trace by up to 1.6e-4 (of values up to 33) because float accumulation order
differs between CPU families, and that moves a handful of scale indexes. So
the checks are split where bit-exactness is a property of the code rather than
of the CPU: the network outputs match the trace within float tolerance, the
scale-table indexes agree almost everywhere, and the entropy coding, given the
trace's own symbols and indexes, reproduces the golden y bytes exactly; the z
stream (integer symbols far from rounding boundaries) is byte-identical.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from conftest import GOLDEN, GOLDEN_CASES, golden_input, golden_meta


def _x(case):
    return torch.from_numpy(golden_input(case).copy()).permute(2, 0, 1)[None].float() / 255


def _trace(case):
    return np.load(GOLDEN / f"{case}_trace.npz")


def test_parameter_names_shapes_and_count_match_upstream():
    from dcae.model import DCAE

    params = json.loads((GOLDEN / "dcae_params.json").read_text())
    with torch.device("meta"):
        model = DCAE()
    ours = {k: list(v.shape) for k, v in model.named_parameters()}
    assert ours == params
    assert sum(int(np.prod(s)) for s in ours.values()) == 119_400_351


@pytest.fixture(scope="module")
def golden_runs(golden_model):
    runs = {}
    for case in GOLDEN_CASES:
        x = _x(case)
        with torch.no_grad():
            y = golden_model.g_a(x)
            z = golden_model.h_a(y)
        out = golden_model.compress(x, return_latents=True)
        runs[case] = dict(x=x, y=y, z=z, out=out)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_z_stream_is_byte_identical(golden_runs, case):
    z_bytes = golden_runs[case]["out"]["strings"][1][0]
    assert z_bytes == (GOLDEN / f"{case}_z.bin").read_bytes()
    assert hashlib.sha256(z_bytes).hexdigest() == golden_meta(case)["z_sha256"]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_network_outputs_match_trace(golden_runs, case):
    trace = _trace(case)
    run = golden_runs[case]
    np.testing.assert_allclose(run["y"].numpy(), trace["y"], rtol=0, atol=5e-4)
    np.testing.assert_allclose(run["z"].numpy(), trace["z"], rtol=0, atol=5e-4)
    # slice 0 depends on the hyperprior only; later slices also see y_hat, where
    # a moved rounding legitimately propagates, so compare the first slice
    channels = trace["mu"].shape[1] // 5
    agree = (run["out"]["indexes"].numpy()[:, :channels] == trace["index"][:, :channels]).mean()
    assert agree > 0.9995, f"only {agree:.5%} of slice-0 scale-table indexes agree with upstream"


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_entropy_coding_reproduces_golden_y_bytes(golden_model, case):
    """Given upstream's own symbols and indexes (from the trace), our tables and
    coding order give the golden y string byte for byte, and decode back."""
    trace = _trace(case)
    symbols = torch.round(torch.from_numpy(trace["y"]) - torch.from_numpy(trace["mu"])).int()
    indexes = torch.from_numpy(trace["index"]).int()
    gc = golden_model.gaussian_conditional
    tables = (gc.quantized_cdf.tolist(), gc.cdf_length.tolist(), gc.offset.tolist())
    # the model flattens slice by slice, each in (C, H, W) order
    order = lambda t: torch.cat([s.reshape(-1) for s in t.chunk(golden_model.num_slices, 1)]).tolist()
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(order(symbols), order(indexes), *tables)
    golden_y = (GOLDEN / f"{case}_y.bin").read_bytes()
    assert encoder.flush() == golden_y

    decoder = RansDecoder()
    decoder.set_stream(golden_y)
    decoded = decoder.decode_stream(order(indexes), *tables)
    assert decoded == order(symbols)


@pytest.mark.slow
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_decompress_matches_forward_and_golden_reconstruction(golden_model, golden_runs, case):
    run = golden_runs[case]
    x_hat = golden_model.decompress(run["out"]["strings"], run["out"]["shape"])["x_hat"]
    with torch.no_grad():
        forward = golden_model(run["x"])["x_hat"].clamp(0, 1)
    # decompress is forward in eval mode, exactly (UPSTREAM.md 3.2)
    assert torch.equal(x_hat, forward)
    # and close to upstream's x_hat: the random-weight decoder amplifies the
    # few moved roundings, so this is a PSNR bound, not equality
    mse = float(((x_hat.numpy() - _trace(case)["x_hat"]) ** 2).mean())
    assert -10 * np.log10(mse) > 30
