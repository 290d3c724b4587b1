"""Where training of the embedded model stands: `dcae.train`'s log as a report.

    python -m benchmarks.training_log runs/small/train_log.jsonl [--out benchmarks/results]

Writes training_log.md (the Kodak evaluations, the training crops' loss, bpp
and PSNR averaged over spans of steps, seconds per step) and copies the log
beside it as training_log.jsonl, appending to what an earlier session left
there: steps already in the checked-in log are kept, newer ones added.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPAN = 250  # steps per row of the training table


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Lines of both, by (kind, step), the newer run's line winning."""
    key = lambda r: ("eval" in r, r["step"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return sorted(merged.values(), key=lambda r: (r["step"], "eval" in r))


def to_markdown(records: list[dict], cpu: str) -> str:
    evals = [r for r in records if "eval" in r]
    train = [r for r in records if "loss" in r]
    lines = ["# Training log of the embedded model (`small` preset)", "",
             f"From `dcae.train`'s `train_log.jsonl` (`python -m benchmarks.training_log`); CPU of the last "
             f"run: {cpu}. Evaluations use the bpp estimated from the likelihoods of the rounded latents (not "
             "coded bytes) and the PSNR of the reconstruction; the shipped model's coded results, with JPEG "
             "at the same rate, are in kodak_rd.md.", "", "## Evaluations", "",
             "| step | images | bpp (estimated) | PSNR (dB) |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['eval']['images']} | {r['eval']['bpp']:.4f} | {r['eval']['psnr']:.2f} |"
              for r in evals]
    if not evals:
        lines.append("| - | - | - | - |")
    lines += ["", f"## Training crops, mean over spans of {SPAN} steps", "",
              "| steps | lambda | lr | crop | bf16 | loss | bpp | PSNR (dB) | s/step |",
              "|---|---|---|---|---|---|---|---|---|"]
    spans: dict[int, list[dict]] = {}
    for r in train:
        spans.setdefault((r["step"] - 1) // SPAN, []).append(r)
    for span, rows in sorted(spans.items()):
        mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
        last = rows[-1]
        lines.append(f"| {span * SPAN + 1}-{last['step']} | {last['lmbda']} | {last['lr']:g} | {last['crop']} | "
                     f"{last['bf16']} | {mean('loss'):.3f} | {mean('bpp'):.4f} | {mean('psnr'):.2f} | "
                     f"{mean('s_per_step'):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks.machine import cpu_description

    p = argparse.ArgumentParser(prog="python -m benchmarks.training_log", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="a train_log.jsonl written by python -m dcae.train")
    p.add_argument("--out", default="benchmarks/results", help="folder for training_log.md/.jsonl")
    args = p.parse_args(argv)
    log, out = Path(args.log), Path(args.out)
    if not log.is_file():
        print(f"error: {log} is not a file", file=sys.stderr)
        return 2
    try:
        records = read_log(log)
    except (json.JSONDecodeError, KeyError) as exc:
        print(f"error: {log} is not a dcae.train log ({exc})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "training_log.jsonl"
    if kept.is_file():
        records = merge(read_log(kept), records)
    kept.write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "training_log.md").write_text(to_markdown(records, cpu_description()))
    print(f"wrote {out / 'training_log.md'} ({len(records)} lines of log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
