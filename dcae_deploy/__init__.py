"""dcae-deploy: the deployment toolkit around the DCAE reference (`dcae`).

- `dcae_deploy.runtime`: the codec with no PyTorch in it (`dcae` command);
- `dcae_deploy.calibration`: INT8 calibration data and quantisation;
- `dcae_deploy.export`: ONNX graphs, bundles, TensorRT engines (`dcae-export`);
- `dcae_deploy.bench`: `dcae-bench` and the reports' generators.

This package imports nothing itself, so `import dcae_deploy.runtime` stays torch-free.
"""
