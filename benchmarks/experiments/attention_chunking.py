"""How much the stage-1 window attention gains from running on a few windows
at a time (so that its score matrices stay in cache).

    python benchmarks/experiments/attention_chunking.py [--size 512x768] [--threads 2] [--repeats 5]

Builds the chain the image graphs run for one block (q @ k^T * scale + relative
bias -> Softmax -> @ v; window-pixel-major inputs as `dcae_deploy.export.rewrites` traces
them) as a standalone onnxruntime graph, and times, side by side in one run:
every window at once (the bundles before the chunking), the windows split into
`dcae_deploy.export.rewrites.ATTENTION_CHUNKS` chunks inside one graph (what g_a / g_s do
now for blocks with 8 channels per head), and one row of windows per call (what
a Loop over window rows would do); prints each and its ratio to the first.
Random inputs: the chain's cost does not depend on the values. Not a model
measurement: the whole-graph effect is in `dcae_deploy/export/rewrites.py`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

WINDOW = 8  # the official configuration's window size (64 pixels per window)


def attention_chain(windows: int, heads: int, head_dim: int, threads: int, chunks: int = 1):
    """The chain on `windows` windows, in `chunks` equal chunks of windows."""
    import onnx
    import onnx.helper as oh
    import onnxruntime as ort

    pixels = WINDOW * WINDOW
    rng = np.random.default_rng(0)
    constants = [
        onnx.numpy_helper.from_array(rng.standard_normal((heads, pixels, pixels)).astype(np.float32), "bias"),
        onnx.numpy_helper.from_array(np.array(head_dim ** -0.5, np.float32), "scale"),
    ]
    def chain(q: str, k: str, v: str, out: str) -> list:
        return [
            oh.make_node("Transpose", [q], [f"{q}_t"], perm=[1, 2, 0, 3]),
            oh.make_node("Transpose", [k], [f"{k}_t"], perm=[1, 2, 3, 0]),
            oh.make_node("Transpose", [v], [f"{v}_t"], perm=[1, 2, 0, 3]),
            oh.make_node("MatMul", [f"{q}_t", f"{k}_t"], [f"{out}_scores"]),
            oh.make_node("Mul", [f"{out}_scores", "scale"], [f"{out}_scaled"]),
            oh.make_node("Add", [f"{out}_scaled", "bias"], [f"{out}_biased"]),
            oh.make_node("Softmax", [f"{out}_biased"], [f"{out}_weights"], axis=-1),
            oh.make_node("MatMul", [f"{out}_weights", f"{v}_t"], [out]),
        ]

    if chunks == 1:
        nodes = chain("q", "k", "v", "out")
    else:
        from dcae_deploy.export.rewrites import chunk_bounds

        bounds = chunk_bounds(windows, chunks)
        constants.append(onnx.numpy_helper.from_array(np.diff(bounds).astype(np.int64), "split"))
        nodes = [oh.make_node("Split", [n, "split"], [f"{n}{i}" for i in range(chunks)], axis=1) for n in "qkv"]
        for i in range(chunks):
            nodes += chain(f"q{i}", f"k{i}", f"v{i}", f"out{i}")
        nodes.append(oh.make_node("Concat", [f"out{i}" for i in range(chunks)], ["out"], axis=0))
    inputs = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [pixels, windows, heads, head_dim]) for n in "qkv"]
    output = oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [windows, heads, pixels, head_dim])
    model = oh.make_model(oh.make_graph(nodes, "attention", inputs, [output], constants),
                          opset_imports=[oh.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _size_argument(text: str) -> tuple[int, int]:
    """--size: a padded image size, HEIGHTxWIDTH, read as `dcae-export
    build-engines` reads its sizes."""
    from dcae_deploy.export.tensorrt_build import EngineBuildError, parse_size

    try:
        return parse_size(text)
    except EngineBuildError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/experiments/attention_chunking.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size_argument, default=(512, 768),
                   help="padded image size HEIGHTxWIDTH (default 512x768)")
    p.add_argument("--heads", type=int, default=12, help="heads of the stage-1 block (official: 12)")
    p.add_argument("--head-dim", type=int, default=8, help="channels per head (official: 8)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each form, alternating")
    args = p.parse_args(argv)
    height, width = args.size
    # stage 1 runs at half the image size (g_a after its first stride-2 conv;
    # g_s before its last upsampler)
    rows, cols = height // 2 // WINDOW, width // 2 // WINDOW
    pixels = WINDOW * WINDOW
    rng = np.random.default_rng(1)
    from dcae_deploy.export.rewrites import ATTENTION_CHUNKS

    sessions = {"all windows at once": attention_chain(rows * cols, args.heads, args.head_dim, args.threads),
                f"{ATTENTION_CHUNKS} chunks in one graph": attention_chain(
                    rows * cols, args.heads, args.head_dim, args.threads, chunks=ATTENTION_CHUNKS)}
    per_row = attention_chain(cols, args.heads, args.head_dim, args.threads)
    q, k, v = (rng.standard_normal((pixels, rows * cols, args.heads, args.head_dim)).astype(np.float32)
               for _ in range(3))
    feeds = {"q": q, "k": k, "v": v}
    row_feeds = [{n: np.ascontiguousarray(t[:, r * cols:(r + 1) * cols]) for n, t in feeds.items()}
                 for r in range(rows)]
    forms = {name: (lambda s=session: s.run(None, feeds)[0]) for name, session in sessions.items()}
    forms["one row of windows per call"] = lambda: np.concatenate([per_row.run(None, f)[0] for f in row_feeds])
    want = forms["all windows at once"]()
    for name, run in forms.items():
        if not np.allclose(run(), want, rtol=1e-5, atol=1e-5):
            print(f"{name}: the result differs from all windows at once", file=sys.stderr)
            return 1
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.repeats):
        for name, run in forms.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    score_mb = rows * cols * args.heads * pixels * pixels * 4 / 2 ** 20
    print(f"stage-1 attention at {height}x{width} (HxW): {rows}x{cols} windows, {args.heads} heads of {args.head_dim}, "
          f"scores {score_mb:.0f} MB; {args.threads} threads, median of {args.repeats}")
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    whole_ms = medians["all windows at once"]
    for name, ms in medians.items():
        print(f"  {name:30s} {ms:8.1f} ms  {whole_ms / ms:.2f}x")
    print("  (ratios: all windows at once / each form; row-by-row input slices are prepared outside the timing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
