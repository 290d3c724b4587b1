"""The building blocks of DCAE, with upstream's parameter names and shapes.

Written for export as much as for reference: window attention is plain
reshapes and MatMul (no einops, no 5-D Einsum), the shifted-window mask is
computed with comparisons (no ScatterND from slice assignment), the relative
position bias is a gather over constant indexes (folded at export), and GELU
is the exact (erf) form upstream uses. The arithmetic is the same operations
in the same order as upstream, which the golden vectors check bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Upsamples by exactly `stride` (output_padding = stride - 1)."""
    return nn.ConvTranspose2d(
        in_ch, out_ch, kernel_size, stride=stride, output_padding=stride - 1, padding=kernel_size // 2
    )


def nchw_to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def nhwc_to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


class ResidualBottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with ReLUs, plus a (projected) identity."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = min(in_ch, out_ch) // 2
        self.conv1 = nn.Conv2d(in_ch, mid, 1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, out_ch, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = self.skip(x)
        out = self.relu1(self.conv1(x))
        out = self.relu2(self.conv2(out))
        return self.conv3(out) + identity


class ResidualBottleneckBlockWithStride(nn.Module):
    """5x5 stride-2 conv, then `blocks` residual bottleneck blocks (named res1..)."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int = 3):
        super().__init__()
        self.conv = conv(in_ch, out_ch, 5, 2)
        self.blocks = blocks
        for i in range(blocks):
            setattr(self, f"res{i + 1}", ResidualBottleneckBlock(out_ch, out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        for i in range(self.blocks):
            out = getattr(self, f"res{i + 1}")(out)
        return out


class ResidualBottleneckBlockWithUpsample(nn.Module):
    """`blocks` residual bottleneck blocks, then a 5x5 stride-2 transposed conv."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int = 3):
        super().__init__()
        self.blocks = blocks
        for i in range(blocks):
            setattr(self, f"res{i + 1}", ResidualBottleneckBlock(in_ch, in_ch))
        self.conv = deconv(in_ch, out_ch, 5, 2)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for i in range(self.blocks):
            out = getattr(self, f"res{i + 1}")(out)
        return self.conv(out)


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B, nW, window*window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(x: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of `window_partition` for a (B, H, W, C) map of size h x w."""
    b, _, _, c = x.shape
    x = x.reshape(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, device=None) -> Tensor:
    """Additive mask (1, nW, 1, P, P) for shifted windows: -inf between pixels that
    came from different image regions after the cyclic shift, else 0.

    Equivalent to upstream's boolean mask built by slice assignment, but made of
    comparisons only, so it exports without ScatterND and follows dynamic sizes.
    A pair is masked when the window is in the last window row (column) and the
    two pixels lie on different sides of the shift boundary in that direction.
    """
    boundary = window - window // 2
    pos = torch.arange(window, device=device)
    row_side = pos.repeat_interleave(window) < boundary  # per pixel of a window, row-major
    col_side = pos.repeat(window) < boundary
    row_split = row_side[:, None] != row_side[None, :]  # (P, P)
    col_split = col_side[:, None] != col_side[None, :]
    last_row = torch.arange(h // window, device=device) == (h // window - 1)
    last_col = torch.arange(w // window, device=device) == (w // window - 1)
    masked = (last_row[:, None, None, None] & row_split) | (last_col[None, :, None, None] & col_split)
    minus_inf = torch.full((), float("-inf"), device=device)
    zero = torch.zeros((), device=device)
    p = window * window
    return torch.where(masked, minus_inf, zero).reshape(1, -1, 1, p, p)


class WMSA(nn.Module):
    """Window (type 'W') or shifted-window ('SW') multi-head self-attention."""

    def __init__(self, input_dim: int, output_dim: int, head_dim: int, window_size: int, type: str):
        super().__init__()
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.n_heads = input_dim // head_dim
        self.window_size = window_size
        self.type = type
        self.embedding_layer = nn.Linear(input_dim, 3 * input_dim, bias=True)
        self.relative_position_params = nn.Parameter(
            torch.zeros(self.n_heads, 2 * window_size - 1, 2 * window_size - 1)
        )
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)
        self.linear = nn.Linear(input_dim, output_dim)
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"), -1)
        coords = coords.reshape(-1, 2)
        relation = coords[:, None, :] - coords[None, :, :] + window_size - 1
        self.register_buffer("relative_index", relation, persistent=False)

    def relative_bias(self) -> Tensor:
        """(heads, P, P) bias gathered from the (heads, 2w-1, 2w-1) table."""
        return self.relative_position_params[:, self.relative_index[:, :, 0], self.relative_index[:, :, 1]]

    def forward(self, x: Tensor) -> Tensor:
        win = self.window_size
        shifted = self.type != "W"
        if shifted:
            x = torch.roll(x, shifts=(-(win // 2), -(win // 2)), dims=(1, 2))
        b, h, w, c = x.shape
        windows = window_partition(x, win)  # (B, nW, P, C)
        nw, p = windows.shape[1], windows.shape[2]
        qkv = self.embedding_layer(windows)
        # channel = (t * heads + head) * head_dim + i, t in (q, k, v), as upstream's rearrange
        qkv = qkv.reshape(b, nw, p, 3, self.n_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nW, heads, P, head_dim)
        sim = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        sim = sim + self.relative_bias()
        if shifted:
            sim = sim + shifted_window_mask(h, w, win, sim.device)
        probs = torch.softmax(sim, dim=-1)
        out = torch.matmul(probs, v)  # (B, nW, heads, P, head_dim)
        out = out.permute(0, 1, 3, 2, 4).reshape(b, nw, p, c)
        out = self.linear(out)
        out = window_merge(out, win, h, w)
        if shifted:
            out = torch.roll(out, shifts=(win // 2, win // 2), dims=(1, 2))
        return out


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied to an NHWC tensor."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return nchw_to_nhwc(self.dwconv(nhwc_to_nchw(x)))


class ConvolutionalGLU(nn.Module):
    """fc1 to 2 x hidden, depthwise conv + GELU on one half gating the other, fc2."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        hidden = hidden_features // 2
        self.fc1 = nn.Linear(in_features, hidden * 2)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, in_features)

    def forward(self, x: Tensor) -> Tensor:
        x, v = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.act(self.dwconv(x)) * v)


