"""The quality knob: quality -> gain, rate control, and the gain in the
runtime's and the reference's slice loops (files that cross both ways)."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from dcae_deploy.runtime.container import GAIN_CODE_ONE, gain_of, unpack
from dcae_deploy.runtime.errors import BadInputError, BundleError
from dcae_deploy.runtime.quality import (TARGET_TOLERANCE, UNTRAINED_LEVELS, RateChoice, RateLevels,
                                         RateTarget, search_gain_code)

TRAINED = {"lambdas": [0.0009, 0.002, 0.0042, 0.0088, 0.0185, 0.0384, 0.08, 0.16],
           "gains": [0.29, 0.39, 0.515, 0.679, 0.892, 1.2, 1.62, 2.2], "reference": 4}


# ---- quality -> gain -------------------------------------------------------------------

def test_untrained_rule_runs_from_an_eighth_to_four():
    for quality in range(101):
        octaves = (quality - 50) / (50 / 3) if quality < 50 else (quality - 50) / 25
        assert UNTRAINED_LEVELS.gain(quality) == pytest.approx(2 ** octaves, rel=1e-12)
    assert UNTRAINED_LEVELS.gain_code(50) == GAIN_CODE_ONE
    assert UNTRAINED_LEVELS.code_range() == (512, 16384)


def test_trained_levels_put_quality_50_at_gain_1_and_the_ends_half_a_level_past_the_ends():
    levels = RateLevels.from_record(TRAINED)
    assert levels.reach == 0.5
    # gains relative to the reference level's (0.892): quality 50 codes at a = 1 exactly
    assert levels.gain(50) == 1.0 and levels.gain_code(50) == GAIN_CODE_ONE
    rel = [g / 0.892 for g in TRAINED["gains"]]
    # Q = 0 and 100: half the end intervals' log step past the end levels
    assert levels.gain(0) == pytest.approx(rel[0] * math.sqrt(0.29 / 0.39), rel=1e-12)
    assert levels.gain(100) == pytest.approx(rel[-1] * math.sqrt(2.2 / 1.62), rel=1e-12)
    # the end levels themselves sit at the qualities half a level in
    assert levels.gain(50 * 0.5 / 4.5) == pytest.approx(rel[0], rel=1e-12)
    assert levels.gain(50 + 50 * 3 / 3.5) == pytest.approx(rel[-1], rel=1e-12)
    # halfway between qualities of two levels: the geometric mean of their gains
    assert levels.gain(50 + 50 / 3.5 / 2) == pytest.approx(math.sqrt(1.2 / 0.892), rel=1e-12)
    gains = [levels.gain(q) for q in np.arange(0, 100.25, 0.25)]
    assert all(b > a for a, b in zip(gains, gains[1:]))
    codes = [levels.gain_code(q) for q in range(101)]
    assert all(b > a for a, b in zip(codes, codes[1:]))
    assert codes[60] == round(levels.gain(60) * 4096) and gain_of(codes[60]) == codes[60] / 4096
    # rate control reaches past the trained range to the untrained rule's ends
    assert levels.code_range() == UNTRAINED_LEVELS.code_range() == (512, 16384)
    wide = RateLevels((0.05, 1.0, 9.0), 1)
    assert wide.code_range() == (wide.gain_code(0), wide.gain_code(100))


@pytest.mark.parametrize("record", [
    {"gains": [1.0, 0.5, 2.0], "reference": 1},  # not increasing
    {"gains": [0.5, 1.0, 2.0], "reference": 0},  # the reference at an end
    {"gains": [0.5, 2.0], "reference": 1},
    {"gains": [0.0, 1.0, 2.0], "reference": 1},
])
def test_rate_levels_refuse_what_no_knob_can_use(record):
    with pytest.raises(ValueError):
        RateLevels.from_record(record)


@pytest.mark.parametrize("kwargs, words", [
    ({"quality": 101}, "quality must be from 0 to 100"),
    ({"quality": float("nan")}, "quality must be from 0 to 100"),
    ({"quality": "high"}, "quality must be a number"),
    ({"max_bytes": 0}, "max_bytes must be a positive whole number"),
    ({"max_bytes": 12.5}, "max_bytes must be a positive whole number"),
    ({"target_bpp": 0}, "target_bpp must be above 0"),
    ({"quality": 40, "max_bytes": 1000}, "give one of quality, max_bytes and target_bpp"),
])
def test_rate_choice_refuses_bad_options(kwargs, words):
    with pytest.raises(BadInputError, match=words):
        RateChoice(**kwargs)


# ---- rate control on a model of file size --------------------------------------------------

def _power_law(scale: float, exponent: float, wobble: float = 0.0):
    """File size as a function of the gain code, about as a power of the gain,
    with a deterministic wobble (sizes are not strictly monotonic in the gain)."""
    def size(code: int) -> int:
        return int(round(scale * (code / 4096) ** exponent * (1 + wobble * math.sin(code * 12.9898))))
    return size


@pytest.mark.parametrize("exponent, wobble", [(0.8, 0.0), (0.6, 0.002), (1.1, 0.004)])
def test_rate_control_lands_within_the_window_and_never_over(exponent, wobble):
    size = _power_law(20000, exponent, wobble)
    low, high = (size(code) for code in UNTRAINED_LEVELS.code_range())
    for max_bytes in np.geomspace(low * 1.05, high * 0.95, 9).astype(int).tolist():
        for exact in (False, True):
            target = RateTarget(max_bytes, exact, f"target {max_bytes}")
            tries = []
            result = search_gain_code(lambda c: tries.append(c) or size(c), target, UNTRAINED_LEVELS.code_range())
            assert len(tries) == len(set(tries)) == len(result.tries)  # no code coded twice
            assert result.size == size(result.gain_code) <= max_bytes
            assert result.size >= max_bytes * (1 - TARGET_TOLERANCE)
            assert len(tries) <= 6, result.tries


def test_rate_control_names_the_smallest_size_of_an_impossible_target():
    size = _power_law(20000, 0.8)
    with pytest.raises(BadInputError) as info:
        search_gain_code(size, RateTarget(10, False, "--max-bytes 10"), UNTRAINED_LEVELS.code_range())
    assert str(info.value) == (f"--max-bytes 10 is out of reach: the smallest file this image codes to is "
                               f"{size(512)} bytes (the lowest gain)")
    # A cap above the highest quality's file is met by that file; a target is not.
    cap = search_gain_code(size, RateTarget(10**6, False, "cap"), UNTRAINED_LEVELS.code_range())
    assert cap.gain_code == 16384
    with pytest.raises(BadInputError, match="out of reach: the highest gain gives"):
        search_gain_code(size, RateTarget(10**6, True, "--target-bpp 9"), UNTRAINED_LEVELS.code_range())


# ---- the gain in the slice loops: runtime and reference ---------------------------------------

@pytest.fixture(scope="module")
def codec(tiny_bundle):
    from dcae_deploy.runtime import Codec

    return Codec(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def crop(kodak_crop):
    return kodak_crop("kodim23", 96, 160, 200, 300)


def test_quality_50_is_the_fixed_rate_coding(codec, crop):
    assert codec.rate_levels == UNTRAINED_LEVELS  # the tiny bundle records no levels
    assert codec.compress(crop, quality=50) == codec.compress(crop)
    assert unpack(codec.compress(crop)).header.gain_code == GAIN_CODE_ONE


@pytest.mark.slow
@pytest.mark.parametrize("quality", [10, 85])
def test_files_at_a_quality_cross_between_the_runtime_and_the_reference(codec, tiny_model, crop, quality):
    from dcae.coding import decode_dcae, encode_image

    runtime = codec.encode(crop, quality=quality)
    header = unpack(runtime.data).header
    assert header.gain_code == UNTRAINED_LEVELS.gain_code(quality) != GAIN_CODE_ONE
    # The symbols are coded at the gain: round((y - mu) * a).
    assert np.array_equal(codec.decode(runtime.data, synthesize=False).symbols, runtime.symbols.reshape(-1))
    _, read_by_reference = decode_dcae(tiny_model, runtime.data, synthesize=False)
    assert np.array_equal(read_by_reference, runtime.symbols.reshape(-1))

    reference_data, reference = encode_image(tiny_model, crop, format="dcae", quality=quality)
    assert unpack(reference_data).header.gain_code == header.gain_code
    assert np.array_equal(codec.decode(reference_data, synthesize=False).symbols,
                          reference["symbols"].numpy().reshape(-1))
    # The gain is applied, not just recorded: the latent is coded finer or coarser.
    plain = codec.encode(crop)
    ratio = np.abs(runtime.symbols).sum() / np.abs(plain.symbols).sum()
    assert (ratio > 1.5) if quality > 50 else (ratio < 0.7)


def test_file_size_follows_the_quality(codec, crop):
    # (the tiny golden-weight model decodes noise: the image's quality is
    # checked on the embedded model, tests/runtime_only/test_rate_control.py)
    assert len(codec.compress(crop, quality=10)) < len(codec.compress(crop)) < len(codec.compress(crop, quality=90))


@pytest.mark.slow
def test_rate_control_in_the_runtime_and_the_reference(codec, tiny_model, crop):
    import dcae

    sizes = [len(codec.compress(crop, quality=q)) for q in (20, 80)]
    max_bytes = (sizes[0] + sizes[1]) // 2
    result = codec.encode(crop, max_bytes=max_bytes)
    assert max_bytes * (1 - TARGET_TOLERANCE) <= len(result.data) <= max_bytes
    search = codec.last_rate_search
    assert unpack(result.data).header.gain_code == search.gain_code and len(search.tries) >= 2
    bpp = 8 * max_bytes / crop.shape[0] / crop.shape[1]
    assert 8 * len(codec.compress(crop, target_bpp=bpp)) / crop.shape[0] / crop.shape[1] == pytest.approx(
        bpp, rel=TARGET_TOLERANCE)
    data = dcae.compress_image(tiny_model, crop, format="dcae", max_bytes=max_bytes)
    assert max_bytes * (1 - TARGET_TOLERANCE) <= len(data) <= max_bytes
    with pytest.raises(BadInputError, match="out of reach: the smallest file"):
        codec.compress(crop, max_bytes=10)
    with pytest.raises(BadInputError, match=r"\.bin codes the reference rate only"):
        dcae.compress_image(tiny_model, crop, quality=90)


def test_bundle_levels_reach_the_codec(tiny_bundle, tmp_path):
    import json

    from dcae_deploy.runtime import Codec

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["rate_levels"] = TRAINED
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert Codec(bundle, threads=1).rate_levels == RateLevels.from_record(TRAINED)
    manifest["rate_levels"] = {"gains": [2.0, 1.0, 3.0], "reference": 1}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="rate_levels"):
        Codec(bundle, threads=1)


def test_checkpoint_levels_reach_the_reference_and_the_export(tiny_model, tmp_path):
    import copy

    from dcae.checkpoint import load_checkpoint, save_checkpoint
    from dcae.coding import rate_levels

    path = tmp_path / "variable.pth.tar"
    save_checkpoint(path, tiny_model, preset="tiny", extra={"rate_levels": TRAINED})
    loaded = load_checkpoint(path)
    assert rate_levels(loaded) == RateLevels.from_record(TRAINED)
    assert rate_levels(copy.copy(tiny_model)) == UNTRAINED_LEVELS


def test_training_levels_record_their_reference():
    from dcae.train import DEFAULT_LAMBDAS, RateLevels as TrainedLevels

    record = TrainedLevels().summary()
    assert record["reference"] == DEFAULT_LAMBDAS.index(0.0185)
    levels = RateLevels.from_record(record)
    assert levels.gain(50) == pytest.approx(1.0, rel=1e-6)  # gains start at sqrt(lambda / 0.0185)


def test_batch_jobs_keep_outputs_of_the_same_rate_and_redo_others(codec, tiny_bundle, crop, tmp_path):
    from PIL import Image

    from dcae_deploy.runtime.filejobs import OK, SKIPPED, FileJob, code_one

    source, target = tmp_path / "crop.png", tmp_path / "crop.dcae"
    Image.fromarray(crop).save(source)

    def run(**rate):
        job = FileJob("compress", str(tiny_bundle), rate=RateChoice(**rate))
        return code_one(codec, job, str(source), str(target))

    assert run(quality=30)["status"] == OK
    assert unpack(target.read_bytes()).header.gain_code == UNTRAINED_LEVELS.gain_code(30)
    assert run(quality=30)["status"] == SKIPPED
    again = run(quality=70)
    assert again["status"] == OK and "gain_code differ" in again["warnings"][0]
    size = target.stat().st_size
    assert run(max_bytes=size)["status"] == SKIPPED  # fits the cap and fills it
    redo = run(max_bytes=size // 2)
    assert redo["status"] == OK and "miss the size target" in redo["warnings"][0]
    assert size // 2 * (1 - TARGET_TOLERANCE) <= target.stat().st_size <= size // 2
