"""The coding pass: every image through every setup, and every setup's files
through every other setup's decoder (the decodability matrix).

For each image, each available setup encodes it once (its file is written,
and its own decode gives the rate-distortion row); then every ordered pair
(encoder, decoder) decodes the encoder's file, as a user would: the runtime
through `Codec.decompress` (a .bin with its warning; a portable .dcae of
the same model decodes on every setup; a .dcae for one setup only is refused
by fingerprint elsewhere), the reference by `dcae.coding.decode_dcae` (a
portable .dcae, with the runtime's checks) or `DCAE.decompress` (a .bin). Each outcome falls in exactly one class:

- identical: the decoder read the encoder's symbols, and its pixels equal the
  encoder setup's own decode bit for bit;
- decoded: it read the encoder's symbols, but its pixels differ (another
  g_s precision, or float noise of another backend); max pixel difference kept;
- symbols exact: it read the encoder's symbols and stopped there (the images
  after the first `pixel_images`: `decode(..., synthesize=False)` checks the
  stream's end as a full decode does, without g_s, which cannot change a
  symbol and is most of a decode's time);
- refused: it raised (FingerprintMismatchError, DesyncError, CorruptStreamError;
  any other exception is kept under its class name);
- WRONG: no error, but the symbols it read are not the ones encoded. This is
  the failure that must never happen in the runtime; compressai's decoder has
  no end-of-stream check, so the reference can produce it.

"The symbols it read" are compared exactly: the reference returns them, the
runtime's are recorded by a hook on its slice loop (setups.py). Where the
runtime refuses by fingerprint, the same file is also decoded with
force=True, which shows what the end-of-stream desync check alone would do.

With qualities (dcae-bench --qualities), every setup codes every image at
each quality and the matrix has a cell per (quality, encoder, decoder): every
quality's files are decoded by every setup. A setup that writes the reference
rate only (`codes_qualities` False: the reference on a GPU)
encodes at quality 50 alone, and decodes the others' files at every quality.

A decoder is deterministic: when two encoders wrote byte-identical files
(the C++ host and the Python runtime on the same bundle and backend often
do), the decoder decodes the bytes once per image and the result counts for
both cells; `decodes_run` and `decodes_counted` in the result say how many.

Also, per pair of setups and slice, the fraction of scale-table indexes and
of round(y - mu) symbols that differ between their encoders on the same image.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcae_deploy.runtime.errors import FingerprintMismatchError
from dcae_deploy.runtime.imaging import load_image, save_image

from dcae.metrics import psnr

from .rd import finite_or_none, rd_row
from .setup_types import TORCH_DEVICES, file_gain_code

DEFAULT_QUALITY = 50  # the reference rate: what every encoder writes without a quality

@dataclass
class Outcomes:
    """Counts of one kind of decode attempt in one cell."""

    images: int = 0
    identical: int = 0
    decoded: int = 0
    symbols_exact: int = 0  # the encoder's symbols read, no pixels synthesized
    refused: dict = field(default_factory=dict)  # error class -> count
    wrong_silent: int = 0
    max_pixel_diff: int = 0  # over "decoded" outcomes
    warned: int = 0  # decodes that succeeded with a warning (the runtime on an upstream .bin)
    examples: dict = field(default_factory=dict)  # error class -> one message
    wrong: list = field(default_factory=list)  # per wrong decode: image, symbols wrong, PSNR vs the right image

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["refused_total"] = sum(self.refused.values())
        return d


@dataclass
class Cell:
    encoder: str
    decoder: str
    decoder_detects_desync: bool
    outcomes: Outcomes = field(default_factory=Outcomes)
    forced: Outcomes | None = None  # runtime decoders, files refused by fingerprint
    quality: float | None = None  # the encoder's quality (None: not given, the reference rate)

    def to_dict(self) -> dict:
        return {"quality": self.quality, "encoder": self.encoder, "decoder": self.decoder,
                "decoder_detects_desync": self.decoder_detects_desync, **self.outcomes.to_dict(),
                "forced": self.forced.to_dict() if self.forced else None}


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    return finite_or_none(psnr(a, b))


def _attempt(decode, encoded, right_pixels: np.ndarray, outcomes: Outcomes, image: str):
    """Count the outcome of `decode()` (a `Decoded`, raising where the decoder
    refuses) on `encoded`'s file; return the error or None."""
    outcomes.images += 1
    try:
        decoded = decode()
    except Exception as exc:  # noqa: BLE001 - every refusal is counted by its class
        name = type(exc).__name__
        outcomes.refused[name] = outcomes.refused.get(name, 0) + 1
        outcomes.examples.setdefault(name, " ".join(str(exc).split())[:300])
        return exc
    outcomes.warned += bool(decoded.warnings)
    if decoded.symbols.shape != encoded.symbols.shape or not np.array_equal(decoded.symbols, encoded.symbols):
        outcomes.wrong_silent += 1
        n_wrong = (int(np.count_nonzero(decoded.symbols != encoded.symbols))
                   if decoded.symbols.shape == encoded.symbols.shape else int(encoded.symbols.size))
        outcomes.wrong.append({"image": image, "symbols_wrong": n_wrong, "symbols": int(encoded.symbols.size),
                               "psnr_vs_right_decode": None if decoded.x is None else _psnr(right_pixels, decoded.x)})
    elif decoded.x is None:
        outcomes.symbols_exact += 1
    elif np.array_equal(decoded.x, right_pixels):
        outcomes.identical += 1
    else:
        outcomes.decoded += 1
        diff = int(np.max(np.abs(decoded.x.astype(np.int16) - right_pixels.astype(np.int16))))
        outcomes.max_pixel_diff = max(outcomes.max_pixel_diff, diff)
    return None


