"""runtime: the torch-free DCAE codec around an exported bundle.

    from dcae_deploy.runtime import Codec
    codec = Codec("bundle/")
    data = codec.compress("photo.png"); pixels = codec.decompress(data)

Submodules are imported lazily, so `import dcae_deploy.runtime.imaging` (used by the
reference) does not load onnxruntime or numba.
"""


def __getattr__(name):
    if name in ("Codec", "EncodeResult", "DecodeResult"):
        from . import codec

        return getattr(codec, name)
    if name == "Bundle":
        from .bundle import Bundle

        return Bundle
    if name in ("DcaeError",):
        from .errors import DcaeError

        return DcaeError
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
