"""dcae-export: split DCAE into checked ONNX graphs and write a deployable bundle."""
__version__ = "0.1.0"

# The runtimes the image transforms' graph form can suit (`dcae-export
# --transforms-for`; dcae_deploy.export.rewrites.quality_rewrites says what differs).
TRANSFORM_TARGETS = ("onnxruntime", "openvino")