class DecodeOnce:
    """One image's cross-decodes: each decoder decodes a given file's bytes
    once (with or without force); a byte-identical file from another encoder
    reuses the result, an error included."""

    def __init__(self, coders: dict, synthesize: bool):
        self.coders, self.synthesize = coders, synthesize
        self.results: dict = {}
        self.run = self.counted = 0

    def __call__(self, decoder: str, data: bytes, force: bool = False):
        self.counted += 1
        key = (decoder, data, force)
        if key not in self.results:
            self.run += 1
            try:
                self.results[key] = self.coders[decoder].decode(data, force=force, synthesize=self.synthesize)
            except Exception as exc:  # noqa: BLE001 - raised again for every file with these bytes
                self.results[key] = exc
        result = self.results[key]
        if isinstance(result, Exception):
            raise result
        return result


class SymbolDifferences:
    """Per pair of setups and slice: how many encoder indexes / symbols differ."""

    def __init__(self):
        self.pairs: dict[tuple[str, str], dict] = {}

    def add(self, a: str, b: str, enc_a, enc_b, num_slices: int) -> None:
        if enc_a.indexes.shape != enc_b.indexes.shape:
            return  # different models: nothing to compare
        entry = self.pairs.setdefault((a, b), {
            "index_diff": np.zeros(num_slices, np.int64), "symbol_diff": np.zeros(num_slices, np.int64),
            "total": np.zeros(num_slices, np.int64), "images": 0, "images_with_differences": 0})
        idx = np.array_split(enc_a.indexes != enc_b.indexes, num_slices, axis=1)
        sym = np.array_split(enc_a.symbols != enc_b.symbols, num_slices, axis=1)
        entry["index_diff"] += [int(s.sum()) for s in idx]
        entry["symbol_diff"] += [int(s.sum()) for s in sym]
        entry["total"] += [s.size for s in idx]
        entry["images"] += 1
        entry["images_with_differences"] += int(any(s.any() for s in idx) or any(s.any() for s in sym))

    def to_list(self) -> list[dict]:
        out = []
        for (a, b), e in self.pairs.items():
            total = np.maximum(e["total"], 1)
            out.append({
                "a": a, "b": b, "images": e["images"], "images_with_differences": e["images_with_differences"],
                "per_slice": [{"slice": i, "index_fraction": float(e["index_diff"][i] / total[i]),
                               "symbol_fraction": float(e["symbol_diff"][i] / total[i]),
                               "indexes_differing": int(e["index_diff"][i]),
                               "symbols_differing": int(e["symbol_diff"][i]), "symbols": int(e["total"][i])}
                              for i in range(len(total))],
                "index_fraction": float(e["index_diff"].sum() / max(e["total"].sum(), 1)),
                "symbol_fraction": float(e["symbol_diff"].sum() / max(e["total"].sum(), 1)),
            })
        return out


def safe_name(setup_name: str) -> str:
    return setup_name.replace(":", "_").replace("/", "_")


