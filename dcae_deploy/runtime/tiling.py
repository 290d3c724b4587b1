"""Tiled image transforms: g_a and g_s on fixed-shape tiles with halos.

Run on the whole image, the image transforms take memory in proportion to
the pixels (about 0.5 GB per megapixel for the embedded model, 1.7 GB for
the official one: window attention at 1/2 scale dominates). Here the runner
cuts the transform's input into tiles of one fixed shape, runs the graph on
each tile through the same session call as a whole-image run, keeps each
tile's interior and writes it into the preallocated whole-image output. The
entropy path (h_a, h_s, the slice loop) still sees the whole latent, so the
file format is untouched: a tiled g_a only moves y a little in float (the
encoder codes the y it computed, so its file is as valid as any), and a
tiled g_s only moves pixels.

Geometry, in LATENT pixels (one latent pixel = `Y_DOWNSAMPLE` = 16 image
pixels: both transforms map a latent pixel to a 16x16 block):

- Tile origins lie on the transforms' window grid (`attention_period`). The
  Swin blocks of g_a / g_s partition each feature map into windows starting
  at the map's own origin, and the shifted blocks roll by half a window
  before partitioning (dcae/layers.py, `WMSA`). A tile whose origin is a
  multiple of the largest window period of every stage sees its windows, and
  its shifted windows, exactly where the whole image has them; any other
  origin puts different pixels in one window, and the output differs
  everywhere, not only near the seams.
- Each tile's interior is surrounded by a halo of at least `halo` latent
  pixels of context, except at the image's own borders, where the tile sees
  what the whole image sees (the same zero padding, and the same masked last
  row of shifted windows). Only the halo's results are thrown away.
- Every tile has the same shape (edge tiles slide inward instead of
  shrinking), so a backend that compiles per shape (OpenVINO, TensorRT)
  compiles once per image.

The tile shape comes from a memory budget (`dcae_deploy.runtime.memory`):
under a memory limit, the limit less what the process holds when the
transform is planned (its resident memory, measured then); an image that
fits the budget whole runs whole, exactly as without tiling.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .backends import GraphRunError
from .bundle import graph_io_names
from .errors import BadInputError
from .geometry import Y_DOWNSAMPLE
from .memory import available_memory, default_budget, format_size, resident_memory
from .memory import bytes_per_pixel as measured_bytes_per_pixel

# Halo around each tile's interior, in latent pixels (16 image pixels each),
# chosen from the halo curve measured on a 2048x1536 Kodak mosaic
# (benchmarks/results/tiling_halo.md): see that report for the choice.
DEFAULT_HALO = 8

# The strides (image pixels per feature pixel) of the Swin stages in g_a and
# g_s (UPSTREAM.md 2.2: windowed attention at H/2, H/4 and H/8).
SWIN_STAGE_STRIDES = (2, 4, 8)


def attention_period(window_size: int) -> int:
    """The latent-pixel period tile origins must keep: the smallest multiple
    of a latent pixel that is also a whole number of windows at every Swin
    stage (64 image pixels = 4 latent pixels for windows of 8). The shifted
    windows' half-window roll is then aligned too."""
    pixels = math.lcm(Y_DOWNSAMPLE, *(window_size * stride for stride in SWIN_STAGE_STRIDES))
    return pixels // Y_DOWNSAMPLE


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in latent pixels: the tile reads
    [origin, origin + tile) and keeps [start, end)."""

    origin: int
    start: int
    end: int


def plan_axis(length: int, tile: int, halo: int, period: int) -> tuple[Span, ...]:
    """Cut one axis of `length` latent pixels into tiles of `tile` whose
    origins are multiples of `period`, each keeping an interior with at least
    `halo` pixels of context on every side that is not the axis's end.
    Interiors are consecutive and cover [0, length) once."""
    if length % period or tile % period:
        raise ValueError(f"length {length} and tile {tile} must be multiples of the period {period}")
    if tile >= length:
        return (Span(0, 0, length),)
    if tile < minimum_tile(halo, period):
        raise ValueError(f"tile {tile} leaves no interior with halo {halo} (period {period})")
    spans = []
    start = 0
    while start < length:
        # The latest aligned origin that still gives `start` its halo, slid
        # back inward where the tile would run past the end.
        origin = max(0, min((start - halo) // period * period, length - tile))
        last = origin + tile == length
        end = length if last else origin + tile - halo
        spans.append(Span(origin, start, end))
        start = end
    return tuple(spans)


def minimum_tile(halo: int, period: int) -> int:
    """The smallest tile (latent pixels, a multiple of `period`) whose
    interior is non-empty with `halo` on both sides wherever the aligned
    origin rounds the left halo up by up to period - 1."""
    return -(-(2 * halo + period) // period) * period


@dataclass(frozen=True)
class TilePlan:
    """A latent of `height` x `width` cut into tiles of `tile` (latent pixels)."""

    height: int
    width: int
    tile: tuple[int, int]
    halo: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def whole(self) -> bool:
        """One tile, the whole image: run the graph on it as it is."""
        return len(self.rows) == 1 and len(self.cols) == 1

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def tiles(self) -> Iterator[tuple[Span, Span]]:
        for row in self.rows:
            for col in self.cols:
                yield row, col


def plan_tiles(height: int, width: int, tile: tuple[int, int], halo: int, period: int) -> TilePlan:
    """The plan for a `height` x `width` latent with tiles of (at most) `tile`."""
    tile = (min(tile[0], height), min(tile[1], width))
    return TilePlan(height, width, tile, halo, plan_axis(height, tile[0], halo, period),
                    plan_axis(width, tile[1], halo, period))


def run_tiled(run: Callable[[np.ndarray], np.ndarray], source: np.ndarray, plan: TilePlan,
              out_channels: int, scale_in: int, scale_out: int, progress: bool = False) -> np.ndarray:
    """Run `run` (one graph: (1, C, h, w) float32 -> (1, out_channels, h', w'))
    over `source` tile by tile; the whole-image output, float32.

    `scale_in` / `scale_out`: source / output pixels per latent pixel (16 and
    1 for g_a, 1 and 16 for g_s)."""
    if plan.whole:
        return run(source)
    out = np.empty((1, out_channels, plan.height * scale_out, plan.width * scale_out), np.float32)
    th, tw = plan.tile
    from tqdm import tqdm  # (imported here: most images run whole)

    with tqdm(total=plan.count, file=sys.stderr, unit="tile", leave=False, disable=not progress) as bar:
        for row, col in plan.tiles():
            piece = source[:, :, row.origin * scale_in : (row.origin + th) * scale_in,
                           col.origin * scale_in : (col.origin + tw) * scale_in]
            result = run(np.ascontiguousarray(piece))
            expected = (1, out_channels, th * scale_out, tw * scale_out)
            if result.shape != expected:
                raise GraphRunError(f"a tile of shape {piece.shape} gave {result.shape}, expected {expected}")
            out[:, :, row.start * scale_out : row.end * scale_out, col.start * scale_out : col.end * scale_out] = \
                result[:, :, (row.start - row.origin) * scale_out : (row.end - row.origin) * scale_out,
                       (col.start - col.origin) * scale_out : (col.end - col.origin) * scale_out]
            # The tile's output may live in the backend's memory arena: let it
            # go before the next tile runs, so that the run reuses the chunks
            # the last one left instead of growing the arena around it.
            del result
            bar.update()
    return out


def balanced_tile(length: int, tile: int, halo: int, period: int) -> int:
    """The smallest tile (a multiple of `period`) that cuts an axis of
    `length` into no more tiles than `tile` does: as many runs, less halo
    computed twice (a 96-pixel axis in tiles of 72, halo 8: two tiles of 72
    or two of 56)."""
    if tile >= length:
        return length
    count = len(plan_axis(length, tile, halo, period))
    best = tile
    for smaller in range(tile - period, minimum_tile(halo, period) - 1, -period):
        if len(plan_axis(length, smaller, halo, period)) > count:
            break
        best = smaller
    return best


# Image pixels per latent pixel, in area.
_PIXELS_PER_LATENT = Y_DOWNSAMPLE * Y_DOWNSAMPLE


class MemoryBudgetError(BadInputError):
    """A memory budget too small for even the smallest tile."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


