"""The GPU host's check of TensorRT bundles (run by benchmarks/gpu_check.sh).

    python -m dcae_deploy.bench.gpu_check --kodak DIR BUNDLE [BUNDLE ...]
           [--reference FP32_BUNDLE] [--limit N] [--require-exact]

For each bundle, whose engines must be built (dcae-export build-engines):

1. engines vs onnxruntime: every graph is fed the real inputs it sees when
   the reference bundle (fp32, onnxruntime on the CPU) codes the first image;
   the engine's outputs are compared with that fp32 run and with onnxruntime
   running the same bundle's own graph, and both are timed;
2. Kodak through TensorRT: encode and decode every image; decoding must
   reproduce the encoder's y_hat exactly (the entropy path is deterministic
   on one backend) and end in sync; PSNR, bpp and times per image;
3. fp32 bundles: are TensorRT's y and z streams byte-identical to onnxruntime
   CPU's for the same image? In general they are not (different arithmetic
   moves a few scale indexes; see DESIGN.md), so this reports the number of
   exact images and of differing indexes and symbols, and fails only with
   --require-exact.

Exit status 1 on any failure (an fp32 engine off by more than 1e-3 relative,
a decode that does not reproduce the encoder, a missing engine), 2 when
TensorRT, cuda-python or a GPU is missing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dcae_deploy.runtime.backends import Backend, GraphSession, get_backend
from dcae_deploy.runtime.bundle import Bundle
from dcae_deploy.runtime.codec import Codec
from dcae_deploy.runtime.errors import DcaeError
from dcae_deploy.runtime.imaging import load_image
from dcae_deploy.runtime.metrics import psnr

FP32_ENGINE_TOLERANCE = 1e-3  # max |trt - ort| / max |ort| for fp32 engines
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class _Recorder(Backend):
    """Wraps a backend and keeps each graph's last inputs and outputs."""

    def __init__(self, inner: Backend):
        super().__init__()
        self.inner, self.numeric_class, self.name = inner, inner.numeric_class, inner.name
        self.records: dict[str, tuple[dict, dict]] = {}

    def load(self, graph, path) -> GraphSession:
        recorder, session = self, self.inner.load(graph, path)

        class Recording(GraphSession):
            def _run(self, feed):
                out = session.run(feed)
                # Copies: the codec works on these arrays in place (it clips x_hat).
                recorder.records[graph.name] = ({k: np.array(v) for k, v in feed.items()},
                                                {k: np.array(v) for k, v in out.items()})
                return out

        return Recording(graph, self.timings)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.max(np.abs(want))) or 1.0
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale


def _best_ms(fn, repeat: int = 5) -> float:
    fn()  # warm-up (first TensorRT run at a shape allocates)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def record_reference(reference: Path, image: Path) -> dict:
    """{graph: (inputs, outputs)} of the reference bundle on onnxruntime CPU."""
    recorder = _Recorder(get_backend("onnxruntime"))
    codec = Codec(reference, backend=recorder)
    result = codec.encode(image)
    codec.decode(result.data)
    return recorder.records


def compare_engines(bundle: Bundle, records: dict, trt_backend, say) -> list[str]:
    ort = get_backend("onnxruntime")
    failures = []
    say(f"  {'graph':<16} {'prec':<5} {'vs fp32 ref':>12} {'vs ort same':>12} {'trt ms':>8} {'ort ms':>8}")
    for name, spec in bundle.manifest.graphs.items():
        inputs, reference_out = records[name]
        trt_session = trt_backend.load(spec, bundle.graph_path(name))
        ort_session = ort.load(spec, bundle.graph_path(name))
        got, same = trt_session.run(inputs), ort_session.run(inputs)
        vs_ref = max(_rel(got[k], reference_out[k]) for k in got)
        vs_same = max(_rel(got[k], same[k]) for k in got)
        trt_ms = _best_ms(lambda: trt_session.run(inputs))
        ort_ms = _best_ms(lambda: ort_session.run(inputs), repeat=2)
        flag = ""
        if spec.precision == "fp32" and vs_same > FP32_ENGINE_TOLERANCE:
            flag = "  FAIL"
            failures.append(f"{bundle.path.name}/{name}: fp32 engine differs from onnxruntime by {vs_same:.1e}")
        say(f"  {name:<16} {spec.precision:<5} {vs_ref:12.2e} {vs_same:12.2e} {trt_ms:8.2f} {ort_ms:8.1f}{flag}")
    return failures


