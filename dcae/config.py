"""DCAE configurations: what upstream hard-codes, as named presets.

`PRESETS["dcae"]` is the published model (119.4 M parameters); the small
presets keep the same architecture (Swin blocks with convolutional GLU, the
slice loop with dictionary cross-attention and LRP) at widths that train and
test on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DCAEConfig:
    # g_a / g_s: channels at H/2, H/4, H/8 and Swin blocks per stage
    feature_dims: tuple[int, int, int] = (96, 144, 256)
    swin_blocks: tuple[int, int, int] = (1, 2, 12)
    # attention head width per stage: g_a stages 1..3, then g_s stages 3..1
    head_dims: tuple[int, int, int, int, int, int] = (8, 16, 32, 32, 16, 8)
    # residual bottleneck blocks after each strided conv / before each upsampling
    res_blocks: tuple[int, int, int] = (3, 3, 3)
    window_size: int = 8
    # hyper networks (h_a, h_z_s1, h_z_s2)
    N: int = 192
    z_channels: int = 192
    hyper_window_size: int = 4
    hyper_head_dim: int = 32
    hyper_res_blocks: int = 3
    # latent and slices
    M: int = 320
    num_slices: int = 5
    # dictionary cross-attention
    dict_entries: int = 128
    dict_heads: int = 20
    dict_head_dim: int = 32
    mlp_rate: int = 4
    # hidden widths of the cc_mean / cc_scale / lrp heads
    head_hidden: tuple[int, int] = (224, 128)

    def __post_init__(self):
        if self.M % self.num_slices:
            raise ValueError(f"M={self.M} is not divisible by num_slices={self.num_slices}")
        for dim, head in zip(self.feature_dims + self.feature_dims[::-1], self.head_dims):
            if dim % head:
                raise ValueError(f"feature width {dim} is not divisible by head width {head}")
        if self.N % self.hyper_head_dim:
            raise ValueError(f"N={self.N} is not divisible by hyper_head_dim={self.hyper_head_dim}")

    @property
    def slice_channels(self) -> int:
        return self.M // self.num_slices

    @property
    def dict_dim(self) -> int:
        return self.dict_heads * self.dict_head_dim

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "DCAEConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"unknown DCAE config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


PRESETS: dict[str, DCAEConfig] = {
    # The published configuration (LabShuHangGU/DCAE, models/dcae.py).
    "dcae": DCAEConfig(),
    # Small: the fixture model trained here and shipped as the default.
    "small": DCAEConfig(
        feature_dims=(32, 64, 128),
        swin_blocks=(1, 1, 2),
        head_dims=(8, 16, 32, 32, 16, 8),
        res_blocks=(1, 1, 2),
        N=96,
        z_channels=96,
        M=160,
        dict_entries=64,
        dict_heads=4,
        dict_head_dim=32,
        head_hidden=(64, 48),
    ),
    # Tiny: for fast unit tests of shapes, export and coding paths only.
    "tiny": DCAEConfig(
        feature_dims=(16, 24, 32),
        swin_blocks=(1, 1, 2),
        head_dims=(8, 8, 16, 16, 8, 8),
        res_blocks=(1, 1, 1),
        N=32,
        z_channels=32,
        hyper_head_dim=16,
        hyper_res_blocks=1,
        M=40,
        dict_entries=16,
        dict_heads=2,
        dict_head_dim=16,
        head_hidden=(32, 32),
    ),
}


def get_config(preset: str) -> DCAEConfig:
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}") from None
