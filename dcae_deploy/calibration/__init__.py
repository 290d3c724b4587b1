"""Calibration and INT8 quantisation (numpy and onnxruntime only; never torch).

    images.py    calibration folder -> deterministic crops the model accepts
    cache.py     recorded graph inputs on disk, keyed by model and crop set
    quantize.py  per-graph QDQ int8 quantisation, float policy, held-out error

The graph inputs themselves are recorded by `dcae_deploy.export.calibrate`, which runs
the PyTorch reference; `dcae_deploy.export.calibrate.make_int8_quantizer` ties it all
into the `quantize` hook of `dcae_deploy.export.export.export_bundle`.
"""

# Activation range methods (dcae_deploy.calibration.quantize.METHODS). Kodak, embedded
# model at 12,500 steps, 24 images, against fp32 (dcae_deploy.bench.int8_quality, all
# of g_s int8): percentile -0.23 dB / +0.68 % bpp, minmax -0.33 dB / +0.86 %,
# entropy -1.05 dB / +0.97 %.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "percentile"
