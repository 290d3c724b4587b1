"""Calibration and INT8 quantisation (numpy and onnxruntime only; never torch).

    images.py    calibration folder -> deterministic crops the model accepts
    cache.py     recorded graph inputs on disk, keyed by model and crop set
    quantize.py  per-graph QDQ int8 quantisation, float policy, held-out error

The graph inputs themselves are recorded by `exporter.calibrate`, which runs
the PyTorch reference; `exporter.calibrate.make_int8_quantizer` ties it all
into the `quantize` hook of `exporter.export.export_bundle`.
"""
