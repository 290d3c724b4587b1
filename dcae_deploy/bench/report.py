"""report.md and the PNG plots, from the report dict that becomes report.json."""
from __future__ import annotations

from pathlib import Path

LATENCY_PLOT = "latency_by_stage.png"
RD_PLOT = "rate_distortion.png"
CURVES_PLOT = "rd_curves.png"  # with --qualities: every setup's curve and the codecs
# Stage groups of the stacked bars: slices summed, in pipeline order.
STAGE_GROUPS = [("load / pad", ("load",)), ("g_a", ("g_a",)), ("h_a", ("h_a",)), ("z coding", ("z_coding",)),
                ("h_s", ("h_s",)), ("slice params", ("slice_params_",)), ("slice coding", ("slice_coding_",)),
                ("slice lrp", ("slice_lrp_",)), ("y coding", ("y_coding",)), ("g_s", ("g_s",)),
                ("crop", ("crop",))]


def _timing_plan(options: dict) -> str:
    if options.get("no_speed"):
        return "no timing (--no-speed): rate-distortion and the decodability matrix only."
    rounds = options.get("rounds", 1)
    at = " Timing at quality 50, the reference rate." if options.get("qualities") else ""
    if rounds == 1:
        return f"warm-up 1 run per image, then {options['repeats']} timed runs.{at}"
    return (f"{rounds} rounds, the setups in turn, each setup in a fresh process per round: warm-up 1 run per "
            f"image, then {options['repeats']} timed runs ({rounds * options['repeats']} per image in all, pooled; "
            f"stages: mean over rounds of each round's median).{at}")


def stage_order(names) -> list[str]:
    """Stages in pipeline order: slices by index, params / coding / lrp within one."""
    fixed = ["load", "g_a", "h_a", "z_coding", "h_s"]
    tail = ["y_coding", "g_s", "crop"]
    kinds = ["params", "coding", "lrp"]

    def key(name: str):
        if name in fixed:
            return (0, fixed.index(name), 0)
        if name.startswith("slice_"):
            kind, _, index = name[len("slice_"):].rpartition("_")
            if index.isdigit() and kind in kinds:
                return (1, int(index), kinds.index(kind))
        if name in tail:
            return (2, tail.index(name), 0)
        return (3, 0, 0)

    return sorted(names, key=key)


def _fmt(value, spec=".2f", missing="–") -> str:
    return missing if value is None else format(value, spec)


def grouped_stages(stages: dict, end_to_end_ms: float) -> dict:
    """{group: ms}, plus "other" = end-to-end minus the stages (container,
    Python between stages)."""
    out = {}
    for label, keys in STAGE_GROUPS:
        total = sum(v for k, v in stages.items() if any(k == p or (p.endswith("_") and k.startswith(p))
                                                          for p in keys))
        if total:
            out[label] = total
    out["other"] = max(0.0, end_to_end_ms - sum(out.values()))
    return out


