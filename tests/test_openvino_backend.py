"""The runtime's openvino backend (OpenVINO's CPU plugin on the bundle's ONNX
graphs): exact round trips, portable files shared with onnxruntime, thread
counts and sizes that do not change the bits, bf16 for the image transforms
only, and refusals."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from dcae_deploy.runtime.backends import BackendUnavailableError, OpenVinoBackend, get_backend
from dcae_deploy.runtime.codec import Codec
from dcae_deploy.runtime.container import unpack


@pytest.fixture(scope="module")
def codec(tiny_bundle):
    return Codec(tiny_bundle, backend="openvino", threads=2)


def test_round_trip_is_exact_and_files_are_portable(codec, tiny_bundle, kodak_crop):
    pixels = kodak_crop("kodim05", 120, 90, top=50, left=300)
    encoded = codec.encode(pixels)
    decoded = codec.decode(encoded.data)
    assert np.array_equal(decoded.y_hat, encoded.y_hat)
    assert unpack(encoded.data).header.portable
    # onnxruntime reads it (another arithmetic: the side stream's job) ...
    onnxruntime = Codec(tiny_bundle, backend="onnxruntime", threads=2)
    assert np.array_equal(onnxruntime.decode(encoded.data).symbols, encoded.symbols.reshape(-1))
    # ... and the other way round.
    other = onnxruntime.encode(pixels)
    assert np.array_equal(codec.decode(other.data).symbols, other.symbols.reshape(-1))


@pytest.mark.slow
def test_thread_count_and_other_sizes_in_between_do_not_change_the_bits(tiny_bundle, codec, kodak_crop):
    """OpenVINO compiles per input size and keeps the two most recent: after
    three other sizes the first is compiled again, and computes the same."""
    pixels = kodak_crop("kodim06", 100, 100)
    first = codec.encode(pixels)
    for size in ((300, 260), (40, 500), (280, 280)):
        codec.encode(kodak_crop("kodim06", *size))
    assert codec.encode(pixels).data == first.data
    single = Codec(tiny_bundle, backend="openvino", threads=1)
    assert single.backend.numeric_class == codec.backend.numeric_class
    assert single.encode(pixels).data == first.data


def test_numeric_class_names_the_release():
    import openvino

    backend = get_backend("openvino")
    assert backend.numeric_class == f"openvino-cpu:{openvino.get_version().split('-')[0]}"
    assert backend.sigma_error_bound is not None


def test_bf16_runs_the_image_transforms_only(tiny_bundle, codec, kodak_crop):
    """bf16 changes y (g_a in bf16) but not the entropy graphs' arithmetic, so
    an f32 decoder reads its files exactly, with the same numeric class."""
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BackendUnavailableError, match="bf16"):
            get_backend("openvino-bf16")
        return
    bf16 = Codec(tiny_bundle, backend="openvino-bf16", threads=2)
    assert bf16.backend.numeric_class == codec.backend.numeric_class
    pixels = kodak_crop("kodim07", 128, 128, top=100, left=100)
    encoded = bf16.encode(pixels)
    assert not np.array_equal(encoded.symbols, codec.encode(pixels).symbols)  # g_a ran in bf16
    assert np.array_equal(codec.decode(encoded.data).y_hat, encoded.y_hat)


def test_refusals(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="thread"):
        OpenVinoBackend(threads=0)
    with pytest.raises(BackendUnavailableError, match="precision"):
        OpenVinoBackend(precision="f16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(BackendUnavailableError, match="pip install"):
        get_backend("openvino")


def test_split_backend_runs_the_transforms_in_openvino_and_writes_onnxruntime_files(tiny_bundle, kodak_crop):
    """onnxruntime+openvino-bf16: g_a, h_a and g_s in OpenVINO bf16, the
    entropy graphs in onnxruntime. Its files are onnxruntime's: same numeric
    class, so a plain onnxruntime decoder reads even its exact (margin-less)
    files, symbol for symbol."""
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BackendUnavailableError, match="bf16"):
            get_backend("onnxruntime+openvino-bf16")
        return
    split = Codec(tiny_bundle, backend="onnxruntime+openvino-bf16", threads=2)
    onnxruntime = Codec(tiny_bundle, backend="onnxruntime", threads=2)
    assert split.backend.numeric_class == onnxruntime.backend.numeric_class
    assert split.backend.sigma_error_bound == onnxruntime.backend.sigma_error_bound
    split.load_graphs()
    kinds = {name: type(session).__name__ for name, session in split._sessions.items()}
    assert {kinds[name] for name in ("g_a", "h_a", "g_s")} == {"OpenVinoSession"}
    assert {kind for name, kind in kinds.items() if name not in ("g_a", "h_a", "g_s")} == {"OrtSession"}
    pixels = kodak_crop("kodim07", 128, 128, top=100, left=100)
    exact = split.encode(pixels, margin=None)
    assert not unpack(exact.data).header.portable
    assert not np.array_equal(exact.symbols, onnxruntime.encode(pixels, margin=None).symbols)  # g_a ran in bf16
    decoded = onnxruntime.decode(exact.data)
    assert np.array_equal(decoded.y_hat, exact.y_hat)
    # Timings of both backends' sessions land in the codec's one list.
    stages = {name for name, _ in split.backend.timings}
    assert {"g_a", "h_s"} <= stages