def plan_for_budget(height: int, width: int, bytes_per_pixel: float, io_bytes_per_pixel: float,
                    budget: float, halo: int, period: int) -> TilePlan:
    """The plan whose cost fits `budget` bytes, for a latent of height x width.

    Whole image: bytes_per_pixel x pixels (the measured cost of running the
    graph on it). Tiled: bytes_per_pixel x tile pixels (the graph on one tile)
    plus io_bytes_per_pixel x pixels (the whole image's input and output
    arrays, held while the tiles run). Raises `MemoryBudgetError` (with the
    smallest budget that works) when not even the smallest tile fits."""
    pixels = height * width * _PIXELS_PER_LATENT
    if bytes_per_pixel * pixels <= budget:
        return plan_tiles(height, width, (height, width), halo, period)
    smallest = minimum_tile(halo, period)
    low = (min(smallest, height), min(smallest, width))
    fixed = io_bytes_per_pixel * pixels
    needed = bytes_per_pixel * low[0] * low[1] * _PIXELS_PER_LATENT + fixed
    if needed > budget:
        raise MemoryBudgetError(f"needs at least {math.ceil(needed)} bytes", int(math.ceil(needed)))
    max_tile = (budget - fixed) / (bytes_per_pixel * _PIXELS_PER_LATENT)
    # As square as the image allows (the least halo per interior pixel),
    # then as long as the budget lets along the side the image did not cap.
    side = max(int(math.isqrt(int(max_tile))) // period * period, max(low))
    th = max(low[0], min(side, height))
    tw = max(low[1], min(width, int(max_tile // th) // period * period))
    th = max(low[0], min(height, int(max_tile // tw) // period * period))
    tile = (balanced_tile(height, th, halo, period), balanced_tile(width, tw, halo, period))
    return plan_tiles(height, width, tile, halo, period)


# Under a memory limit a graph's bytes per pixel count 21/20 of what the
# bundle records (`dcae_deploy.runtime.memory`, measured at 256x256 and
# 512x512): a multi-megapixel tile takes a few per cent more (docs/tiling.md).
LARGE_TILE_ALLOWANCE = (21, 20)


def with_large_tile_allowance(bytes_per_pixel: int) -> int:
    numerator, denominator = LARGE_TILE_ALLOWANCE
    return -(-bytes_per_pixel * numerator // denominator)


class ImageTransforms:
    """A codec's g_a and g_s, run whole or tiled within a memory budget.

    `run(graph, release_memory=False, **inputs)` runs one graph and returns
    its outputs by name (the codec's timed session call; `release_memory`:
    give its working memory back after the run, asked on the last tile). `memory_limit`: bytes for
    the whole process's resident memory: each transform gets what is left of
    it beside what the process holds when the transform is planned
    (`dcae_deploy.runtime.memory`); None: a share of the memory available
    when each image is coded. `tile` forces a tile shape (latent pixels; for
    measurements, or to run at another process's plan), whatever the budget.
    `load(graph)`: loads the graph's session, called before a plan under a
    limit so that its weights count among what the process holds.
    """

    def __init__(self, run: Callable[..., dict], bundle, memory_limit: int | None = None,
                 halo: int = DEFAULT_HALO, tile: tuple[int, int] | None = None,
                 load: Callable[[str], object] | None = None):
        if memory_limit is not None and memory_limit < 1:
            raise BadInputError(f"memory limit must be at least 1 byte, got {memory_limit}")
        self._run = run
        self._load = load
        self.bundle = bundle
        self.memory_limit = memory_limit
        self.halo = halo
        self.tile = tile
        self.period = attention_period(int(bundle.config["window_size"]))
        self.progress = False  # a tile progress bar on stderr (the CLI sets it on a terminal)
        self.last_plan: dict[str, TilePlan] = {}  # graph -> the plan it last ran with
        self._bytes_per_pixel: dict[str, int] | None = None

    @property
    def bytes_per_pixel(self) -> dict[str, int]:
        """The measured {graph: bytes per pixel} (looked up, or measured, on first use)."""
        if self._bytes_per_pixel is None:
            self._bytes_per_pixel = measured_bytes_per_pixel(self.bundle)
        return self._bytes_per_pixel

    def _io_bytes_per_pixel(self) -> float:
        # float32 image (3 channels) and latent (M channels at 1/16 x 1/16)
        return 4 * (3 + self.bundle.latent_channels / _PIXELS_PER_LATENT)

    def _output_bytes_per_pixel(self, graph: str) -> float:
        # the whole-image float32 output the tiles are written into: y (M
        # channels at 1/16 x 1/16) for g_a, x_hat (3 channels) for g_s
        return 4 * (self.bundle.latent_channels / _PIXELS_PER_LATENT if graph == "g_a" else 3)

    def plan(self, graph: str, height: int, width: int) -> TilePlan:
        """The plan `graph` runs with on a latent of height x width.

        Under a memory limit: the budget is the limit less what the process
        holds now (`resident_memory`, the transform's input included), and a
        tiled run takes the tile's working memory plus the whole-image output
        on top of that. Refused with the smallest limit that works: what is
        held plus the smallest tile's cost."""
        if self.tile is not None:
            return plan_tiles(height, width, self.tile, self.halo, self.period)
        size = f"{height * Y_DOWNSAMPLE}x{width * Y_DOWNSAMPLE}"
        if self.memory_limit is not None:
            args = (height, width, with_large_tile_allowance(self.bytes_per_pixel[graph]),
                    self._output_bytes_per_pixel(graph))
            held = resident_memory()
            try:
                return plan_for_budget(*args, max(0, self.memory_limit - held), self.halo, self.period)
            except MemoryBudgetError as exc:
                needed = held + exc.needed
            holding = f", with {format_size(held)} held by the process already" if held else ""
            raise MemoryBudgetError(f"memory limit {format_size(self.memory_limit)} is too small for {graph} on a "
                                    f"{size} (padded) image{holding}: it needs at least {format_size(needed)}",
                                    needed)
        budget = default_budget()
        if budget is None:  # the machine does not say: as without tiling
            return plan_tiles(height, width, (height, width), self.halo, self.period)
        # The default budget is a share of the memory available: what the
        # process holds is not part of that, the whole image's input and
        # output arrays are.
        args = (height, width, self.bytes_per_pixel[graph], self._io_bytes_per_pixel())
        try:
            return plan_for_budget(*args, budget, self.halo, self.period)
        except MemoryBudgetError as exc:
            needed = exc.needed
        # The default budget is a share of what is available; the smallest
        # tile may still fit in all of it.
        available = available_memory()
        if available is not None and needed > available:
            raise MemoryBudgetError(f"{graph} on a {size} (padded) image needs at least {format_size(needed)}, "
                                    f"and only {format_size(available)} is available", needed)
        return plan_for_budget(*args, needed, self.halo, self.period)

    def _apply(self, graph: str, source: np.ndarray, height: int, width: int, out_channels: int,
               scale_in: int, scale_out: int) -> np.ndarray:
        if self._load is not None and self.memory_limit is not None and self.tile is None:
            self._load(graph)  # its weights are then among what the process holds
        plan = self.plan(graph, height, width)
        self.last_plan[graph] = plan
        (input_name,), (output_name,) = graph_io_names(graph)
        runs = [0]

        def run(tile: np.ndarray) -> np.ndarray:
            # The last tile gives the graph's working memory back (the
            # entropy path or the output's conversion comes next); the
            # others leave it to the next tile.
            runs[0] += 1
            return self._run(graph, release_memory=runs[0] == plan.count, **{input_name: tile})[output_name]

        return run_tiled(run, source, plan, out_channels, scale_in, scale_out, self.progress and plan.count > 1)

    def analysis(self, x: np.ndarray) -> np.ndarray:
        """g_a: padded image (1, 3, H, W) -> y (1, M, H/16, W/16)."""
        h, w = x.shape[2] // Y_DOWNSAMPLE, x.shape[3] // Y_DOWNSAMPLE
        return self._apply("g_a", x, h, w, self.bundle.latent_channels, Y_DOWNSAMPLE, 1)

    def synthesis(self, y_hat: np.ndarray) -> np.ndarray:
        """g_s: y_hat (1, M, h, w) -> x_hat (1, 3, 16h, 16w)."""
        return self._apply("g_s", y_hat, y_hat.shape[2], y_hat.shape[3], 3, 1, Y_DOWNSAMPLE)
