"""The torch-compile setup: the reference with torch.compile on its networks.

One tiny-preset model and one 256x256 image (the smallest codable size), so
inductor compiles small graphs (14 of them): 40 s with a warm inductor cache
on a loaded 2-core machine, several minutes from an empty one. What is checked: files written
by the compiled reference decode with the eager reference to the exact
symbols encoded, and the other way round; every part compiled without a
graph break or a fall-back to eager; the state dict, hence the portable files'
entropy-model fingerprint, is the eager model's.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import dcae

needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                                    reason="torch.compile (inductor) needs a C++ compiler")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("compile_ckpt") / "tiny.pth.tar"
    dcae.save_checkpoint(path, tiny_model, preset="tiny")
    return path


@pytest.fixture(scope="module")
def references(tiny_checkpoint):
    import torch._dynamo

    from dcae_deploy.bench.torch_reference import TorchReference

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return (TorchReference(tiny_checkpoint, threads=1),
            TorchReference(tiny_checkpoint, threads=1, compile=True))


@pytest.mark.slow
@needs_compiler
def test_compiled_reference_files_decode_with_the_eager_reference(references, kodak_crop):
    import torch._dynamo

    from dcae_deploy.bench.torch_reference import COMPILED_PARTS
    from dcae.coding import entropy_model_fingerprint
    from dcae_deploy.runtime.container import sniff, unpack

    eager, compiled = references
    assert compiled.compiled == list(COMPILED_PARTS) and eager.compiled == []
    assert compiled.numeric_class == "torch-compile-cpu"
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    assert entropy_model_fingerprint(compiled.model) == entropy_model_fingerprint(eager.model)

    pixels = kodak_crop("kodim05", 256, 256, 40, 60)
    by_compiled = compiled.encode(pixels)
    assert sniff(by_compiled.data) == "dcae" and unpack(by_compiled.data).header.portable
    _, symbols = eager.decode_portable(by_compiled.data)
    assert np.array_equal(symbols, by_compiled.symbols.reshape(-1))

    by_eager = eager.encode(pixels)
    _, symbols = compiled.decode_portable(by_eager.data)
    assert np.array_equal(symbols, by_eager.symbols.reshape(-1))
    _, symbols = compiled.decode_portable(by_compiled.data)
    assert np.array_equal(symbols, by_compiled.symbols.reshape(-1))

    # Every part ran compiled: no graph break, no fall-back to eager.
    counters = torch._dynamo.utils.counters
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= len(COMPILED_PARTS)
    assert not any("limit" in str(k) for k in counters["frames"]), dict(counters["frames"])


# ---- dcae-bench's handling of the setup (no compile) -----------------------------------

def test_bench_shares_one_inductor_cache_per_run(tmp_path, monkeypatch):
    """torch-compile's measuring processes (each round's, and its decode-memory
    ones) share the run's inductor cache: the first finds it empty (a cold
    compile, said so in the result), later ones warm. Other setups get none."""
    import dcae_deploy.bench.measure as measure
    from dcae_deploy.bench.setups import Setup

    seen = []

    def fake_child(spec, stem, name, timeout, extra_env=None):
        cache = (extra_env or {}).get("TORCHINDUCTOR_CACHE_DIR")
        seen.append((spec.get("mode"), cache))
        if cache:
            Path(cache).mkdir(parents=True, exist_ok=True)
            (Path(cache) / "compiled.so").write_bytes(b"x")
        return {"encoded_files": ["f"]} if spec.get("mode") is None else {"peak_rss_mb": 1.0}

    monkeypatch.setattr(measure, "_run_child", fake_child)
    compiled = Setup("torch-compile", "torch", "torch-compile", "fp32")
    cache = tmp_path / "cache"
    results = [measure.measure_in_subprocess(compiled, [], 1, 2, tmp_path, inductor_cache=cache) for _ in range(2)]
    assert [r["inductor_cache_was_empty"] for r in results] == [True, False]
    eager = measure.measure_in_subprocess(Setup("torch", "torch", "torch", "fp32"), [], 1, 2, tmp_path,
                                          inductor_cache=cache)
    assert "inductor_cache_was_empty" not in eager
    assert seen == [(None, str(cache)), ("decode_memory", str(cache))] * 2 + [(None, None), ("decode_memory", None)]


def test_speedups_against_eager_and_compiled_reference():
    from dcae_deploy.bench import cli

    def speed(enc, dec):
        return {"speed": {"encode_ms": {"median": enc}, "decode_ms": {"median": dec}}}

    setups = [{"name": "torch", **speed(4000, 4000)}, {"name": "torch-compile", **speed(2000, 3000)},
              {"name": "onnxruntime:int8", **speed(1000, 1000)}, {"name": "tensorrt:int8", "speed": None}]
    cli._speedups(setups)
    assert setups[2]["speedup_vs_torch"] == {"encode": 4.0, "decode": 4.0}
    assert setups[2]["speedup_vs_torch_compile"] == {"encode": 2.0, "decode": 3.0}
    assert setups[1]["speedup_vs_torch_compile"] == {"encode": 1.0, "decode": 1.0}
    assert setups[3]["speedup_vs_torch"] is None and setups[3]["speedup_vs_torch_compile"] is None
    without = [{"name": "torch", **speed(1, 1)}]
    cli._speedups(without)
    assert without[0]["speedup_vs_torch_compile"] is None
