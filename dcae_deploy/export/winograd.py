"""Winograd F(4x4, 3x3): a wide 3x3 convolution traced as transforms around
one batched matrix product, for the entropy-parameter graphs' first convs.

Why: the cc_mean / cc_scale / lrp heads of every slice start with a 3x3 conv
from ~1000 channels to 224 on the small latent map (48x32 at 768x512). Both
PyTorch and onnxruntime run it at the fp32 peak of the CPU (~18 ms each, 15 of
them per image), so no operator order beats it; only fewer multiplications do.
F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36
products per (input, output) channel pair instead of 144:

    Y = A^T [ (G g G^T) . (B^T d B) ] A

- input transform B^T d B of every overlapping 6x6 tile (stride 4): one conv
  with the 36 transform kernels, the channels taken as the batch (one pass
  over the input);
- 36 matrix products (K x C) @ (C x tiles), with the transformed weights
  G g G^T (constant: onnxruntime computes them once, when it loads the graph);
- output transform A^T . A as one (16 x 36) matrix product, then the 4x4
  tiles are put back in place.

Measured, one conv at 32x48 on 2 threads (onnxruntime, a scratch prototype;
plain Conv -> this form): 960 -> 224 18.0 -> 10.4 ms (F(2x2, 3x3): 14.6 ms),
512 -> 224 10.8 -> 7.0, 640 -> 192 10.7 -> 7.7, 512 -> 128 5.7 -> 4.6; it does
not pay for few output channels (608 -> 64 3.5 -> 3.9 ms, the small model's
heads), nor for narrow convs on big maps (224 -> 128 equal; 96 -> 96 at
256x384 49 -> 89 ms), hence `WIDE_INPUT_CHANNELS` and `WIDE_OUTPUT_CHANNELS`.
Tried and not kept: a slice's cc_mean and cc_scale first convs (same input) as
one conv to 448 channels, one input transform instead of two: slice_params_0
and _4 at 768x512 0.98x and 1.02x, i.e. no gain.

Precision: the transform coefficients (up to 2.5 in B^T, 16/15 in G, 8 in
A^T) cost accuracy: max error ~4e-6 of the output's range against float64
(see POINTS), where the plain conv has 3e-7. Encoder and decoder run the same
graph, so their indexes agree; against the PyTorch reference more scale-table
indexes move (`python -m dcae_deploy.bench.entropy_agreement` counts them). Only fp32
graphs get it: in fp16 or int8 that error would be far larger. The input must
be (1, C, H, W) with H and W multiples of 4: padded latents are multiples of 8.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

TILE_OUT = 4  # output tile side m of F(m x m, 3 x 3)
TILE_IN = TILE_OUT + 2  # input tile side
# the channel counts from which the rewrite is faster (see the module docstring)
WIDE_INPUT_CHANNELS = 512
WIDE_OUTPUT_CHANNELS = 128

# Interpolation points (and infinity) of the Toom-Cook construction. With 0, 1,
# -1, 2, -2 (Lavin and Gray's choice) the max error of a 960 -> 224 conv was
# 1.2e-5 of the output's range (float32, random weights); with 1/2 in place of
# 2 it is 4.0e-6; with both halves (0, 1, -1, 1/2, -1/2) 1.3e-5.
POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)


def toom_cook_matrices(points=POINTS, out: int = TILE_OUT, taps: int = 3) -> tuple[np.ndarray, ...]:
    """(B^T, G, A^T) of F(out, taps) at `points` plus infinity, float64.

    A^T evaluates the product polynomial at the points, G the kernel scaled by
    the Lagrange denominators; B^T is what is left of the identity
    y_i = sum_k d_(i+k) g_k = sum_j A^T[i, j] (G g)_j (B^T d)_j, solved for
    exactly (its entries are multiples of 1/8 for dyadic points)."""
    n = out + taps - 1
    p = np.asarray(points, dtype=np.float64)
    if len(p) != n - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({out}, {taps}) needs {n - 1} distinct points")
    a_t, g = np.zeros((out, n)), np.zeros((n, taps))
    for j in range(n - 1):
        a_t[:, j] = p[j] ** np.arange(out)
        g[j] = p[j] ** np.arange(taps) / np.prod([p[j] - p[l] for l in range(n - 1) if l != j])
    a_t[out - 1, n - 1] = g[n - 1, taps - 1] = 1.0
    coefficients = np.einsum("ij,jk->ikj", a_t, g).reshape(out * taps, n)
    identity = np.zeros((out, taps, n))
    for i in range(out):
        for k in range(taps):
            identity[i, k, i + k] = 1.0
    b_t = np.linalg.lstsq(coefficients, identity.reshape(out * taps, n), rcond=None)[0]
    b_t = np.round(b_t * 1024) / 1024
    if not np.allclose(coefficients @ b_t, identity.reshape(out * taps, n), rtol=0, atol=1e-12):
        raise ValueError(f"no exact F({out}, {taps}) transform at points {points}")
    return b_t, g, a_t


def applies(conv: nn.Conv2d) -> bool:
    """A plain 3x3 'same' conv, wide enough for the rewrite to pay."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= WIDE_INPUT_CHANNELS
            and conv.out_channels >= WIDE_OUTPUT_CHANNELS)