def headline_quality(qualities) -> float | None:
    """The quality of the headline, the per-image table and the encoders'
    disagreement: 50 (the reference rate) if among `qualities`, else the
    nearest to it; None without qualities."""
    given = [q for q in qualities or () if q is not None]
    if not given:
        return None
    return min(given, key=lambda q: (abs(q - DEFAULT_QUALITY), q))


def codes_at(coder, quality: float | None) -> bool:
    """Whether `coder` writes files at `quality` (every coder writes the reference rate)."""
    return quality is None or quality == DEFAULT_QUALITY or getattr(coder, "codes_qualities", True)


def quality_label(quality: float | None) -> str:
    return "" if quality is None else f"{quality:g}"


def coding_pass(setups: list, coders: dict, images: list[Path], files_dir: Path, matrix: bool = True,
                with_jpeg: bool = True, progress=print, matrix_images: int | None = None,
                pixel_images: int | None = None, qualities=None) -> dict:
    """Encode every image with every setup (at each of `qualities`, 0..100;
    None: as without a quality, the reference rate), decode (own and, with
    `matrix`, all pairs, for the first `matrix_images` images or every one;
    the pairs' decodes of the first `pixel_images` images synthesize pixels,
    later ones read the symbols only).

    `setups`: the available `Setup`s; `coders`: name -> coder (`open_setup`). Returns {"rd": {setup: [rows at
    the headline quality]}, "rd_by_quality": {setup: [{"quality", "images": [rows]}]} (with qualities),
    "cells": [...], "symbol_differences": [... at the headline quality], "portable": [the setups whose every
    file was a portable .dcae], "qualities", "headline_quality", "matrix_images": how many images' files
    were cross-decoded, "pixel_images": of which how many with pixels, "decodes_run" / "decodes_counted":
    cross-decodes run / counted in the cells}.
    """
    qualities = list(qualities) if qualities else [None]
    headline = headline_quality(qualities)
    names = [s.name for s in setups]
    # Who writes files at each quality; every setup decodes every quality's files.
    encoders = {q: [n for n in names if codes_at(coders[n], q)] for q in qualities}
    # Every decoder checks the stream's end but the reference on the GPU,
    # whose files are upstream .bin (compressai's decoder).
    on_gpu = {s.name for s in setups if s.kind == "torch" and TORCH_DEVICES[s.backend] != "cpu"}
    cells = {(q, e, d): Cell(e, d, decoder_detects_desync=d not in on_gpu, quality=q)
             for q in qualities for e in encoders[q] for d in names if matrix or e == d}
    rd: dict[str, dict] = {n: {q: [] for q in qualities if n in encoders[q]} for n in names}
    differences = SymbolDifferences()
    portable = dict.fromkeys(names, True)
    cross_decoded = min(len(images), matrix_images or len(images)) if matrix else 0
    with_pixels = min(cross_decoded, pixel_images or cross_decoded)
    decodes_run = decodes_counted = 0
    for k, path in enumerate(images, 1):
        t0 = time.perf_counter()
        pixels = load_image(path)
        image = path.name
        checked = run = counted = coded = 0
        synthesize = k <= with_pixels
        for q in qualities:
            writers = encoders[q]
            encoded = {n: coders[n].encode(pixels) if q is None else coders[n].encode(pixels, quality=q)
                       for n in writers}
            coded += len(writers)
            for n in writers:
                portable[n] = portable[n] and _is_portable(encoded[n].data)
            own = {}
            for n in writers:
                folder = files_dir / safe_name(n)
                folder.mkdir(parents=True, exist_ok=True)
                stem = path.stem + (f".q{quality_label(q)}" if q is not None else "")
                file = folder / (stem + encoded[n].suffix)
                file.write_bytes(encoded[n].data)
                # The setup's own decode is the diagonal of the matrix (it must read
                # back exactly the symbols it wrote) and the right image for its row.
                diagonal = cells[(q, n, n)].outcomes
                decoded = _own_decode(coders[n], encoded[n], diagonal, image)
                checked += 1
                if decoded is None:
                    continue
                own[n] = decoded.x
                png = folder / (stem + ".decoded.png")
                save_image(decoded.x, png)
                y, z = _stream_bytes(encoded[n].data)
                # JPEG at the same rate beside the headline quality's rows only:
                # the curves compare the other qualities with whole codec sweeps.
                row = rd_row(image, pixels, decoded.x, len(encoded[n].data), y + z, with_jpeg and q == headline)
                row.update(file=str(file), decoded=str(png), gain_code=file_gain_code(encoded[n].data))
                if q is not None:
                    row["quality"] = q
                rd[n][q].append(row)
            decode = DecodeOnce(coders, synthesize=synthesize)
            if k <= cross_decoded:
                for e in writers:
                    if e not in own:
                        continue
                    data = encoded[e].data
                    for d in names:
                        cell = cells.get((q, e, d))
                        if e == d or cell is None:
                            continue
                        checked += 1
                        error = _attempt(lambda: decode(d, data), encoded[e], own[e], cell.outcomes, image)
                        if isinstance(error, FingerprintMismatchError):
                            cell.forced = cell.forced or Outcomes()
                            _attempt(lambda: decode(d, data, force=True), encoded[e], own[e], cell.forced, image)
            run += decode.run
            counted += decode.counted
            if q == headline:
                for a, b in itertools.combinations(writers, 2):
                    differences.add(a, b, encoded[a], encoded[b], coders[a].num_slices)
        decodes_run += run
        decodes_counted += counted
        files = f"{coded} files coded by {len(names)} setups at {len(qualities)} qualities" \
            if headline is not None else f"coded by {len(names)} setups"
        progress(f"[{k}/{len(images)}] {image}: {files}, "
                 f"{checked} decodes checked{'' if run == counted else f' ({run} cross-decodes run)'}"
                 f"{'' if k > cross_decoded or synthesize else ', symbols only'} ({time.perf_counter() - t0:.1f} s)")
    result = {"rd": {n: rd[n][headline] for n in names if headline in rd[n]},
              "cells": [c.to_dict() for c in cells.values()],
              "symbol_differences": differences.to_list(), "portable": [n for n in names if portable[n]],
              "qualities": None if headline is None else qualities, "headline_quality": headline,
              "matrix_images": cross_decoded, "pixel_images": with_pixels, "decodes_run": decodes_run,
              "decodes_counted": decodes_counted}
    if headline is not None:
        result["rd_by_quality"] = {n: [{"quality": q, "images": rows} for q, rows in rd[n].items()] for n in names}
    return result


