"""Export-time rewrites of the image transforms: the same arithmetic in a form
onnxruntime runs faster.

The PyTorch reference (`dcae/`) stays as upstream writes it; a rewrite exists
only while a graph is traced (`export_rewrites(module)`), so the reference,
its golden vectors and the PyTorch benchmark are untouched. The rate /
quality graphs (g_a, h_a, g_s) get `QUALITY_REWRITES`, which keep the
arithmetic; the entropy-parameter graphs get only `ENTROPY_REWRITES` (below).

- `ConvolutionalGLU`: fc1 to 2 x hidden followed by `chunk(2)` exports as
  MatMul, Add, then two Slice copies of the block's widest tensor. Traced as
  two Linear layers on the two halves of fc1's weight, it computes the same
  dot products without the copies: g_a 11 % and g_s 8 % faster at 768x512 on
  2 threads (official configuration).
- `WMSA` (window attention): upstream partitions windows as (B, nW, P, C),
  computes q, k, v with one Linear and then copies them apart (a Gather per
  tensor) and into head-major order (a Transpose per tensor), and transposes
  the result back twice. Traced pixel-major instead, windows as (P, B*nW, C):
  q, k and v come from three Linears on the two thirds of the weight, and
  every per-head view is a Transpose that moves the pixel axis next to the
  head dimension, which onnxruntime folds into its MatMul as a strided batch
  (FusedMatMul transBatch), so no copy is made; the linear projection runs
  after the windows are merged (it is per pixel). At 768x512 on 2 threads the
  stage-1 block (96 channels, 12 heads of 8) runs 1.29x faster, the stage-2
  blocks 1.1-1.15x, the stage-3 blocks about equal.
  Blocks with 8 channels per head (the stage-1 blocks: 12 heads at 768x512,
  1536 windows, 302 MB of scores) run on 1/16 of each image's windows at a
  time, from the q/k/v Linears to the weighted sum, so the scores stay in
  cache through their four passes (q k^T, + bias, Softmax, @ v). And two bias
  additions go, exactly: k's bias adds q . b_k to all scores of a query, which
  softmax ignores; v's bias passes through the attention unchanged (weights sum
  to 1) and joins the projection's bias. onnxruntime's profiler, official g_a
  at 768x512, 2 threads: the stage-1 block 214-221 -> 142-153 ms (the score
  tensors no longer held whole: fp32 peak RSS of coding 2715 -> 2027 MB). Side
  by side, best of 10 alternating runs: fp32 g_s 1343 -> 1267 ms (g_a's gain
  within the host's noise there), int8 g_a 834 -> 770 ms and g_s 838 -> 783
  with the chunks alone. The stage-2 blocks (16 per head) gained nothing from
  chunks. Each chunk's Linears share the block's weight initializers (the
  file grows by nothing). onnxruntime's result differs from the traced
  reference by ~1e-7 (the v bias is added after the sum).

- `ConvTranspose2d` of `dcae.layers.deconv` (stride 2, odd kernel): onnxruntime's
  ConvTranspose kernel is a GEMM then a col2im scatter, and no int8 kernel exists
  for it (the int8 form ran it dequantised). The same map is an ordinary conv to
  4x the channels, one per output phase (row and column parity), each taking the
  kernel taps of its phase, then a pixel shuffle (DepthToSpace); the conv runs
  in onnxruntime's blocked layout and, in int8, as QLinearConv. Official g_s at
  768x512, 2 threads (A/B of the two bundles' graphs, 4 alternating runs): fp32
  1.06x, int8 1.27x. Same products; fp32 differs from the reference by ~1e-6.
  The constants are built once, in Python, as buffers that exist only while
  the graph is traced, so that they export as initializers.

The entropy-parameter graphs get only `ENTROPY_REWRITES` and only in fp32: their
wide 3x3 convs as Winograd F(4x4, 3x3) (`dcae_deploy/export/winograd.py`). That changes
their arithmetic (~4e-6 of the output's range where the plain conv has 3e-7),
which encoder and decoder share; more indexes differ from the reference's
(`dcae_deploy.bench.entropy_agreement` counts them; `dcae-export --no-winograd`
keeps the plain convs).

Measured and rejected: every 3-D Linear as Reshape + Gemm (bias inside the
GEMM) instead of MatMul + Add: no faster (onnxruntime's Gemm writes the bias
first and accumulates onto it, the same traffic as the separate Add); with the
WMSA form above, g_a at 768x512 fp32 1221 -> 1314 ms, int8 895 -> 973 ms;
measured again for the MLP and projection Linears only: g_s kernel time 1606 ->
1655 ms (the 45 Gemms took 386 ms where MatMul + Add took ~320).
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcae.layers import WMSA, ConvolutionalGLU, shifted_window_mask

from . import TRANSFORM_TARGETS, winograd

# Window attention whose heads have few channels runs on 1/ATTENTION_CHUNKS of
# the windows at a time (see _pixel_major_wmsa_forward): its scores take
# P / head_dim times the memory of the block's activations, 8x for the official
# stage-1 block (12 heads of 8: 302 MB at 768x512).
ATTENTION_CHUNKS = 16
CHUNKED_HEAD_DIM = 8


def chunk_bounds(count, chunks: int) -> list:
    """Bounds of `chunks` near-equal chunks of `count` items, count a traced
    size or an int: any count >= 0 (chunks may be empty)."""
    return [i * count // chunks for i in range(chunks + 1)]


def _split_glu_forward(self: ConvolutionalGLU, x: Tensor) -> Tensor:
    hidden = self.fc1.out_features // 2
    weight, bias = self.fc1.weight, self.fc1.bias
    gate = F.linear(x, weight[:hidden], bias[:hidden])
    value = F.linear(x, weight[hidden:], bias[hidden:])
    return self.fc2(self.act(self.dwconv(gate)) * value)


def _window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float,
                      mask: Tensor | None, images: int) -> Tensor:
    """softmax(q k^T * scale + bias [+ mask]) v for pixel-major q, k, v (P, windows,
    heads, d): (P, windows, heads, d) -> (windows, heads, P, d) and, for k, (windows,
    heads, d, P), the pixel axis moved from first to a matrix axis, a strided
    MatMul batch. The windows are `images` images' in turn; `mask` (windows of
    one image, 1, P, P) is added to each image's."""
    sim = torch.matmul(q.permute(1, 2, 0, 3), k.permute(1, 2, 3, 0)) * scale + bias
    if mask is not None:
        sim = (sim.reshape(images, -1, *sim.shape[1:]) + mask).reshape(-1, *sim.shape[1:])
    return torch.matmul(torch.softmax(sim, dim=-1), v.permute(1, 2, 0, 3))