def code_images(bundle: Bundle, images: list[Path], trt_backend, say, compare_cpu: bool) -> tuple[list, dict]:
    """Encode and decode every image through TensorRT; for fp32 bundles also
    through onnxruntime CPU, comparing the streams."""
    codec = Codec(bundle, backend=trt_backend)
    codec.load_graphs()
    cpu = Codec(bundle, backend="onnxruntime") if compare_cpu else None
    failures, exact = [], {"images": 0, "exact": 0, "index_diffs": 0, "symbol_diffs": 0}
    say(f"  {'image':<14} {'bpp':>6} {'PSNR':>6} {'enc ms':>8} {'dec ms':>8}" + ("  vs CPU streams" if cpu else ""))
    for path in images:
        pixels = load_image(path)
        start = time.perf_counter()
        encoded = codec.encode(pixels)
        enc_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        try:
            decoded = codec.decode(encoded.data)
        except DcaeError as exc:
            failures.append(f"{bundle.path.name}/{path.name}: decode failed: {exc}")
            say(f"  {path.name:<14} decode FAILED: {exc}")
            continue
        dec_ms = (time.perf_counter() - start) * 1e3
        if not np.array_equal(decoded.y_hat, encoded.y_hat):
            failures.append(f"{bundle.path.name}/{path.name}: decoder's y_hat differs from the encoder's")
        h, w = pixels.shape[:2]
        line = (f"  {path.name:<14} {len(encoded.data) * 8 / (h * w):6.3f} {psnr(pixels, decoded.x):6.2f} "
                f"{enc_ms:8.1f} {dec_ms:8.1f}")
        if cpu is not None:
            reference = cpu.encode(pixels, margin=None)  # as the GPU setup writes: no shifts
            same = reference.y == encoded.y and reference.z == encoded.z
            exact["images"] += 1
            exact["exact"] += same
            exact["index_diffs"] += int(np.count_nonzero(reference.indexes != encoded.indexes))
            exact["symbol_diffs"] += int(np.count_nonzero(reference.symbols != encoded.symbols))
            line += "  identical" if same else (
                f"  DIFFER ({np.count_nonzero(reference.indexes != encoded.indexes)} indexes, "
                f"{np.count_nonzero(reference.symbols != encoded.symbols)} symbols)")
        say(line)
    return failures, exact


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--kodak", type=Path, required=True, help="directory of test images (Kodak)")
    p.add_argument("--reference", type=Path, help="fp32 bundle of the same model (default: the first fp32 one)")
    p.add_argument("--limit", type=int, default=None, help="code only the first N images")
    p.add_argument("--require-exact", action="store_true",
                   help="fail when fp32 engines' streams are not byte-identical to onnxruntime CPU's")
    p.add_argument("--cuda-graphs", action="store_true", help="replay engine launches as CUDA graphs")
    args = p.parse_args(argv)
    say = print

    from dcae_deploy.runtime.tensorrt_backend import TensorRTBackend, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"gpu_check: error: {reason}", file=sys.stderr)
        return 2
    images = sorted(f for f in args.kodak.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    if not images:
        print(f"gpu_check: error: no images in {args.kodak}", file=sys.stderr)
        return 1
    bundles = [Bundle.open(b) for b in args.bundles]
    reference = args.reference or next((b.path for b in bundles if b.manifest.precision == "fp32"
                                        and not b.manifest.reduced_precision_entropy), None)
    if reference is None:
        print("gpu_check: error: no fp32 bundle to compare with: pass --reference", file=sys.stderr)
        return 1
    trt = TensorRTBackend(cuda_graphs=args.cuda_graphs)
    say(f"TensorRT {trt.platform['tensorrt_version']} on {trt.platform['gpu_name']} "
        f"(sm {trt.platform['compute_capability']}, CUDA driver {trt.platform['cuda_driver_version']}); "
        f"reference {reference}; {len(images)} images from {args.kodak}")
    records = record_reference(Path(reference), images[0])
    reference_config = Bundle.open(reference).manifest.model["config"]
    failures = []
    for bundle in bundles:
        if bundle.manifest.model["config"] != reference_config:
            failures.append(f"{bundle.path}: another model than the reference")
            continue
        say(f"\n{bundle.path} ({bundle.manifest.precision}, entropy {bundle.manifest.entropy_precision})")
        try:
            failures += compare_engines(bundle, records, trt, say)
            compare_cpu = not bundle.manifest.reduced_precision_entropy and bundle.manifest.precision == "fp32"
            found, exact = code_images(bundle, images, trt, say, compare_cpu)
        except DcaeError as exc:
            failures.append(f"{bundle.path}: {exc}")
            continue
        failures += found
        if compare_cpu:
            say(f"  streams identical to onnxruntime CPU for {exact['exact']} of {exact['images']} images "
                f"({exact['index_diffs']} scale indexes and {exact['symbol_diffs']} symbols differ in all)")
            if args.require_exact and exact["exact"] != exact["images"]:
                failures.append(f"{bundle.path}: TensorRT fp32 streams differ from onnxruntime CPU's")
    for failure in failures:
        print(f"gpu_check: FAIL: {failure}", file=sys.stderr)
    say(f"\ngpu_check: {'FAILED' if failures else 'passed'} ({len(failures)} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