def _is_portable(data: bytes) -> bool:
    from dcae_deploy.runtime.container import sniff, unpack

    return sniff(data) == "dcae" and unpack(data).header.portable



def _own_decode(coder, encoded, outcomes: Outcomes, image: str):
    """Decode a setup's own file once, counting it on the diagonal."""
    outcomes.images += 1
    try:
        decoded = coder.decode(encoded.data)
    except Exception as exc:  # noqa: BLE001 - a setup refusing its own file is a bug; counted, shown
        name = type(exc).__name__
        outcomes.refused[name] = outcomes.refused.get(name, 0) + 1
        outcomes.examples.setdefault(name, " ".join(str(exc).split())[:300])
        return None
    if np.array_equal(decoded.symbols, encoded.symbols):
        outcomes.identical += 1
    else:
        outcomes.wrong_silent += 1
        outcomes.wrong.append({"image": image, "symbols_wrong": int(np.count_nonzero(decoded.symbols != encoded.symbols)),
                               "symbols": int(encoded.symbols.size), "psnr_vs_right_decode": None})
    return decoded


def _stream_bytes(data: bytes) -> tuple[int, int]:
    from .setups import streams_of

    y, z, _, _ = streams_of(data)
    return len(y), len(z)


def silent_wrong_totals(cells: list[dict]) -> dict:
    """WRONG counts by decoder kind: `checked`, the decoders that check the
    stream's end (every runtime setup, the reference on portable .dcae): must
    be 0; `unchecked`, compressai's decoder (the reference on a GPU's .bin)."""
    checked = sum(c["wrong_silent"] + (c["forced"]["wrong_silent"] if c["forced"] else 0)
                  for c in cells if c["decoder_detects_desync"])
    unchecked = sum(c["wrong_silent"] for c in cells if not c["decoder_detects_desync"])
    unchecked_forced = sum(c["forced"]["wrong_silent"] for c in cells
                           if not c["decoder_detects_desync"] and c["forced"])
    return {"checked": checked, "unchecked": unchecked, "unchecked_forced": unchecked_forced}