def _pixel_major_wmsa_forward(self: WMSA, x: Tensor) -> Tensor:
    """WMSA on (B, H, W, C) with windows laid out pixel-major (P, B*nW, C)."""
    win = self.window_size
    shifted = self.type != "W"
    if shifted:
        x = torch.roll(x, shifts=(-(win // 2), -(win // 2)), dims=(1, 2))
    b, h, w, _ = x.shape
    # the channel count from the layer, not from x.shape: a traced shape would
    # make the weight slices below graph computations, recomputed (and, in
    # int8, quantised per tensor) at every run instead of constant weights
    c = self.embedding_layer.in_features
    rows, cols, pixels = h // win, w // win, win * win
    windows = x.reshape(b, rows, win, cols, win, c).permute(2, 4, 0, 1, 3, 5).reshape(pixels, -1, c)
    weight, bias = self.embedding_layer.weight, self.embedding_layer.bias
    relative_bias = self.relative_bias()
    mask = shifted_window_mask(h, w, win, x.device).reshape(-1, 1, pixels, pixels) if shifted else None
    # Few channels per head: a few windows of each image at a time, so that
    # their scores stay in cache through the four passes over them (see the
    # module docstring). The bounds follow the traced window count; any count
    # >= 1 works (a chunk may be empty).
    if self.head_dim <= CHUNKED_HEAD_DIM:
        per_image = windows.reshape(pixels, b, -1, c)
        bounds = chunk_bounds(per_image.shape[2], ATTENTION_CHUNKS)
        groups = [(per_image[:, :, start:end].reshape(pixels, -1, c), mask[start:end] if shifted else None)
                  for start, end in zip(bounds, bounds[1:])]
    else:
        groups = [(windows, mask)]
    # Two bias additions dropped, exactly: k's bias adds q . b_k to every score
    # of a query, which softmax ignores; v's bias comes out of the attention as
    # is (each row of weights sums to 1), so it joins the projection's bias.
    outs = []
    for group, group_mask in groups:
        q, k, v = (F.linear(group, weight[t * c:(t + 1) * c], bias[:c] if t == 0 else None)
                   .reshape(pixels, -1, self.n_heads, self.head_dim) for t in range(3))
        out = _window_attention(q, k, v, relative_bias, self.scale, group_mask, b)
        outs.append(out.reshape(b, -1, self.n_heads, pixels, self.head_dim))
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    out = out.reshape(b, rows, cols, self.n_heads, win, win, self.head_dim)
    out = F.linear(out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, c), self.linear.weight, self._projection_bias)
    if shifted:
        out = torch.roll(out, shifts=(win // 2, win // 2), dims=(1, 2))
    return out


def _wmsa_constants(wmsa: WMSA) -> dict[str, Tensor]:
    """The projection's bias with v's bias folded in (see _pixel_major_wmsa_forward),
    computed once here: traced, W @ b_v would stay a graph MatMul holding a
    second copy of W in the file."""
    c = wmsa.embedding_layer.in_features
    v_bias = wmsa.embedding_layer.bias.detach()[2 * c:]
    return {"_projection_bias": wmsa.linear.bias.detach() + wmsa.linear.weight.detach() @ v_bias}


def _is_exact_upsampler(deconv: nn.ConvTranspose2d) -> bool:
    """dcae.layers.deconv's form: stride 2, odd kernel, padding K // 2, output_padding 1."""
    k = deconv.kernel_size[0]
    return (deconv.kernel_size == (k, k) and k % 2 == 1 and deconv.stride == (2, 2)
            and deconv.padding == (k // 2, k // 2) and deconv.output_padding == (1, 1)
            and deconv.dilation == (1, 1) and deconv.groups == 1 and deconv.padding_mode == "zeros")


def _subpixel_constants(deconv: nn.ConvTranspose2d) -> dict[str, Tensor]:
    """The 4-phase Conv weight and bias that compute `deconv` (see _subpixel_deconv_forward)."""
    weight = deconv.weight.detach()  # (in, out, K, K)
    c_in, c_out, k, _ = weight.shape
    pad = k // 2
    # output row 2m + r takes input row m + d through kernel row r + pad - 2d
    taps = {r: [(d, r + pad - 2 * d) for d in range(-k, k + 1) if 0 <= r + pad - 2 * d < k] for r in (0, 1)}
    reach = max(abs(d) for r in taps for d, _ in taps[r])
    phases = weight.new_zeros(c_out, 2, 2, c_in, 2 * reach + 1, 2 * reach + 1)
    for ra in (0, 1):
        for da, ka in taps[ra]:
            for rb in (0, 1):
                for db, kb in taps[rb]:
                    phases[:, ra, rb, :, da + reach, db + reach] = weight[:, :, ka, kb].t()
    bias = deconv.bias.detach() if deconv.bias is not None else weight.new_zeros(c_out)
    return {"_subpixel_weight": phases.reshape(4 * c_out, c_in, 2 * reach + 1, 2 * reach + 1),
            "_subpixel_bias": bias.repeat_interleave(4)}


def _subpixel_deconv_forward(self: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """The stride-2 transposed conv as one ordinary conv to 4x the channels (one
    output phase each) and a pixel shuffle."""
    reach = self._subpixel_weight.shape[-1] // 2
    return F.pixel_shuffle(F.conv2d(x, self._subpixel_weight, self._subpixel_bias, padding=reach), 2)


# (class, export-time forward, constants it needs as buffers or None, which instances)
QUALITY_REWRITES = (
    (ConvolutionalGLU, _split_glu_forward, None, None),
    (WMSA, _pixel_major_wmsa_forward, _wmsa_constants, None),
    (nn.ConvTranspose2d, _subpixel_deconv_forward, _subpixel_constants, _is_exact_upsampler),
)
ENTROPY_REWRITES = (
    (nn.Conv2d, winograd.winograd_conv_forward, winograd.constants, winograd.applies),
)

def quality_rewrites(target: str = "onnxruntime") -> tuple:
    """The image transforms' rewrites for the runtime that will run them.

    OpenVINO does not fold a Transpose into the MatMul after it: every per-head
    view of the pixel-major window attention runs as a copy (a third of g_a's
    time in OpenVINO bf16, official model at 768x512). For it the attention
    stays upstream's head-major form (one Transpose of q, k, v together); the
    other rewrites suit both runtimes. The arithmetic is the same either way."""
    if target not in TRANSFORM_TARGETS:
        raise ValueError(f"transforms target must be one of {TRANSFORM_TARGETS}, got {target!r}")
    if target == "openvino":
        return tuple(rewrite for rewrite in QUALITY_REWRITES if rewrite[0] is not WMSA)
    return QUALITY_REWRITES


@contextlib.contextmanager
def export_rewrites(module: nn.Module, rewrites=QUALITY_REWRITES):
    """Trace `module` with `rewrites` (by default those of the rate / quality
    graphs); every forward is restored after and every constant they added
    removed."""
    patched = []
    for sub in module.modules():
        for cls, forward, constants, applies in rewrites:
            if isinstance(sub, cls) and (applies is None or applies(sub)):
                added = constants(sub) if constants is not None else {}
                for name, value in added.items():
                    # persistent: the exporter writes state_dict entries as
                    # initializers and other tensors as Constant nodes, which
                    # quantisation takes for activations (per-tensor, float bias)
                    sub.register_buffer(name, value)
                sub.forward = types.MethodType(forward, sub)
                patched.append((sub, list(added)))
    try:
        yield module
    finally:
        for sub, added in patched:
            del sub.forward  # the instance attribute goes: the class's forward is back
            for name in added:
                delattr(sub, name)