# ---- plots --------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_latency(report: dict, path: Path) -> bool:
    measured = [s for s in report["setups"] if s.get("speed")]
    if not measured:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.6 * len(measured) + 2.2), sharey=True)
    cmap = plt.get_cmap("tab20")
    labels = [label for label, _ in STAGE_GROUPS] + ["other"]
    colors = {label: cmap(i) for i, label in enumerate(labels)}
    names = [s["name"] for s in measured]
    for ax, direction in zip(axes, ("encode", "decode")):
        for row, s in enumerate(measured):
            speed = s["speed"]
            groups = grouped_stages(speed["stages_ms"][direction], speed[f"{direction}_ms_mean_of_medians"])
            left = 0.0
            for label in labels:
                width = groups.get(label, 0.0)
                if width:
                    ax.barh(row, width, left=left, color=colors[label], edgecolor="white", linewidth=0.5,
                            label=label)
                    left += width
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("ms per image (mean over images of the median run)")
        ax.set_title(f"{direction}")
        ax.grid(axis="x", alpha=0.3)
    handles, legend_labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in legend_labels:
                handles.append(h)
                legend_labels.append(lab)
    order = [legend_labels.index(lab) for lab in labels if lab in legend_labels]
    fig.legend([handles[i] for i in order], [legend_labels[i] for i in order], loc="lower center",
               ncol=min(6, len(order)), fontsize=8, frameon=False)
    fig.suptitle(f"Latency by stage ({report['machine']['cpu']}, threads: {report['machine']['threads']})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_rate_distortion(report: dict, path: Path) -> bool:
    with_rd = [s for s in report["setups"] if s.get("rd")]
    if not with_rd:
        return False
    bundles = [b["label"] for b in report["bundles"]]
    torch_setup = next((s for s in with_rd if s["kind"] == "torch"), None)
    groups = [(b, [s for s in with_rd if s.get("bundle") == b]) for b in bundles]
    groups = [(b, members) for b, members in groups if members] or [("reference", [torch_setup])]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    for ax, (label, members) in zip(axes[0], groups):
        shown = members + ([torch_setup] if torch_setup and torch_setup not in members else [])
        for k, s in enumerate(shown):
            rows = s["rd"]["images"]
            marker = "x" if s["kind"] == "torch" else "o"
            ax.scatter([r["bpp"] for r in rows], [r["psnr-rgb"] or 0 for r in rows], s=14, alpha=0.5,
                       marker=marker, color=f"C{k}")
            mean = s["rd"]["mean"]
            ax.scatter([mean["bpp"]], [mean["psnr-rgb"]], s=90, marker=marker, color=f"C{k}",
                       edgecolor=None if marker == "x" else "black", label=f"{s['name']} (mean {mean['bpp']:.3f} bpp, "
                                                f"{_fmt(mean['psnr-rgb'])} dB)")
        jpeg_rows = members[0]["rd"]["images"]
        if jpeg_rows and "jpeg" in jpeg_rows[0]:
            ax.scatter([r["jpeg"]["bpp"] for r in jpeg_rows], [r["jpeg"]["psnr-rgb"] or 0 for r in jpeg_rows],
                       s=14, alpha=0.5, marker="s", color="grey")
            mean = members[0]["rd"]["mean"]
            ax.scatter([mean["jpeg_bpp"]], [mean["jpeg_psnr-rgb"]], s=90, marker="s", color="grey",
                       edgecolor="black", label=f"JPEG 4:2:0 at the same rate (mean {mean['jpeg_bpp']:.3f} bpp, "
                                                f"{_fmt(mean['jpeg_psnr-rgb'])} dB)")
        ax.set_xlabel("bpp (file bytes)")
        ax.set_ylabel("PSNR RGB (dB)")
        ax.set_title(f"bundle {label}: per image (small) and mean (large)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(report: dict, path: Path) -> bool:
    """Every setup's curve over the qualities with the codecs' (rd_curves.png)."""
    from .rd_curves import plot

    curves = report["rd_curves"]
    if not curves["setups"]:
        return False
    images = len(report["options"]["images"])
    plot(curves["codec_curves"], list(curves["setups"].values()), path,
         title=f"{images} image(s) from {report['options']['images_dir']}")
    return True


def portable_totals(matrix: dict) -> dict | None:
    """Decodes of portable files between two setups that write them (each
    must decode every other's): how many, and how many did not give the
    encoder's symbols. None for a report without the list of portable setups."""
    if "portable" not in matrix:
        return None
    portable = set(matrix["portable"])
    cells = [c for c in matrix["cells"] if c["encoder"] != c["decoder"] and {c["encoder"], c["decoder"]} <= portable]
    return {"setups": len(portable), "decodes": sum(c["images"] for c in cells),
            "failed": sum(c["images"] - c["identical"] - c["decoded"] - c.get("symbols_exact", 0) for c in cells)}


# ---- markdown -----------------------------------------------------------------------

def _speedup_cell(up) -> str:
    return f"{up['encode']:.2f}× / {up['decode']:.2f}×" if up else "–"


def _headline(report: dict) -> list[str]:
    compiled = any(s.get("speedup_vs_torch_compile") for s in report["setups"])
    extra = " speed-up vs torch-compile (enc / dec) |" if compiled else ""
    lines = ["| setup | precision | encode ms | decode ms | speed-up vs torch (enc / dec) |" + extra +
             " bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|---|" + ("---|" if compiled else "") + "---|---|---|"]
    for s in report["setups"]:
        if not s["available"]:
            continue
        speed, rd = s.get("speed"), (s.get("rd") or {}).get("mean", {})
        missing = "failed" if s.get("speed_error") else "–"
        enc = _fmt(speed["encode_ms"]["median"], ".1f") if speed else missing
        dec = _fmt(speed["decode_ms"]["median"], ".1f") if speed else missing
        speedup = _speedup_cell(s.get("speedup_vs_torch"))
        if compiled:
            speedup += f" | {_speedup_cell(s.get('speedup_vs_torch_compile'))}"
        lines.append(f"| {s['name']} | {s['precision']} | {enc} | {dec} | {speedup} | {_fmt(rd.get('bpp'), '.4f')} | "
                     f"{_fmt(rd.get('psnr-rgb'))} | {_fmt(rd.get('ms-ssim-rgb'), '.4f')} |")
    return lines


def _speed_details(report: dict) -> list[str]:
    lines = ["| setup | encode median [p25, p75] (min–max) ms | decode median [p25, p75] (min–max) ms | "
             "images/s enc / dec | load s | peak RSS MB (Δ from before load) | decode-only process: peak RSS MB (Δ) |",
             "|---|---|---|---|---|---|---|"]
    for s in report["setups"]:
        speed = s.get("speed")
        if not speed:
            continue

        def cell(d):
            return f"{d['median']:.1f} [{d['p25']:.1f}, {d['p75']:.1f}] ({d['min']:.1f}–{d['max']:.1f})"

        def peak(mem):
            return f"{mem['peak_rss_mb']:.0f} (+{mem['peak_delta_mb']:.0f})" if mem else "–"

        lines.append(f"| {s['name']} | {cell(speed['encode_ms'])} | {cell(speed['decode_ms'])} | "
                     f"{speed['encode_images_per_second']:.2f} / {speed['decode_images_per_second']:.2f} | "
                     f"{speed['load_seconds']:.2f} | {peak(speed['memory'])} | {peak(speed.get('decode_memory'))} |")
    return lines


def _compile_notes(report: dict) -> list[str]:
    """What a compiling setup's load time holds: cold compile or warm start, per round."""
    lines = []
    for s in report["setups"]:
        speed = s.get("speed") or {}
        if not speed.get("load_includes_first_call"):
            continue
        rounds = []
        for k, (load, cold) in enumerate(zip(speed.get("load_seconds_by_round", []),
                                             speed.get("inductor_cache_was_empty_by_round", [])), 1):
            state = "empty cache: cold compile" if cold else "warm cache" if cold is False else "cache state unknown"
            rounds.append(f"round {k} {load:.1f} s ({state})")
        decode = (speed.get("decode_memory") or {}).get("load_and_first_decode_seconds")
        given = (report.get("options") or {}).get("inductor_cache")
        lines += [f"load s of {s['name']}: the model's load plus the first image's encode and decode, which compile "
                  f"the networks (torch.compile compiles at the first call); the table shows the median over rounds"
                  + (f": {', '.join(rounds)}" if rounds else "")
                  + (f". Its decode-only process (warm cache) loads and decodes its first file in {decode:.1f} s"
                     if decode is not None else "")
                  + (f". Inductor cache given: {given}" if given else
                     ". The run started from an empty inductor cache") + ".", ""]
    return lines


def _stage_table(report: dict, direction: str) -> list[str]:
    """Stages x setups in ms; with FLOPs recorded, a GFLOP column and, per
    setup and counted stage, the achieved GFLOP/s and its % of the peak that
    applies (fp32 or int8: see the roofline section)."""
    measured = [s for s in report["setups"] if s.get("speed")]
    if not measured:
        return []
    roof = report.get("roofline") or {}
    gflop = roof.get("gflop") or {}
    stages = stage_order(set(k for s in measured for k in s["speed"]["stages_ms"][direction]))
    flop_col = " GFLOP |" if gflop else ""
    lines = ["| stage |" + flop_col + " " + " | ".join(s["name"] for s in measured) + " |",
             "|---|" + ("---|" if gflop else "") + "---|" * len(measured)]
    for stage in stages:
        cells = []
        for s in measured:
            value = s["speed"]["stages_ms"][direction].get(stage)
            row = ((roof.get("setups") or {}).get(s["name"], {}).get(direction) or {}).get(stage)
            cells.append(_fmt(value, ".2f") + (f" ({_roof_cell(row)})" if row and value else ""))
        flops = f" {_fmt(gflop.get(stage), '.2f', '')} |" if gflop else ""
        lines.append(f"| {stage} |{flops} " + " | ".join(cells) + " |")
    total = f" {sum(gflop.get(k, 0.0) for k in stages):.1f} |" if gflop else ""
    lines.append(f"| **end to end** |{total} " + " | ".join(
        f"**{s['speed'][f'{direction}_ms_mean_of_medians']:.2f}**" for s in measured) + " |")
    return lines


def _roof_cell(row: dict) -> str:
    peak = f", {100 * row['fraction_of_peak']:.0f} % {row['peak']}" if row.get("fraction_of_peak") else ""
    rate = format(row["gflops"], ".0f" if row["gflops"] >= 10 else ".2g")
    return f"{rate} GFLOP/s{peak}"


def _roofline(report: dict) -> list[str]:
    from .roofline import PEAK_KEYS, main_row

    roof = report.get("roofline")
    if not roof:
        return ["Not available: no bundle records FLOPs (export_report.json from before they were counted: "
                "re-export)."]
    peaks = roof.get("peaks")
    lines = []
    if peaks:
        rounds = peaks.get("rounds") or []
        bf16 = f", **bf16 {peaks['bf16_gflops']:.0f} GFLOP/s**" if peaks.get("bf16_gflops") else ""
        per_round = ", ".join(f"{kind.split('_')[0]} " + ", ".join(format(r[kind], ".0f") for r in rounds)
                              for kind in PEAK_KEYS if rounds and all(kind in r for r in rounds))
        lines += [f"Machine peaks, measured by this run: **fp32 {peaks['fp32_gflops']:.0f} GFLOP/s**, "
                  f"**int8 {peaks['int8_gops']:.0f} GOP/s**{bf16} ({peaks['method']}; the highest of "
                  f"{len(rounds) or 1} measurement(s), one per round: {per_round}).", ""]
    else:
        lines += ["Machine peaks: not measured (see the run's log).", ""]
    lines += [f"FLOPs: {roof['flops_method']} (bundle {roof['flops_from_bundle']}; padded sizes "
              f"{', '.join(f'{h}x{w}' for h, w in sorted(set(map(tuple, roof['padded_sizes']))))}). "
              "Achieved = the stage's FLOPs / its time (ms in the stage tables); % of the int8 peak for a graph "
              "stored in int8, of the bf16 peak for an image transform (g_a, h_a, g_s) of a float bundle that "
              "the backend runs in bf16 (openvino-bf16), of the fp32 peak otherwise. Graphs that run Winograd "
              "convolutions (the fp32 bundles' entropy graphs) or kernels faster than MLAS's SGEMM can pass "
              "100 %.", ""]
    measured = [s for s in report["setups"] if s["name"] in roof["setups"]]
    stages = stage_order(roof["gflop"])
    lines += ["Per graph where it mainly runs (g_s in the decoder, the others in the encoder):", "",
              "| graph | GFLOP | " + " | ".join(s["name"] for s in measured) + " |",
              "|---|---|" + "---|" * len(measured)]
    for stage in stages:
        cells = []
        for s in measured:
            row = main_row(roof["setups"][s["name"]], stage)
            cells.append(f"{row['ms']:.1f} ms, {_roof_cell(row)}" if row else "–")
        lines.append(f"| {stage} | {roof['gflop'][stage]:.2f} | " + " | ".join(cells) + " |")
    return lines


def _outcome_text(o: dict) -> str:
    parts = []
    if o["identical"]:
        parts.append(f"{o['identical']} identical")
    if o["decoded"]:
        parts.append(f"{o['decoded']} decoded (pixels ±{o['max_pixel_diff']})")
    if o.get("symbols_exact"):
        parts.append(f"{o['symbols_exact']} symbols exact")
    for name, count in o["refused"].items():
        parts.append(f"{count} refused ({name})")
    if o["wrong_silent"]:
        parts.append(f"**{o['wrong_silent']} WRONG WITHOUT ERROR**")
    text = ", ".join(parts) or "–"
    return text + (f" ({o['warned']} with a warning)" if o.get("warned") else "")


def _quality_text(quality) -> str:
    return "–" if quality is None else format(quality, "g")


def _matrix_table(names: list[str], cells: dict, no_check: set) -> list[str]:
    """Encoders (rows) x decoders (columns) of one quality; `cells`: (encoder, decoder) -> cell."""
    header = [f"{n} (no desync check)" if n in no_check else n for n in names]
    lines = ["| encoder ↓ / decoder → | " + " | ".join(header) + " |", "|---|" + "---|" * len(names)]
    for e in names:
        row = []
        for d in names:
            c = cells.get((e, d))
            if not c:
                row.append("–")
                continue
            text = _outcome_text(c)
            if c["forced"]:
                text += f"; forced: {_outcome_text(c['forced'])}"
            row.append(text)
        lines.append(f"| **{e}** | " + " | ".join(row) + " |")
    return lines


def _quality_summary(matrix: dict) -> list[str]:
    """Per quality: the files written and the cross-setup decodes, by outcome."""
    lines = ["| quality | files | cross-setup decodes | to the encoder's symbols | refused | WRONG without error |",
             "|---|---|---|---|---|---|"]
    for q in matrix["qualities"]:
        cells = [c for c in matrix["cells"] if c.get("quality") == q]
        own = sum(c["images"] for c in cells if c["encoder"] == c["decoder"])
        cross = [c for c in cells if c["encoder"] != c["decoder"]]
        exact = sum(c["identical"] + c["decoded"] + c.get("symbols_exact", 0) for c in cross)
        wrong = sum(c["wrong_silent"] for c in cells)
        lines.append(f"| {_quality_text(q)} | {own} | {sum(c['images'] for c in cross)} | {exact} | "
                     f"{sum(c['refused_total'] for c in cross)} | {f'**{wrong}**' if wrong else 0} |")
    return lines


def _matrix(report: dict) -> list[str]:
    matrix = report.get("matrix")
    if not matrix:
        return ["Not run (--speed-only or --no-matrix)."]
    names = matrix["setups"]
    lines = []
    if matrix.get("images") is not None and matrix["images"] < matrix["of_images"]:
        lines += [f"Off the diagonal: the files of the first {matrix['images']} of the {matrix['of_images']} "
                  f"images (--matrix-images); on it, every image.", ""]
    cross = matrix.get("images") or matrix["of_images"]
    pixels = matrix.get("pixel_images", cross)
    if pixels < cross:
        lines += [f"Off the diagonal, the decodes of the first {pixels} images' files synthesize pixels and "
                  f"compare them (*identical*, *decoded*); those of the other {cross - pixels} read the symbols "
                  f"and check the stream's end without running g_s (*symbols exact*; --matrix-pixels): g_s "
                  f"cannot change a symbol.", ""]
    if matrix.get("decodes_counted") and matrix["decodes_run"] < matrix["decodes_counted"]:
        lines += [f"{matrix['decodes_counted']} cross-decodes counted, {matrix['decodes_run']} run: a decoder "
                  f"decodes each distinct file of an image once, and the result counts for every encoder that "
                  f"wrote those same bytes.", ""]
    no_check = {c["decoder"] for c in matrix["cells"] if not c["decoder_detects_desync"]}
    qualities = matrix.get("qualities")
    if qualities:
        lines += [f"Every setup's files at each of the {len(qualities)} qualities, decoded by every setup (a "
                  f"setup that writes the reference rate only has no row at the other qualities: see the "
                  f"notes). Per quality:", ""] + _quality_summary(matrix)
        for q in qualities:
            cells = {(c["encoder"], c["decoder"]): c for c in matrix["cells"] if c.get("quality") == q}
            lines += ["", f"### Quality {_quality_text(q)}", ""] + _matrix_table(names, cells, no_check)
    else:
        lines += _matrix_table(names, {(c["encoder"], c["decoder"]): c for c in matrix["cells"]}, no_check)
    examples = {}
    for c in matrix["cells"]:
        for o in (c, c["forced"] or {}):
            for name, message in o.get("examples", {}).items():
                examples.setdefault(name, message)
    if examples:
        lines += ["", "Refusal messages (one example per error class):", ""]
        lines += [f"- `{name}`: {message}" for name, message in examples.items()]
    wrong = [(c["encoder"], c["decoder"], c.get("quality"), w) for c in matrix["cells"] for w in c["wrong"]]
    if wrong:
        lines += ["", "Silently wrong decodes:", ""]
        lines += [f"- {e} → {d}, {w['image']}{'' if q is None else f' at quality {q:g}'}: {w['symbols_wrong']} "
                  f"of {w['symbols']} symbols wrong, PSNR against the right decode "
                  f"{_fmt(w['psnr_vs_right_decode'])} dB" for e, d, q, w in wrong]
    return lines


def _symbol_differences(report: dict) -> list[str]:
    diffs = report.get("symbol_differences")
    if not diffs:
        return ["Not measured."]
    n = max(len(d["per_slice"]) for d in diffs)
    lines = ["| setups | images differing | " + " | ".join(f"slice {i} idx / sym" for i in range(n)) +
             " | all idx / sym |", "|---|---|" + "---|" * (n + 1)]
    for d in diffs:
        per = " | ".join(f"{p['index_fraction']:.2e} / {p['symbol_fraction']:.2e}" for p in d["per_slice"])
        lines.append(f"| {d['a']} vs {d['b']} | {d['images_with_differences']} of {d['images']} | {per} | "
                     f"{d['index_fraction']:.2e} / {d['symbol_fraction']:.2e} |")
    return lines


def _rd_per_image(report: dict) -> list[str]:
    with_rd = [s for s in report["setups"] if s.get("rd")]
    if not with_rd:
        return ["Not measured (--speed-only)."]
    lines = ["| image | " + " | ".join(f"{s['name']} bpp / PSNR / MS-SSIM" for s in with_rd) +
             " | JPEG (at the first setup's rate) q / bpp / PSNR |", "|---|" + "---|" * (len(with_rd) + 1)]
    for k, row in enumerate(with_rd[0]["rd"]["images"]):
        cells = []
        for s in with_rd:
            r = s["rd"]["images"][k] if k < len(s["rd"]["images"]) else None
            cells.append(f"{r['bpp']:.4f} / {_fmt(r['psnr-rgb'])} / {_fmt(r['ms-ssim-rgb'], '.4f')}" if r else "–")
        jpeg = row.get("jpeg")
        jpeg_text = f"q{jpeg['quality']} / {jpeg['bpp']:.4f} / {_fmt(jpeg['psnr-rgb'])}" if jpeg else "–"
        lines.append(f"| {row['image']} | " + " | ".join(cells) + f" | {jpeg_text} |")
    lines += ["", "| setup | mean bpp | mean PSNR | mean MS-SSIM | JPEG mean bpp | JPEG mean PSNR |",
              "|---|---|---|---|---|---|"]
    for s in with_rd:
        m = s["rd"]["mean"]
        lines.append(f"| {s['name']} | {_fmt(m['bpp'], '.4f')} | {_fmt(m['psnr-rgb'])} | "
                     f"{_fmt(m['ms-ssim-rgb'], '.4f')} | {_fmt(m.get('jpeg_bpp'), '.4f')} | "
                     f"{_fmt(m.get('jpeg_psnr-rgb'))} |")
    return lines


def _rd_curves(report: dict) -> list[str]:
    from .rd_curves import codec_lines, msssim_db

    curves = report["rd_curves"]
    setups = curves["setups"]
    if not setups:
        return ["No setup coded at the qualities."]
    n = max(p["images"] for c in setups.values() for p in c["points"])
    lines = [f"Each setup codes every image at each quality; a point is the mean bpp (whole files) and the mean "
             f"PSNR / MS-SSIM (RGB) over the {n} images. The codecs run their quality sweeps on the same images "
             f"(dcae_deploy.bench.codecs):", ""]
    lines += codec_lines(curves["codecs"]) or [
        "- none" + ("" if curves["codecs_not_available"] else " (--codecs none)")]
    lines += [f"- {name}: not available: {reason}" for name, reason in curves["codecs_not_available"].items()]
    lines += ["", "| setup | quality | gain code | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) |",
              "|---|---|---|---|---|---|---|"]
    for name, curve in setups.items():
        for p in curve["points"]:
            lines.append(f"| {name} | {_quality_text(p['quality'])} | {p['gain_code']} | {_fmt(p['bpp'], '.4f')} | "
                         f"{_fmt(p['psnr'])} | {_fmt(p['ms_ssim'], '.4f')} | {_fmt(msssim_db(p['ms_ssim']))} |")
    if report["plots"].get("rd_curves"):
        lines += ["", f"![rate-distortion curves]({report['plots']['rd_curves']})"]
    codecs = [c["label"] for c in curves["codec_curves"].values()]
    if codecs:
        for metric, title in (("psnr", "PSNR"), ("ms_ssim", "MS-SSIM in dB")):
            lines += ["", f"BD-rate against each codec, on {title} (negative: the setup needs that many fewer bits "
                          f"for the same quality; Bjontegaard, monotone cubic interpolation of log bpp over the "
                          f"quality range both curves cover):", "",
                      "| setup | " + " | ".join(codecs) + " |", "|---|" + "---|" * len(codecs)]
            for name, table in curves["bd_rate"].items():
                cells = [table[c][metric] for c in codecs]
                lines.append(f"| {name} | " + " | ".join("no common range" if v is None else f"{v:+.1f} %"
                                                          for v in cells) + " |")
    return lines


def markdown(report: dict) -> str:
    m = report["machine"]
    totals = report.get("silent_wrong") or {}
    lines = [f"# dcae-bench: PyTorch vs ONNX Runtime vs TensorRT", "",
             f"Command: `{report['command']}`  ", f"Run: {report['created']}", ""]
    failed = report.get("measurement_failed") or []
    if failed:
        lines += [f"> **FAILURE: the speed of {len(failed)} setup(s) could not be measured.**", ">"]
        lines += [f"> - {f['setup']}: {f['reason']}" for f in failed]
        lines.append("")
    from .scaling import scaling_failures

    scaling_failed = scaling_failures(report.get("scaling"))
    if scaling_failed:
        lines += [f"> **FAILURE: {len(scaling_failed)} Scaling run(s) failed for another reason than memory.**",
                  ">"] + [f"> - {f}" for f in scaling_failed] + [""]
    if totals.get("checked"):
        lines += [f"> **FAILURE: setups decoded {totals['checked']} file(s) WRONGLY WITHOUT AN ERROR.** "
                  "This must never happen; see the decodability matrix.", ""]
    elif report.get("matrix"):
        portable = portable_totals(report["matrix"])
        lines += ["No setup decoded any file wrongly without an error (every file was either decoded to the "
                  "encoder's exact symbols or refused)."]
        if portable is None or portable["setups"] < 2:
            lines.append("")
        elif portable["failed"]:
            lines += ["", f"> **Portable files failed to decode in {portable['failed']} of {portable['decodes']} "
                          f"decodes between the {portable['setups']} setups that write them** (every setup whose "
                          f"entropy graphs are fp32, the PyTorch reference on the CPU): each was refused, "
                          f"see the decodability matrix. Portability promises that none is.", ""]
        else:
            lines[-1] += (f" Portable files (every setup whose entropy graphs are fp32, the PyTorch reference on the "
                          f"CPU; {portable['setups']} setups here) decode on every such setup: "
                          f"{portable['decodes']} of {portable['decodes']} cross-setup decodes.")
            lines.append("")
    unchecked = [c for c in (report.get("matrix") or {}).get("cells", []) if not c["decoder_detects_desync"]]
    if unchecked:
        lines += [f"The PyTorch reference on a GPU writes upstream .bin files and reads them with compressai's "
                  f"decoder, which has no end-of-stream check: a stream whose indexes it recomputes differently "
                  f"decodes to a wrong image without an error. Measured here: **{totals.get('unchecked', 0)}** "
                  f"such decode(s), and **{totals.get('unchecked_forced', 0)}** of files it was forced to read.", ""]
    lines += ["## Machine", "",
              f"- CPU: {m['cpu']}; {m['cores']} cores ({m['usable_cores']} usable); threads: {m['threads']}",
              f"- load average (1, 5, 15 min) at start {m['load_average_start']}, at end {m.get('load_average_end')}"
              " (other jobs on the machine slow every setup alike only if the load is steady)",
              f"- GPU: {m['gpu']}", f"- platform: {m['platform']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
              f"Images: {len(report['options']['images'])} from `{report['options']['images_dir']}` "
              f"({', '.join(report['options']['images'][:6])}{', …' if len(report['options']['images']) > 6 else ''}); "
              + _timing_plan(report['options']), ""]
    headline_quality = report["options"].get("headline_quality")
    at = "" if headline_quality is None else f" at quality {headline_quality:g}"
    if not report["options"].get("sizes_only"):
        lines += ["## Headline", ""] + _headline(report) + [
            "", "encode / decode ms: median over all timed runs of all images; speed-up: the torch setup's median "
            f"divided by this setup's. bpp counts the whole file (header included); PSNR and MS-SSIM on RGB, "
            f"means over images{at}.", ""]
    unavailable = [s for s in report["setups"] if not s["available"]]
    if unavailable or report.get("notes"):
        lines += ["## Not available, and notes", ""]
        lines += [f"- {s['name']}: not available: {s['reason']}" for s in unavailable]
        lines += [f"- {note}" for note in report.get("notes", [])]
        lines.append("")
    if report["options"].get("sizes_only"):
        return "\n".join(lines + ["## Scaling", ""] + _scaling(report)) + "\n"
    if report["options"].get("no_speed"):
        lines += ["## Speed and memory", "", "Not measured (--no-speed)."]
    else:
        lines += _speed_sections(report)
    lines += ["", "## Rate-distortion", ""]
    if headline_quality is not None:
        lines += [f"At quality {headline_quality:g} (qualities coded: "
                  f"{', '.join(format(q, 'g') for q in report['options']['qualities'])}; every quality in the "
                  f"curves below).", ""]
    lines += _rd_per_image(report)
    if report["plots"].get("rate_distortion"):
        lines += ["", f"![rate-distortion]({report['plots']['rate_distortion']})"]
    if report.get("rd_curves"):
        lines += ["", "### Curves over the qualities", ""] + _rd_curves(report)
    lines += ["", "## Decodability matrix", "",
              "Each file encoded by the row's setup, decoded by the column's. *identical*: the encoder's exact "
              "symbols and the encoder setup's own pixels; *decoded*: the exact symbols, pixels differing by "
              "at most the given amount (another g_s precision or backend); *symbols exact*: the exact "
              "symbols, read without synthesizing pixels; *refused*: the decoder raised; "
              "**WRONG**: no error, wrong symbols. The runtime decodes a .bin with a warning and refuses a "
              "foreign .dcae by fingerprint; *forced* is the same file with force=True, where only the "
              "end-of-stream desync check stands between a foreign stream and a wrong image. The reference "
              "decodes a .dcae's streams with DCAE.decompress.", ""] + _matrix(report)
    lines += ["", "## Encoder disagreement per slice", "",
              "Fraction of scale-table indexes / of round(y - mu) symbols that differ between two setups' "
              f"encoders on the same image{at}. A difference in slice i changes the context of later slices, so "
              "later slices inherit it; between setups with different g_a / h_a precision the latents "
              "themselves differ, so these fractions measure that, not numeric noise.", ""] + \
        _symbol_differences(report)
    if report.get("scaling"):
        lines += ["", "## Scaling", ""] + _scaling(report)
    return "\n".join(lines) + "\n"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"


def _scaling_row(row: dict, first: dict | None) -> str:
    size = f"{row['megapixels']:.3g} MP ({row['width']}x{row['height']})"
    if row["outcome"] != "ok":
        where = f"{row['megapixels']:.3g} MP"
        if row["outcome"] == "not tried":
            text = f"not tried ({row['reason']})"
        else:
            text = f"**{row['outcome']} at {where}** ({row['stage']}: {row['reason']})"
        return f"| {size} | {text} |" + " |" * 8
    enc, dec = row["encode_s"] / row["megapixels"], row["decode_s"] / row["megapixels"]
    ratio = "–"
    if first is not None:
        enc0, dec0 = first["encode_s"] / first["megapixels"], first["decode_s"] / first["megapixels"]
        ratio = f"{enc / enc0:.2f}x / {dec / dec0:.2f}x"
    return (f"| {size} | {row['encode_s']:.2f} | {row['decode_s']:.2f} | {enc:.2f} / {dec:.2f} | {ratio} | "
            f"{_mib(row['encode_peak'])} | {_mib(row['decode_peak'])} | {row['bpp']:.4f} | "
            f"{_fmt(row.get('psnr'))} |")


def _scaling(report: dict) -> list[str]:
    from dcae_deploy.runtime.memory import format_size

    section = report["scaling"]
    cap = section.get("cap")
    lines = ["Each size is a mosaic of the images (their aspect ratio, even dimensions), coded in one fresh "
             "process and decoded in another: wall time from start to exit (imports and loading the bundle or "
             "model included) and the process's peak RSS (ru_maxrss). s/MP is seconds per megapixel; the ratio "
             "compares it with the smallest size that ran. Each process on the CPU runs under an address-space "
             f"cap ({format_size(cap) if cap else 'none'} unless the setup's line says otherwise; the address "
             "space exceeds the RSS by the libraries and allocator arenas): a size that needs more is out of "
             "memory, and the setup's larger sizes are not tried. Runtime and C++ host memory limit "
             f"(--memory-limit): {section.get('memory_limit') or 'their default, half the memory available'}; "
             f"threads: {section.get('threads') or 'each program default'}.", ""]
    for entry in section["setups"]:
        first = next((r for r in entry["rows"] if r["outcome"] == "ok"), None)
        lines += [f"### {entry['setup']}", "", f"Commands: `{entry['compress']}`, `{entry['decompress']}`; "
                  f"address-space cap {format_size(entry['cap']) if entry['cap'] else 'none'}.", "",
                  "| size | encode s | decode s | s/MP (enc / dec) | s/MP vs smallest (enc / dec) | "
                  "peak RSS encode (MiB) | peak RSS decode (MiB) | bpp | PSNR (dB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [_scaling_row(row, first) for row in entry["rows"]]
        lines.append("")
    for item in section.get("not_run", []):
        lines.append(f"- {item['setup']}: not measured: {item['reason']}")
    if section.get("not_run"):
        lines.append("")
    return lines


def _speed_sections(report: dict) -> list[str]:
    lines = ["## Speed and memory", ""] + _speed_details(report)
    if report["setups"] and any(s.get("speed") for s in report["setups"]):
        lines += ["", report["memory_method"] + ". Decode-only process: a second fresh process that loads the setup "
                  "and decodes each image's file once, nothing else (what a decoder host holds).", ""]
    lines += _compile_notes(report)
    lines += ["### Latency by stage, encode (ms, mean over images of the median run; in brackets the achieved "
              "GFLOP/s and % of the machine's peak, see Roofline)", ""] + \
        _stage_table(report, "encode") + ["", "### Latency by stage, decode", ""] + _stage_table(report, "decode")
    lines += ["", "### Roofline", ""] + _roofline(report)
    if report["plots"].get("latency"):
        lines += ["", f"![latency by stage]({report['plots']['latency']})"]
    return lines


def write_report_files(report: dict, out: Path) -> None:
    """Plots first (report.md links them), then report.md."""
    report["plots"] = {
        "latency": LATENCY_PLOT if plot_latency(report, out / LATENCY_PLOT) else None,
        "rate_distortion": RD_PLOT if plot_rate_distortion(report, out / RD_PLOT) else None,
    }
    if report.get("rd_curves"):
        report["plots"]["rd_curves"] = CURVES_PLOT if plot_curves(report, out / CURVES_PLOT) else None
    (out / "report.md").write_text(markdown(report))
