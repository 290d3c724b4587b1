"""The codec: an exported bundle's graphs, the slice loop and entropy coding.

    codec = Codec("bundle/")                  # onnxruntime on the CPU
    data = codec.compress("photo.png")        # .dcae bytes
    pixels = codec.decompress(data)           # uint8 (H, W, 3)

Between the graphs the codec does exactly what `dcae.model.DCAE.compress` /
`.decompress` do, in the same order (see the contract in `dcae_deploy.runtime.manifest`):

    encoder: pad -> g_a -> h_a -> z symbols, z stream; z_hat by DECODING the
             z stream -> h_s -> per slice i: slice_params_i -> scale index,
             round(y_i - mu) -> + mu -> slice_lrp_i; all slices' symbols in
             ONE rANS stream, in slice order, each slice flattened C, H, W.
    decoder: z stream -> z_hat -> h_s -> per slice: slice_params_i -> index
             -> rANS decode (same stream) -> + mu -> slice_lrp_i; check the
             stream ended in sync -> g_s -> clamp to [0, 1] -> crop.

A stream decodes only where the decoder recomputes the encoder's scale
indexes. A bundle whose entropy graphs are fp32 writes PORTABLE files: their
fingerprint is the entropy model's, and a side stream lists the elements
whose scale lies within the file's margin of an index boundary, with the
index the encoder used (`dcae_deploy.runtime.portable`), so every setup whose scales stay
within the margin decodes them (any backend, CPU family, the reference, the
C++ host). Bundles with reduced-precision entropy graphs write files that
carry a fingerprint of the whole setup (graphs, precision, backend class),
which other setups refuse.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Backend, GraphRunError, GraphSession, get_backend
from .bundle import Bundle
from .container import GAIN_CODE_ONE, DcaeHeader, gain_of, pack, sniff, unpack, unpack_bin
from .entropy import build_indexes, coded_scales, compress_z, decompress_z, dequantize, quantize_symbols
from .errors import BadInputError, CorruptStreamError, FingerprintMismatchError
from .portable import MODEL_MARGIN, PortableDecoding, Thresholds, encode_portable, margin_covers
from .geometry import Y_DOWNSAMPLE, check_dimensions, padded_size, z_shape_for
from .imaging import crop_to_uint8, load_image, pad_image
from .quality import RateChoice, RateLevels, RateSearch, code_at_rate
from .rans import RansStreamDecoder, encode_with_indexes
from .tiling import ImageTransforms
from .timing import timed


def setup_fingerprint(entropy_fingerprint: str, numeric_class: str) -> bytes:
    """The 16 bytes a `.dcae` header carries: the bundle's entropy path and
    the arithmetic that ran it."""
    return hashlib.sha256(f"{entropy_fingerprint}:{numeric_class}".encode()).digest()[:16]


@dataclass
class EncodeResult:
    """Everything the encoder computed that a test or a tool may want."""

    data: bytes  # the .dcae file
    y: bytes  # the y rANS stream
    z: bytes  # the z rANS stream
    height: int
    width: int
    y_hat: np.ndarray  # float32 (1, M, h, w), after LRP: what g_s decodes
    indexes: np.ndarray  # int32 (1, M, h, w): the scale-table index each symbol was coded with
    symbols: np.ndarray  # int32 (1, M, h, w): round(y - mu)
    z_symbols: np.ndarray  # int32 (1, Z, zh, zw): round(z - medians)
    scales: np.ndarray  # float32 (1, M, h, w): the scales coded with, sigma * gain
    side: bytes = b""  # the portable side stream


@dataclass
class Analysis:
    """An image analysed for coding at any gain (`Codec.analyse`)."""

    height: int
    width: int
    y: np.ndarray  # float32 (1, M, h, w): g_a's latent
    z_stream: bytes
    z_symbols: np.ndarray
    scales: np.ndarray  # h_s's latent scales and means, the slice graphs' inputs
    means: np.ndarray
    margin: float | None  # the portable files' margin (None: files for this setup)
    started: float  # perf_counter at the start of the encode


@dataclass
class DecodeResult:
    x: np.ndarray | None  # uint8 (H, W, 3); None when decoded with synthesize=False
    y_hat: np.ndarray  # float32 (1, M, h, w)
    symbols: np.ndarray  # int32, flat: the y symbols in stream order


class Codec:
    """A bundle on a backend. Batch 1; not thread-safe (one codec per thread)."""

    def __init__(self, bundle: Bundle | str | os.PathLike, backend: str | Backend = "onnxruntime",
                 threads: int | None = None, memory_limit: int | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.backend = backend if isinstance(backend, Backend) else get_backend(backend, threads)
        self.manifest = self.bundle.manifest
        self.fingerprint = setup_fingerprint(self.manifest.entropy_fingerprint, self.backend.numeric_class)
        problem = self.backend.bundle_warning(self.manifest)
        if problem:
            warnings.warn(problem, stacklevel=2)
        # Portable files: the entropy model's fingerprint (None: this bundle's
        # entropy path is not fp32, or it predates portable files).
        model_fingerprint = self.manifest.entropy_model_fingerprint
        self.model_fingerprint = bytes.fromhex(model_fingerprint) if model_fingerprint else None
        tables = self.bundle.entropy
        self.thresholds = Thresholds.from_table(tables.gaussian_scale_table, float(tables.gaussian_scale_bound))
        self._sessions: dict[str, GraphSession] = {}
        # g_a and g_s, tiled where the process would not stay within
        # `memory_limit` bytes otherwise (None: a share of the memory
        # available): dcae_deploy.runtime.tiling.
        self.transforms = ImageTransforms(self._run, self.bundle, memory_limit, load=self._session)
        # Seconds per stage of the last compress / decompress call.
        self.last_timings: dict[str, float] = {}
        # The quality knob's rate levels (the model's trained gains, or the
        # untrained rule) and the tries of the last rate-controlled encode.
        self.rate_levels = RateLevels.from_record(self.manifest.rate_levels)
        self.last_rate_search: RateSearch | None = None

    # ---- graphs ----------------------------------------------------------------------

    def _session(self, name: str) -> GraphSession:
        # Loaded on first use: a decode-only host never loads g_a and h_a.
        session = self._sessions.get(name)
        if session is None:
            session = self.backend.load(self.manifest.graphs[name], self.bundle.graph_path(name))
            self._sessions[name] = session
        return session

    def load_graphs(self, names=None) -> None:
        """Load graphs now (all by default), so later calls time only inference."""
        for name in names or self.manifest.graphs:
            self._session(name)

    def _run(self, name: str, release_memory: bool = False, **inputs) -> dict:
        session = self._session(name)  # (a first-use load is not counted as the graph's time)
        with self._timed(name):
            return session.run(inputs, release_memory)

    def _timed(self, stage: str):
        return timed(self.last_timings, stage)

    def _expect_shape(self, name: str, array: np.ndarray, shape: tuple) -> None:
        # A graph returning another shape than the contract says is a broken
        # bundle; catch it here rather than as a confusing numpy error later.
        if array.shape != shape:
            raise GraphRunError(f"graph {name} returned shape {array.shape}, expected {shape}")

    # ---- the two halves of the slice loop ---------------------------------------------

    def _slice_params(self, i: int, scales: np.ndarray, means: np.ndarray, y_hat: np.ndarray):
        c = self.bundle.slice_channels
        inputs = {"latent_scales": scales, "latent_means": means}
        if i:
            # Batch 1, so the first c*i channels are one contiguous block: a
            # view, not a copy.
            inputs["y_hat_prev"] = y_hat[:, : c * i]
        out = self._run(f"slice_params_{i}", **inputs)
        slice_shape = (1, c) + y_hat.shape[2:]
        self._expect_shape(f"slice_params_{i}", out["mu"], slice_shape)
        self._expect_shape(f"slice_params_{i}", out["scale"], slice_shape)
        return out["mu"], out["scale"], out["support"]

    def _slice_refine(self, i: int, support: np.ndarray, y_hat_raw: np.ndarray, y_hat: np.ndarray) -> None:
        c = self.bundle.slice_channels
        refined = self._run(f"slice_lrp_{i}", support=support, y_hat_raw=y_hat_raw)["y_hat"]
        self._expect_shape(f"slice_lrp_{i}", refined, y_hat_raw.shape)
        y_hat[:, c * i : c * (i + 1)] = refined

    def _indexes(self, scale: np.ndarray) -> np.ndarray:
        tables = self.bundle.entropy
        return build_indexes(scale, tables.gaussian_scale_table, float(tables.gaussian_scale_bound))

    def _hyper_synthesis(self, z_hat: np.ndarray, latent_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        out = self._run("h_s", z_hat=z_hat)
        self._expect_shape("h_s", out["latent_scales"], latent_shape)
        self._expect_shape("h_s", out["latent_means"], latent_shape)
        return out["latent_scales"], out["latent_means"]

    def _latent_shape(self, height: int, width: int) -> tuple:
        ph, pw = padded_size(height, width)
        return (1, self.bundle.latent_channels, ph // Y_DOWNSAMPLE, pw // Y_DOWNSAMPLE)

    # ---- encoder ----------------------------------------------------------------------

    @property
    def portable(self) -> bool:
        """Whether this codec writes and reads portable files."""
        return self.model_fingerprint is not None and self.backend.sigma_error_bound is not None

    def margin_problem(self, margin: float) -> str | None:
        """Why this backend cannot write portable files with `margin`; None when it can."""
        bound = self.backend.sigma_error_bound
        if margin_covers(margin, bound):
            return None
        return f"margin {margin:g} is under twice the {self.backend.name} backend's scale error bound ({bound:g})"

    def resolve_margin(self, margin: float | str | None) -> float | None:
        """`MODEL_MARGIN` -> the margin this bundle records for its model (the model's own)."""
        return self.manifest.portable_margin if margin == MODEL_MARGIN else margin

    def encode(self, image, margin: float | str | None = MODEL_MARGIN, quality: float | None = None,
               max_bytes: int | None = None, target_bpp: float | None = None) -> EncodeResult:
        """Image (path, PIL image or array) -> `.dcae` bytes and the encoder's latents.

        The file is portable, with a side stream for decoders within `margin`
        (natural log) of this encoder's scales, when the bundle's entropy path
        is fp32 and the backend states its error bound (`MODEL_MARGIN`: the
        model's margin, recorded in the bundle at export); `margin=None` writes a file
        for this setup only.

        At most one of `quality` (0..100, default 50: the model's reference
        rate), `max_bytes` (the largest file that fits) and `target_bpp` (a
        file within 3 % under that many bits per pixel): see
        `dcae_deploy.runtime.quality`. Rate control runs the image transforms
        once and the slice loop once per try (`last_rate_search`)."""
        rate = RateChoice(quality, max_bytes, target_bpp)
        analysis = self.analyse(image, margin)
        result, self.last_rate_search = code_at_rate(lambda code: self.code(analysis, code),
                                                     lambda result: len(result.data), rate, self.rate_levels,
                                                     analysis.height, analysis.width)
        return result

    def compress(self, image, margin: float | str | None = MODEL_MARGIN, quality: float | None = None,
                 max_bytes: int | None = None, target_bpp: float | None = None) -> bytes:
        """Image -> `.dcae` bytes (portable where the setup allows; the rate
        from `quality`, `max_bytes` or `target_bpp`: see `encode`)."""
        return self.encode(image, margin, quality, max_bytes, target_bpp).data

    def analyse(self, image, margin: float | str | None = MODEL_MARGIN) -> "Analysis":
        """What an encode computes once whatever the gain: the image through
        g_a and h_a, the z stream, and h_s's scales and means."""
        margin = self.resolve_margin(margin)
        if margin is not None and self.portable and (problem := self.margin_problem(margin)):
            # before any graph runs
            raise FingerprintMismatchError(f"{problem}: its scales could cross an index boundary the encoder "
                                           "did not list")
        self.last_timings = {}
        self.last_rate_search = None
        self.backend.clear_timings()
        started = time.perf_counter()
        tables = self.bundle.entropy
        with self._timed("load"):
            pixels = load_image(image)
            height, width = pixels.shape[:2]
            x, _ = pad_image(pixels)
            del pixels
        latent_shape = self._latent_shape(height, width)
        y = self.transforms.analysis(x)
        del x  # the image's float copy (12 bytes a pixel): nothing after g_a reads it
        self._expect_shape("g_a", y, latent_shape)
        z = self._run("h_a", y=y)["z"]
        self._expect_shape("h_a", z, (1, self.bundle.z_channels) + z_shape_for(height, width))

        with self._timed("z_coding"):
            z_symbols = quantize_symbols(z, tables.z_medians[None, :, None, None])
            z_stream = compress_z(z, *tables.z)
            # As the reference: z_hat comes from decoding the stream, which
            # also proves the stream decodes.
            z_hat = decompress_z(z_stream, z.shape[-2:], *tables.z)
        scales, means = self._hyper_synthesis(z_hat, latent_shape)
        return Analysis(height, width, y, z_stream, z_symbols, scales, means, margin, started)

    def code(self, analysis: "Analysis", gain_code: int = GAIN_CODE_ONE) -> EncodeResult:
        """The slice loop and the entropy coding of an analysed image at a gain code."""
        tables = self.bundle.entropy
        c, n_slices = self.bundle.slice_channels, self.bundle.num_slices
        gain = gain_of(gain_code)
        y, latent_shape, margin = analysis.y, analysis.y.shape, analysis.margin
        y_hat = np.empty(latent_shape, np.float32)
        symbols = np.empty(latent_shape, np.int32)
        indexes = np.empty(latent_shape, np.int32)
        slice_scales = np.empty(latent_shape, np.float32)
        for i in range(n_slices):
            mu, scale, support = self._slice_params(i, analysis.scales, analysis.means, y_hat)
            with self._timed(f"slice_coding_{i}"):
                block = slice(c * i, c * (i + 1))
                slice_scales[:, block] = coded_scales(scale, gain)
                indexes[:, block] = self._indexes(slice_scales[:, block])
                symbols[:, block] = quantize_symbols(y[:, block], mu, gain)
                y_hat_raw = dequantize(symbols[:, block], mu, gain)
            self._slice_refine(i, support, y_hat_raw, y_hat)

        side = b""
        height, width = analysis.height, analysis.width
        if margin is not None and self.portable:
            header = DcaeHeader(height, width, self.model_fingerprint, margin=margin, gain_code=gain_code)
            with self._timed("side_stream"):
                # `indexes` is this call's own array: shifted in place (no second copy)
                portable = encode_portable(slice_scales, indexes, self.thresholds, header.margin, copy=False)
                indexes, side = portable.indexes, portable.side
        else:
            header = DcaeHeader(height, width, self.fingerprint, self.manifest.reduced_precision_entropy,
                                gain_code=gain_code)
        with self._timed("y_coding"):
            # Slices are channel blocks, so C-order flattening of the whole
            # latent is slice order with each slice flattened C, H, W.
            y_stream = encode_with_indexes(symbols.reshape(-1), indexes.reshape(-1), *tables.gaussian)
        data = pack(header, analysis.z_stream, y_stream, side)
        self.last_timings["total"] = time.perf_counter() - analysis.started
        return EncodeResult(data, y_stream, analysis.z_stream, height, width, y_hat, indexes, symbols,
                            analysis.z_symbols, slice_scales, side)

    # ---- decoder ----------------------------------------------------------------------

    def decode_slices(self, z_hat: np.ndarray, height: int, width: int, decode_slice,
                      gain_code: int = GAIN_CODE_ONE) -> np.ndarray:
        """The decoder's slice loop: y_hat (after LRP) from z_hat, where
        `decode_slice(i, scale)` returns slice i's integer symbols given the
        scales this codec computed for it, times the gain (entropy decoding,
        or given symbols when the scales themselves are measured)."""
        gain = gain_of(gain_code)
        latent_shape = self._latent_shape(height, width)
        scales, means = self._hyper_synthesis(z_hat, latent_shape)
        y_hat = np.empty(latent_shape, np.float32)
        for i in range(self.bundle.num_slices):
            mu, scale, support = self._slice_params(i, scales, means, y_hat)
            with self._timed(f"slice_coding_{i}"):
                symbols = np.asarray(decode_slice(i, coded_scales(scale, gain))).reshape(mu.shape)
                y_hat_raw = dequantize(symbols, mu, gain)
            self._slice_refine(i, support, y_hat_raw, y_hat)
        return y_hat

    def decode_streams(self, y: bytes, z: bytes, height: int, width: int, side: bytes = b"",
                       margin: float = 0.0, synthesize: bool = True,
                       gain_code: int = GAIN_CODE_ONE) -> DecodeResult:
        """Decode raw y and z streams of a `height` x `width` image coded at
        `gain_code`, with the side stream and margin of a portable file; without
        `synthesize`, stop once the y stream is read and checked (no g_s, no
        pixels).

        Raises `CorruptStreamError` (or its `DesyncError`, `MarginError`) when
        the streams do not decode in sync with this codec's entropy parameters.
        """
        self.last_timings = {}
        self.backend.clear_timings()
        started = time.perf_counter()
        try:
            check_dimensions(height, width)
        except BadInputError as exc:
            raise CorruptStreamError(f"stream header has an impossible image size: {exc}") from None
        tables = self.bundle.entropy
        slice_size = self.bundle.slice_channels * int(np.prod(self._latent_shape(height, width)[2:]))
        # z and the side stream are small and checked before anything of the
        # image's size is allocated or run.
        with self._timed("z_coding"):
            z_hat = decompress_z(z, z_shape_for(height, width), *tables.z)
            portable = (PortableDecoding(side, slice_size * self.bundle.num_slices, self.thresholds, margin)
                        if margin else None)

        decoder = RansStreamDecoder(y)
        # All slices' symbols in stream order, decoded in place (no list of
        # slices to concatenate at the end).
        symbols = np.empty(slice_size * self.bundle.num_slices, np.int32)

        def decode_slice(i: int, scale: np.ndarray) -> np.ndarray:
            index = self._indexes(scale)
            if portable:
                portable.apply(i * slice_size, scale, index)
            part = symbols[i * slice_size : (i + 1) * slice_size]
            decoder.decode(index.reshape(-1), *tables.gaussian, out=part)
            return part

        y_hat = self.decode_slices(z_hat, height, width, decode_slice, gain_code)
        with self._timed("y_coding"):
            decoder.finish()
        if not synthesize:
            self.last_timings["total"] = time.perf_counter() - started
            return DecodeResult(None, y_hat, symbols)

        x_hat = self.transforms.synthesis(y_hat)
        self._expect_shape("g_s", x_hat, (1, 3) + padded_size(height, width))
        with self._timed("crop"):
            np.clip(x_hat, 0.0, 1.0, out=x_hat)  # the reference clamps x_hat
            pixels = crop_to_uint8(x_hat, height, width)
            del x_hat
        self.last_timings["total"] = time.perf_counter() - started
        return DecodeResult(pixels, y_hat, symbols)

    def decompress(self, data, force: bool = False) -> np.ndarray:
        """`.dcae` (or upstream `.bin`) bytes or path -> uint8 (H, W, 3) (see `decode`)."""
        return self.decode(data, force).x

    def decode(self, data, force: bool = False, synthesize: bool = True) -> DecodeResult:
        """`.dcae` (or upstream `.bin`) bytes or path -> the image and the decoder's latents.

        With `synthesize=False` the decode stops after the y stream: the
        symbols are read and the stream's end checked, as in a full decode,
        but g_s does not run (`x` is None). That checks that a file decodes
        on this setup for a fraction of the cost: g_s cannot change a symbol.

        A portable `.dcae` decodes when it was written with this bundle's
        entropy model and its margin covers this backend's error bound. A
        file for one setup only (reduced-precision entropy path) is refused
        with `FingerprintMismatchError` unless it is this codec's setup or
        `force`; then the decoder tries and usually reports a desync. An
        upstream `.bin` carries no fingerprint: it decodes with a warning.
        """
        self.last_timings = {}
        if isinstance(data, (str, os.PathLike)):
            data = Path(data).read_bytes()
        data = bytes(data)
        kind = sniff(data)
        if kind == "bin":
            parsed = unpack_bin(data)
            warnings.warn("upstream .bin file: it carries no fingerprint, and a stream written by "
                          "another setup (PyTorch, another backend or precision) may not decode",
                          stacklevel=2)
            return self.decode_streams(parsed.y, parsed.z, parsed.height, parsed.width, synthesize=synthesize)
        # Not a .bin: unpack checks it is a .dcae and says what it is if not.
        parsed = unpack(data)
        header = parsed.header
        if header.portable:
            self._check_portable(header, force)
        elif header.fingerprint != self.fingerprint:
            if not force:
                raise FingerprintMismatchError(
                    f"file was written by another bundle, backend or precision (fingerprint "
                    f"{header.fingerprint.hex()}, this decoder's is {self.fingerprint.hex()}); "
                    f"decode it with the setup that wrote it, or force the attempt (--force, force=True)")
            warnings.warn("decoding a file written by another setup (forced): it may fail "
                          "with a desync", stacklevel=2)
        return self.decode_streams(parsed.y, parsed.z, header.height, header.width, parsed.side,
                                   header.margin, synthesize, header.gain_code)

    def _check_portable(self, header: DcaeHeader, force: bool) -> None:
        if self.model_fingerprint is None:
            problem = "this bundle reads no portable file (its entropy path is not fp32)"
        elif header.fingerprint != self.model_fingerprint:
            problem = (f"file was written with another entropy model (fingerprint {header.fingerprint.hex()}, "
                       f"this bundle's is {self.model_fingerprint.hex()})")
        elif self.backend.sigma_error_bound is None:
            problem = f"the {self.backend.name} backend states no scale error bound, so it reads no portable file"
        elif not margin_covers(header.margin, self.backend.sigma_error_bound):
            problem = (f"the file's margin {header.margin:g} is under twice the {self.backend.name} backend's "
                       f"scale error bound ({self.backend.sigma_error_bound:g})")
        else:
            return
        if not force:
            raise FingerprintMismatchError(problem + "; force the attempt with --force, force=True")
        if self.model_fingerprint is None or self.backend.sigma_error_bound is None:
            raise FingerprintMismatchError(problem)
        warnings.warn(f"{problem}: decoding anyway (forced)", stacklevel=3)