class Scale(nn.Module):
    """Learnable per-channel scale (last axis)."""

    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ResScaleConvolutionGateBlock(nn.Module):
    """x = s1*x + WMSA(LN(x)); x = s2*x + ConvGLU(LN(x)), on NHWC tensors."""

    def __init__(self, dim: int, head_dim: int, window_size: int, type: str = "W"):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WMSA(dim, dim, head_dim, window_size, type)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = ConvolutionalGLU(dim, dim * 4)
        self.res_scale_1 = Scale(dim)
        self.res_scale_2 = Scale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res_scale_1(x) + self.msa(self.ln1(x))
        return self.res_scale_2(x) + self.mlp(self.ln2(x))


class SwinBlockWithConvMulti(nn.Module):
    """Alternating W / SW blocks on NHWC, a 3x3 conv, and a residual around it all.

    Upstream pads inputs whose side is <= the window (a buggy branch that only
    triggers at sizes the model cannot code anyway); here the caller guarantees
    valid sizes (see dcae_deploy.runtime.geometry) and no pad branch exists.
    """

    def __init__(self, dim: int, head_dim: int, window_size: int, block_num: int):
        super().__init__()
        self.layers = nn.ModuleList(
            ResScaleConvolutionGateBlock(dim, head_dim, window_size, "W" if i % 2 == 0 else "SW")
            for i in range(block_num)
        )
        self.conv = conv(dim, dim, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        t = nchw_to_nhwc(x)
        for layer in self.layers:
            t = layer(t)
        return self.conv(nhwc_to_nchw(t)) + x


class SpatialAttentionModule(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        mx = torch.amax(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv1(torch.cat([avg, mx], dim=1)))


class ConvWithDW(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.in_trans = nn.Conv2d(dim, dim, 1)
        self.act1 = nn.GELU()
        self.dw_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act2 = nn.GELU()
        self.out_trans = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_trans(self.act2(self.dw_conv(self.act1(self.in_trans(x)))))


class DenseBlock(nn.Module):
    """Three chained GELU + ConvWithDW steps; all four maps fused by a 1x1 conv."""

    def __init__(self, dim: int, layers: int = 3):
        super().__init__()
        self.conv_layers = nn.ModuleList(nn.Sequential(nn.GELU(), ConvWithDW(dim)) for _ in range(layers))
        self.proj = nn.Conv2d(dim * (layers + 1), dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        for layer in self.conv_layers:
            outputs.append(layer(outputs[-1]))
        return self.proj(torch.cat(outputs, dim=1))


class MultiScaleAggregation(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.s = nn.Conv2d(dim, dim, 1)
        self.spatial_atte = SpatialAttentionModule()
        self.dense = DenseBlock(dim)

    def forward(self, x: Tensor) -> Tensor:
        s = self.dense(self.s(nhwc_to_nchw(x)))
        return nchw_to_nhwc(s * self.spatial_atte(s))


class DictionaryCrossAttention(nn.Module):
    """Upstream's MutiScaleDictionaryCrossAttentionGLU: the latent context (query)
    attends over a learned dictionary; keys are a projection of the layer-normed
    dictionary, values are the layer-normed dictionary itself."""

    def __init__(self, input_dim: int, output_dim: int, head_num: int, head_dim: int, mlp_rate: int = 4):
        super().__init__()
        dict_dim = head_num * head_dim
        self.head_num = head_num
        self.scale = nn.Parameter(torch.ones(head_num, 1, 1))
        self.x_trans = nn.Linear(input_dim, dict_dim)
        self.ln_scale = nn.LayerNorm(dict_dim)
        self.msa = MultiScaleAggregation(dict_dim)
        self.lnx = nn.LayerNorm(dict_dim)
        self.q_trans = nn.Linear(dict_dim, dict_dim)
        self.dict_ln = nn.LayerNorm(dict_dim)
        self.k = nn.Linear(dict_dim, dict_dim)
        self.linear = nn.Linear(dict_dim, dict_dim)
        self.ln_mlp = nn.LayerNorm(dict_dim)
        self.mlp = ConvolutionalGLU(dict_dim, mlp_rate * dict_dim)
        self.output_trans = nn.Sequential(nn.Linear(dict_dim, output_dim))
        self.res_scale_1 = Scale(dict_dim)
        self.res_scale_2 = Scale(dict_dim)
        self.res_scale_3 = Scale(dict_dim)

    def dictionary_keys_values(self, dictionary: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (e, c, entries) and values (e, entries, c) of the dictionary. They
        depend on parameters only, so the exporter folds them into constants."""
        d = self.dict_ln(dictionary)
        k = self.k(d)
        k = k.reshape(k.shape[0], self.head_num, -1).permute(1, 2, 0)
        v = d.reshape(d.shape[0], self.head_num, -1).permute(1, 0, 2)
        return k, v

    def forward(self, x: Tensor, dictionary: Tensor) -> Tensor:
        """x: (B, C, H, W) query map; dictionary: (entries, dict_dim)."""
        return self.attend(x, *self.dictionary_keys_values(dictionary))

    def attend(self, x: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = self.x_trans(nchw_to_nhwc(x))
        x = self.msa(self.ln_scale(x)) + self.res_scale_1(x)
        shortcut = x
        q = self.q_trans(self.lnx(x))  # (B, H, W, e*c)
        q = q.reshape(b, h * w, self.head_num, -1).permute(0, 2, 1, 3)  # (B, e, HW, c)
        sim = torch.matmul(q, keys) * self.scale
        probs = torch.softmax(sim, dim=-1)
        out = torch.matmul(probs, values)  # (B, e, HW, c)
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, -1)
        out = self.linear(out) + self.res_scale_2(shortcut)
        out = self.mlp(self.ln_mlp(out)) + self.res_scale_3(out)
        return nhwc_to_nchw(self.output_trans(out))


def slice_head(in_ch: int, hidden: tuple[int, int], out_ch: int) -> nn.Sequential:
    """conv3x3 -> GELU -> conv3x3 -> GELU -> conv3x3: the cc_mean / cc_scale / lrp heads."""
    return nn.Sequential(
        conv(in_ch, hidden[0], 3, 1),
        nn.GELU(),
        conv(hidden[0], hidden[1], 3, 1),
        nn.GELU(),
        conv(hidden[1], out_ch, 3, 1),
    )