def constants(conv: nn.Conv2d) -> dict[str, Tensor]:
    """The transforms of `conv` (see winograd_conv_forward) and its taps.

    The transformed weights G g G^T are 36 numbers per (K, C) pair where the
    conv has 9: stored, they would make the official fp32 bundle 842 MB instead
    of 458. So the graph stores the taps and computes G g G^T as one MatMul of
    two initializers, which onnxruntime folds into a constant when it loads
    the graph (memory holds the 36, the file the 9)."""
    b_t, g, a_t = toom_cook_matrices()
    k, c = conv.out_channels, conv.in_channels
    # (9, K * C): tap (j, l) of every (K, C) pair, so that kron(G, G) @ taps is
    # G g G^T laid out (36, K * C), tile position (i, m) first
    taps = conv.weight.detach().permute(2, 3, 0, 1).reshape(9, k * c).float()
    # the 36 kernels of B^T d B: kernel (i, j) is the outer product of rows i and j of B^T
    input_kernels = np.einsum("ir,js->ijrs", b_t, b_t).reshape(TILE_IN * TILE_IN, 1, TILE_IN, TILE_IN)
    output_matrix = np.kron(a_t, a_t)  # (16, 36): output (a, b) from tile position (i, j)
    bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(k)
    as_tensor = lambda a: torch.from_numpy(a.astype(np.float32)).to(conv.weight.device)  # noqa: E731
    return {"_winograd_input_kernels": as_tensor(input_kernels),
            "_winograd_weight_transform": as_tensor(np.kron(g, g)),  # (36, 9)
            "_winograd_taps": taps.contiguous(),
            "_winograd_output_matrix": as_tensor(output_matrix),
            "_winograd_bias": bias.reshape(1, k, 1, 1).float()}


def winograd_conv_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    """The conv of (1, C, H, W), H and W multiples of 4 (see the module docstring)."""
    _, _, h, w = x.shape
    c, k = self.in_channels, self.out_channels
    tiles = TILE_IN * TILE_IN
    rows, cols = h // TILE_OUT, w // TILE_OUT
    # every 6x6 tile at stride 4 of the input padded by 1, transformed: (C, 36, rows, cols)
    transformed = F.conv2d(x.reshape(c, 1, h, w), self._winograd_input_kernels, stride=TILE_OUT, padding=1)
    # (36, C, tiles); onnxruntime folds this transpose into the MatMul as a strided batch
    transformed = transformed.reshape(c, tiles, rows * cols).transpose(0, 1)
    weight = torch.matmul(self._winograd_weight_transform, self._winograd_taps).reshape(tiles, k, c)
    products = torch.matmul(weight, transformed)  # (36, K, tiles)
    out = torch.matmul(self._winograd_output_matrix, products.reshape(tiles, -1))  # (16, K * tiles)
    out = out.reshape(TILE_OUT, TILE_OUT, k, rows, cols).permute(2, 3, 0, 4, 1).reshape(1, k, h, w)
    return out + self._winograd_bias
