"""dcae: the PyTorch reference of the DCAE learned image codec.

    import dcae
    model = dcae.load_checkpoint()            # embedded small model, or a path
    data = dcae.compress_image(model, "photo.png")
    pixels = dcae.decompress_image(model, data)
"""
from .checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from .coding import compress_image, decompress_image
from .config import PRESETS, DCAEConfig, get_config
from .model import DCAE

__all__ = [
    "DCAE", "DCAEConfig", "PRESETS", "get_config", "load_checkpoint", "save_checkpoint", "CheckpointError",
    "DEFAULT_CHECKPOINT", "compress_image", "decompress_image",
]
