"""The bundle manifest: the one definition of what `dcae-export` writes and the
runtime (or a C++ host) reads.

A bundle is a directory:

    manifest.json      this schema, as JSON
    <graph>.onnx       one file per graph (GRAPH_ORDER)
    entropy.npz        the entropy tables (ENTROPY_ARRAYS)
    engines/           optional TensorRT plans (see `engines` in the manifest)

Graphs and their tensors (B = 1; H, W the padded image size, multiples of 128,
>= 256; h = H/16, w = W/16; zh = H/64, zw = W/64; M latent channels, S slices,
c = M/S; Z hyper-latent channels):

    g_a              x (1,3,H,W)                            -> y (1,M,h,w)
    h_a              y (1,M,h,w)                            -> z (1,Z,zh,zw)
    h_s              z_hat (1,Z,zh,zw)                      -> latent_scales, latent_means (1,M,h,w)
    slice_params_i   latent_scales, latent_means,
                     y_hat_prev (1,c*i,h,w; absent for i=0) -> mu, scale (1,c,h,w), support (1,3M+c*i,h,w)
    slice_lrp_i      support, y_hat_raw (1,c,h,w)           -> y_hat (1,c,h,w)
    g_s              y_hat (1,M,h,w)                        -> x_hat (1,3,H,W)

Between the graphs a host does exactly what the reference does: z symbols =
round(z - medians) coded with the factorised tables; per slice, at the
file's quantization gain a (1 unless the quality knob moved it),
index = build_indexes(scale * a), symbols = round((y_slice - mu) * a) (half
to even), y_hat_raw = symbols / a + mu, all in float32, all coded in one
rANS stream in slice order.

`rate_levels` ({"gains": [...], "reference": i, "lambdas": [...]}, optional)
are a variable-rate model's trained gains, onto which the quality knob maps
qualities 0..100 (`dcae_deploy.runtime.quality`).

`bytes_per_pixel` ({"g_a": int, "g_s": int}, optional) is the measured
working memory of each image transform per padded image pixel, from which a
host sizes the tiles it runs them on (`dcae_deploy.runtime.tiling`,
`dcae_deploy.runtime.memory`).

`engines` (empty until `dcae-export build-engines` runs) describes the
TensorRT plans in `engines/` (ENGINES_DIR); a plan runs only on the GPU model
and TensorRT version it was built with, so a runtime refuses it elsewhere:

    tensorrt_version      "10.x.y" that built the plans
    gpu_name              CUDA device name, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability    "9.0"
    cuda_driver_version   CUDA version the driver supports, "12.4"
    cuda_runtime_version  cuda-python's CUDA runtime, "12.6" (null without it)
    profile               {"min": [H, W], "opt": [H, W], "max": [H, W]}: padded
                          image sizes every plan accepts (latent sizes follow:
                          h = H/16, zh = H/64, ...)
    timing_cache          file name in engines/ of the builder's timing cache
    graphs                {graph: {"file": "<graph>.plan" (in engines/),
                          "sha256", "onnx_sha256" (the graph it was built
                          from), "precision", "shapes": {input: {"min": [...],
                          "opt": [...], "max": [...]}}}}
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BundleError
from .portable import DEFAULT_MARGIN, MAX_MARGIN
from .quality import RateLevels

BUNDLE_FORMAT = "dcae-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENTROPY_NAME = "entropy.npz"
ENGINES_DIR = "engines"  # TensorRT plans and timing cache (see `engines` above)
PRECISIONS = ("fp32", "fp16", "int8")
# Arrays of entropy.npz (all int32 except the float32 ones noted).
ENTROPY_ARRAYS = (
    "gaussian_scale_table",  # float32 (64,)
    "gaussian_scale_bound",  # float32 (), the lower bound applied to scales
    "gaussian_cdfs",  # (64, Lmax) quantised CDFs, rows padded
    "gaussian_cdf_lengths",  # (64,)
    "gaussian_offsets",  # (64,)
    "z_medians",  # float32 (Z,)
    "z_cdfs",  # (Z, Lz)
    "z_cdf_lengths",  # (Z,)
    "z_offsets",  # (Z,)
)


# The image transforms: the large graphs that run on tiles of a big image
# (dcae_deploy.runtime.tiling) and whose bytes per pixel the manifest records.
IMAGE_TRANSFORMS = ("g_a", "g_s")


def graph_order(num_slices: int) -> list[str]:
    names = ["g_a", "h_a", "h_s"]
    for i in range(num_slices):
        names += [f"slice_params_{i}", f"slice_lrp_{i}"]
    return names + ["g_s"]


def is_entropy_graph(name: str) -> bool:
    """Graphs whose outputs decide scale indexes and roundings: encoder and
    decoder must compute them bit-identically."""
    return name == "h_s" or name.startswith("slice_")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16"
    shape: list  # ints and symbolic names ("H", "W", "h", "w", "zh", "zw")


@dataclass
class GraphSpec:
    name: str
    file: str
    sha256: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @classmethod
    def from_dict(cls, d: dict) -> "GraphSpec":
        return cls(
            name=d["name"], file=d["file"], sha256=d["sha256"], precision=d["precision"],
            inputs=[TensorSpec(**t) for t in d["inputs"]], outputs=[TensorSpec(**t) for t in d["outputs"]],
        )


@dataclass
class Manifest:
    model: dict  # {"preset": str, "config": DCAEConfig as dict}
    source_checkpoint_sha256: str | None
    graphs: dict[str, GraphSpec]
    entropy_file: str
    entropy_sha256: str
    precision: str  # the requested precision of the rate/quality graphs
    entropy_precision: str  # "fp32", or "same": entropy graphs at `precision` too
    # int8 bundles: the runtime their Q/DQ form is for ("onnxruntime" or
    # "tensorrt", dcae_deploy.calibration.quantize.INT8_FORMS); None otherwise
    int8_target: str | None = None
    # int8 bundles: the bits of the weights' range (7: onnxruntime's reduce_range,
    # whose kernels cannot saturate on CPUs without VNNI; 8). Absent in bundles
    # written before the field, which all have 8-bit weights.
    int8_weight_bits: int | None = None
    padding: dict = field(default_factory=lambda: {"multiple": 128, "min_side": 256, "mode": "centred-zero"})
    tools: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)  # TensorRT plans: see the module docstring
    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION
    entropy_fingerprint: str = ""
    # Hex of the 16 bytes that identify the entropy MODEL (weights of the
    # entropy path and tables, `dcae.coding.entropy_model_fingerprint`): the
    # fingerprint of portable `.dcae` files. Empty for bundles whose entropy
    # graphs are not fp32, which write files for their own setup only.
    entropy_model_fingerprint: str = ""
    # The margin this model's portable files get by default, the model's own
    # (`dcae.margin.model_margin`), how it was computed, and how far the
    # setups that ran at export strayed from float64:
    # {"margin": float, "model_margin": {...}, "measurement": {...}}
    # (`dcae_deploy.export.export_bundle`). No margin: encoders use
    # `dcae_deploy.runtime.portable.DEFAULT_MARGIN`.
    portable: dict = field(default_factory=dict)
    # The image transforms' working memory per padded image pixel, measured
    # at export through onnxruntime: {"g_a": int, "g_s": int} (bytes; see
    # `dcae_deploy.runtime.memory`). The runtime sizes its tiles from it
    # (`dcae_deploy.runtime.tiling`). Empty: not measured; the runtime
    # measures it on first use.
    bytes_per_pixel: dict = field(default_factory=dict)
    # The quality knob's rate levels, from a variable-rate checkpoint:
    # {"gains": [...], "reference": i, "lambdas": [...]}
    # (`dcae_deploy.runtime.quality.RateLevels`). Empty: a model trained at
    # one rate, which gets the untrained rule.
    rate_levels: dict = field(default_factory=dict)

    @property
    def portable_margin(self) -> float:
        """The margin portable files of this bundle's model get by default."""
        return float(self.portable.get("margin", DEFAULT_MARGIN))

    @property
    def num_slices(self) -> int:
        return int(self.model["config"]["num_slices"])

    @property
    def int8_weights_saturate_without_vnni(self) -> bool:
        """Whether onnxruntime's CPU kernels saturate on this bundle's int8
        weights where the CPU lacks VNNI (dcae_deploy.calibration.quantize.INT8_FORMS)."""
        has_int8 = any(g.precision == "int8" for g in self.graphs.values())
        return has_int8 and (self.int8_weight_bits or 8) > 7

    @property
    def reduced_precision_entropy(self) -> bool:
        return any(self.graphs[n].precision != "fp32" for n in self.graphs if is_entropy_graph(n))

    def compute_entropy_fingerprint(self) -> str:
        """sha256 over the entropy-parameter graphs (file hash and precision, in
        order) and the entropy tables: what must be identical on both sides."""
        digest = hashlib.sha256(b"dcae-entropy-path-v1")
        for name in graph_order(self.num_slices):
            if is_entropy_graph(name):
                g = self.graphs[name]
                digest.update(f"{name}:{g.precision}:{g.sha256};".encode())
        digest.update(f"tables:{self.entropy_sha256}".encode())
        return digest.hexdigest()

    def to_json(self) -> str:
        d = asdict(self)
        d["graphs"] = [asdict(self.graphs[n]) for n in graph_order(self.num_slices)]
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(d, dict) or d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{MANIFEST_NAME} is not a {BUNDLE_FORMAT} manifest")
        if d.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(f"bundle format version {d.get('format_version')} is not supported "
                              f"(this runtime reads version {BUNDLE_FORMAT_VERSION})")
        try:
            graphs = {g["name"]: GraphSpec.from_dict(g) for g in d.pop("graphs")}
            manifest = cls(graphs=graphs, **d)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{MANIFEST_NAME} is missing or has unknown fields ({exc})") from None
        manifest.validate()
        return manifest

    def validate(self) -> None:
        expected = graph_order(self.num_slices)
        if sorted(self.graphs) != sorted(expected):
            missing = sorted(set(expected) - set(self.graphs))
            raise BundleError(f"manifest graphs do not match the model: missing {missing}")
        for g in self.graphs.values():
            if g.precision not in PRECISIONS:
                raise BundleError(f"graph {g.name} has unknown precision {g.precision!r}")
        if self.entropy_fingerprint != self.compute_entropy_fingerprint():
            raise BundleError("manifest entropy fingerprint does not match its graphs and tables")
        if not isinstance(self.portable, dict):
            raise BundleError("manifest portable record is not an object")
        if "margin" in self.portable:
            margin = self.portable["margin"]
            if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin <= MAX_MARGIN:
                raise BundleError(f"manifest portable margin must be a number in (0, {MAX_MARGIN}], got {margin!r}")
        if not isinstance(self.bytes_per_pixel, dict) or not all(
                name in IMAGE_TRANSFORMS and isinstance(v, int) and not isinstance(v, bool) and v > 0
                for name, v in self.bytes_per_pixel.items()):
            raise BundleError(f"manifest bytes_per_pixel must map g_a and g_s to positive whole numbers, "
                              f"got {self.bytes_per_pixel!r}")

        if not isinstance(self.rate_levels, dict):
            raise BundleError("manifest rate_levels is not an object")
        try:
            RateLevels.from_record(self.rate_levels)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest rate_levels is not a set of rate levels ({exc})") from None

    def write(self, bundle_dir: str | Path) -> None:
        from .fileio import write_atomically

        write_atomically(Path(bundle_dir) / MANIFEST_NAME, self.to_json().encode())

    @classmethod
    def read(cls, bundle_dir: str | Path) -> "Manifest":
        path = Path(bundle_dir) / MANIFEST_NAME
        if not Path(bundle_dir).is_dir():
            raise BundleError(f"bundle not found: {bundle_dir} is not a directory")
        if not path.is_file():
            raise BundleError(f"not a bundle: {path} is missing")
        return cls.from_json(path.read_text())
