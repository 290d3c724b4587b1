"""What identifies a model's entropy path, and its scale-table thresholds: shared by
the reference's coding (`dcae.coding`) and the model's margin (`dcae.margin`)."""
from __future__ import annotations

import hashlib

from dcae_deploy.runtime.portable import Thresholds

# Modules the decoder's entropy path never runs: left out of its fingerprint.
_NOT_ENTROPY_PATH = ("g_a.", "g_s.", "h_a.")


def entropy_model_fingerprint(model) -> bytes:
    """16 bytes that identify the decoder's entropy path: the weights of every
    module the slice loop runs and the coding tables, as float32 / int32.
    Portable `.dcae` files carry it; every fp32-entropy bundle exported from
    the model records the same value (`entropy_model_fingerprint` in its manifest)."""
    digest = hashlib.sha256(b"dcae-entropy-model-v1:fp32")
    for key, tensor in sorted(model.state_dict().items()):
        if key.startswith(_NOT_ENTROPY_PATH):
            continue
        t = tensor.detach().cpu()
        t = t.float() if t.is_floating_point() else t.int()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.digest()[:16]


def scale_thresholds(model) -> Thresholds:
    gc = model.gaussian_conditional
    return Thresholds.from_table(gc.scale_table.cpu().numpy(), float(gc.lower_bound_scale.bound))
