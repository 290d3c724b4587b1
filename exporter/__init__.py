"""dcae-export: split DCAE into checked ONNX graphs and write a deployable bundle."""
__version__ = "0.1.0"
