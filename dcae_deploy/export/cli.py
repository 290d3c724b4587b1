"""`dcae-export`: checkpoint -> bundle directory (ONNX graphs, entropy tables, manifest)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dcae_deploy.runtime.fileio import absolute_path

DESCRIPTION = """\
Split a DCAE checkpoint into ONNX graphs (g_a, h_a, h_s, slice_params_0..S-1,
slice_lrp_0..S-1, g_s), check each against PyTorch on a real image at two sizes,
and write a bundle directory that the `dcae` runtime (or a C++ host) loads.

  dcae-export -o bundle/                       embedded default (small) model, fp32
  dcae-export official.pth.tar -o b16/ --precision fp16
  dcae-export -o b8/ --precision int8 --calib TRAIN_DIR

INT8: g_a, h_a and g_s become QDQ graphs (per-channel int8 weights; activations
in the form --int8-target names: onnxruntime's integer kernels by default, or
TensorRT's explicit quantisation), calibrated on --calib-count
crops of the --calib images; the entropy graphs stay fp32 unless
--entropy-precision same. Each graph's error against fp32 on held-out crops is
printed and stored in the bundle as int8_report.json. The recorded graph
inputs are cached (--calib-cache), so exporting the same model again is fast.
"""


def _cache_dir_argument(text: str) -> str:
    return text if text.lower() == "none" else absolute_path(text)


def build_parser() -> argparse.ArgumentParser:
    from dcae_deploy.calibration import CALIBRATION_METHODS, DEFAULT_METHOD
    from dcae_deploy.export import TRANSFORM_TARGETS

    # Paths are made absolute where they are parsed, so that what the bundle's
    # int8 report records (the calibration folder) names the same place from
    # anywhere.
    p = argparse.ArgumentParser(prog="dcae-export", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None, type=absolute_path,
                   help="a DCAE checkpoint (.pth.tar with state_dict, official or ours, with or without "
                        "'module.' prefixes); default: the embedded small model")
    p.add_argument("-o", "--output", required=True, type=absolute_path,
                   help="bundle directory to create (must not exist or be empty)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="precision of the rate/quality graphs g_a, h_a, g_s (default: fp32)")
    p.add_argument("--entropy-precision", choices=["fp32", "same"], default="fp32",
                   help="entropy-parameter graphs (h_s, slice_*): fp32 (default; bitstreams stay decodable by "
                        "any fp32 bundle of this model on the same backend class) or 'same' as --precision "
                        "(smaller and faster; bitstreams then decode only with this bundle on the same backend)")
    p.add_argument("--no-winograd", dest="winograd", action="store_false",
                   help="keep the fp32 entropy graphs' wide 3x3 convs plain instead of Winograd F(4x4, 3x3): "
                        "slower (official model at 768x512: ~0.14 s per encode and per decode on 2 cores), "
                        "closer to PyTorch's arithmetic (fewer scale indexes differ from the reference's)")
    p.add_argument("--transforms-for", choices=TRANSFORM_TARGETS, default="onnxruntime",
                   help="the runtime whose kernels the image transforms' graph form (g_a, h_a, g_s) suits: "
                        "onnxruntime (default) or openvino, whose window attention stays head-major "
                        "(official model at 768x512, OpenVINO bf16: g_a and g_s about 15 %% faster, "
                        "onnxruntime about 7 %% slower). Every backend runs either form; the entropy graphs "
                        "and the files are the same")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the checks")
    p.add_argument("--calib", metavar="DIR", type=absolute_path,
                   help="calibration images for --precision int8 (PNG/JPEG/TIFF)")
    p.add_argument("--calib-count", type=int, default=32, help="number of calibration crops (default: 32)")
    p.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=DEFAULT_METHOD,
                   help=f"activation range estimation for int8 (default: {DEFAULT_METHOD})")
    p.add_argument("--calib-holdout", type=int, default=4, metavar="N",
                   help="held-out crops (from images calibration does not use) on which the int8 graphs' "
                        "error against fp32 is measured and stored in int8_report.json (default: 4)")
    p.add_argument("--calib-crop", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="calibration crop size, multiples of 128, at least 256 (default: 256 256)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed that picks the crops (default: 0)")
    p.add_argument("--calib-cache", metavar="DIR", default=None, type=_cache_dir_argument,
                   help="where recorded graph inputs are cached, so a second export of the same model and "
                        "images does not rerun the reference (default: ~/.cache/dcae-deploy/calibration; "
                        "'none' to disable)")
    p.add_argument("--int8-target", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="the runtime the int8 graphs are quantised for. onnxruntime (default): uint8 "
                        "asymmetric activations, int32 biases, Q/DQ on the inputs of weighted ops and the outputs of "
                        "convs, depthwise convs float, Linear layers as MatMulIntegerToFloat with their bias "
                        "(an onnxruntime contrib op), which onnxruntime's CPU provider runs as integer "
                        "kernels (VNNI/AMX). tensorrt: int8 symmetric activations and float biases, the only "
                        "form TensorRT's explicit quantisation takes (onnxruntime then runs its convs "
                        "dequantised as float kernels: slower than fp32)")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build TensorRT engines (needs TensorRT and a CUDA GPU; never run on a GPU: "
                        "built and tested against a simulated TensorRT API only)")
    p.add_argument("--margin-images", metavar="DIR", default=None,
                   help="images to check the model's portable margin on (default: the export's check image). The "
                        "bundle records the model's margin (dcae.margin: computed by the reference from its float32 "
                        "and float64 scales); the export then measures how far the scales of the reference (default "
                        "and AVX2 kernels), onnxruntime and OpenVINO stray from float64 here, records it, and fails "
                        "if one strays half the margin or more (dcae_deploy.export.portable_margin)")
    p.add_argument("--no-margin-measure", action="store_true",
                   help="skip that check (the bundle still records the model's margin)")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "build-engines":
        from .tensorrt_build import main as build_engines_main

        return build_engines_main(argv[1:])
    args = build_parser().parse_args(argv)
    quiet_library_warnings()
    say = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr))
    try:
        return _export(args, say)
    except KeyboardInterrupt:
        print("dcae-export: interrupted", file=sys.stderr)
        return 130


def _export(args, say) -> int:
    from dcae.checkpoint import CheckpointError, load_checkpoint
    from dcae_deploy.runtime.errors import DcaeError

    from .export import ExportError, export_bundle, peak_rss_mb, summary_table

    quantize = None
    if args.precision == "int8" and not args.calib:
        return _fail("--precision int8 needs calibration images: pass --calib DIR")
    if args.tensorrt and args.precision == "int8" and args.int8_target != "tensorrt":
        return _fail("--tensorrt with --precision int8 needs --int8-target tensorrt (TensorRT takes only "
                     "int8-symmetric Q/DQ with float biases)")
    if args.tensorrt:
        from .tensorrt_check import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            return _fail(f"--tensorrt: {reason}")
    t0 = time.perf_counter()
    try:
        model = load_checkpoint(args.checkpoint)
        source = args.checkpoint or _default_checkpoint()
        say(f"model: preset {model.preset}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
        if args.precision == "int8":
            quantize = _int8_quantizer(model, args, say)
        margin_images = _margin_images(args.margin_images) if args.margin_images else None
        manifest, reports = export_bundle(
            model, args.output, precision=args.precision, entropy_precision=args.entropy_precision,
            opset=args.opset, source_checkpoint=source, preset=model.preset, threads=args.threads,
            progress=say, quantize=quantize, winograd=args.winograd, transforms_for=args.transforms_for,
            measure_margin=not args.no_margin_measure, margin_images=margin_images)
    except (CheckpointError, ExportError, DcaeError, OSError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    say(summary_table(reports))
    if quantize is not None:
        from dcae_deploy.calibration.quantize import format_report

        say(format_report(quantize.report()))
    say(f"bundle written to {args.output} in {time.perf_counter() - t0:.1f} s; "
        f"peak memory {peak_rss_mb():.0f} MB; entropy fingerprint {manifest.entropy_fingerprint[:16]}")
    if manifest.reduced_precision_entropy:
        say("note: entropy-parameter graphs are not fp32: bitstreams decode only with this bundle "
            "on the same backend")
    if args.tensorrt:
        from .tensorrt_build import build_engines

        try:  # runs the static TensorRT check of the graphs first
            build_engines(Path(args.output), progress=say)
        except (DcaeError, OSError) as exc:
            return _fail(f"--tensorrt: {' '.join(str(exc).split())} (the bundle itself was written)")
    return 0


def _int8_quantizer(model, args, say):
    from dcae_deploy.calibration.cache import default_cache_dir
    from dcae_deploy.calibration.images import check_crop_size

    from .calibrate import make_int8_quantizer

    cache = args.calib_cache
    cache_dir = None if cache is not None and cache.lower() == "none" else (cache or default_cache_dir())
    return make_int8_quantizer(model, args.calib, count=args.calib_count, method=args.calib_method,
                               holdout=args.calib_holdout, seed=args.calib_seed,
                               crop_size=check_crop_size(args.calib_crop), cache_dir=cache_dir,
                               progress=None if args.quiet else say, threads=args.threads or 1,
                               target=args.int8_target)


def _margin_images(folder: str) -> list:
    from dcae_deploy.runtime.errors import BadInputError
    from dcae_deploy.runtime.imaging import load_image
    from dcae_deploy.runtime.inputs import IMAGE_SUFFIXES

    path = Path(folder)
    if not path.is_dir():
        raise BadInputError(f"--margin-images: {folder} is not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"--margin-images: no images in {folder}")
    return [load_image(p) for p in files]


def quiet_library_warnings() -> None:
    """torch and compressai warn on import and while tracing (deprecations,
    TracerWarnings); they say nothing to a user of the CLI."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module=r"torch(\..*)?$")


def _default_checkpoint():
    from dcae.checkpoint import DEFAULT_CHECKPOINT

    return DEFAULT_CHECKPOINT


def _fail(message: str) -> int:
    print(f"dcae-export: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
