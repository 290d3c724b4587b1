"""dcae-deploy: the deployment toolkit around the DCAE reference (`dcae`).

- `dcae_deploy.runtime`: the codec with no PyTorch in it (`dcae` command);
- `dcae_deploy.calibration`: INT8 calibration data and quantisation;
- `dcae_deploy.export`: ONNX graphs, bundles, TensorRT engines (`dcae-export`);
- `dcae_deploy.bench`: `dcae-bench` and the reports' generators.

This package imports nothing but pathlib, so `import dcae_deploy.runtime` stays torch-free.
"""

from pathlib import Path

# The folder that holds `dcae_deploy` and `dcae` (a checkout's root, or
# site-packages): subprocesses put it on PYTHONPATH so that they import the
# same code as their parent, whatever their working directory.
IMPORT_ROOT = Path(__file__).resolve().parent.parent
