"""Tiled image transforms: the planner's geometry, the memory budget and its
refusals, and tiled coding against whole-image coding on a real photo.

A tiled g_s changes pixels only, by at most a level; a tiled g_a changes y a
little in float, so its file differs, but it is a valid file that every
decoder reads, of the same rate and quality. Bounds, not bytes: float
rounding differs between CPUs.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from dcae_deploy.runtime import cli
from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.memory import format_size, parse_size
from dcae_deploy.runtime.metrics import bpp, psnr
from dcae_deploy.runtime.tiling import (
    DEFAULT_HALO, MemoryBudgetError, attention_period, minimum_tile, plan_axis, plan_for_budget, plan_tiles)

from tests.conftest import DATA

PERIOD = 4  # latent pixels: windows of 8 at 1/8 scale are 64 image pixels

# ---- the planner --------------------------------------------------------------------------------------


def test_attention_period_is_the_largest_window_of_every_stage():
    # Windows of 8 at 1/2, 1/4 and 1/8 scale: 16, 32 and 64 image pixels.
    assert attention_period(8) == PERIOD
    assert attention_period(4) == 2
    assert attention_period(16) == 8


@pytest.mark.parametrize("length, tile, halo", [
    (96, 32, 0), (96, 32, 2), (96, 32, 4), (96, 32, 8), (100, 32, 8), (128, 20, 8), (96, 12, 4), (96, 16, 3),
    (8, 32, 8), (96, 96, 8)])
def test_axis_plan_aligned_disjoint_covering_with_halo(length, tile, halo):
    spans = plan_axis(length, tile, halo, PERIOD)
    tile = min(tile, length)
    assert spans[0].start == 0 and spans[-1].end == length
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))  # interiors consecutive: each pixel once
    for span in spans:
        assert span.origin % PERIOD == 0  # on the window grid
        assert 0 <= span.origin and span.origin + tile <= length  # the fixed shape, inside the image
        assert span.origin <= span.start < span.end <= span.origin + tile
        # context on every side that is not the image's border
        assert span.start == 0 or span.start - span.origin >= halo
        assert span.end == length or span.origin + tile - span.end >= halo


def test_plan_covers_every_latent_pixel_exactly_once():
    plan = plan_tiles(40, 56, (20, 24), 4, PERIOD)
    assert plan.tile == (20, 24) and plan.count > 4
    hits = np.zeros((40, 56), int)
    for row, col in plan.tiles():
        hits[row.start:row.end, col.start:col.end] += 1
    assert (hits == 1).all()
    assert plan_tiles(16, 24, (64, 64), 8, PERIOD).whole


def test_plan_axis_refuses_tiles_without_interior():
    with pytest.raises(ValueError, match="no interior"):
        plan_axis(96, minimum_tile(8, PERIOD) - PERIOD, 8, PERIOD)
    with pytest.raises(ValueError, match="multiples of the period"):
        plan_axis(96, 30, 0, PERIOD)


def test_budget_plan_whole_when_it_fits_else_the_largest_tiles_that_do():
    h, w, per_pixel, io = 64, 96, 400, 14
    pixels = h * w * 256
    assert plan_for_budget(h, w, per_pixel, io, per_pixel * pixels, 8, PERIOD).whole
    for budget in (per_pixel * pixels - 1, 200e6, 100e6, 70e6):
        plan = plan_for_budget(h, w, per_pixel, io, budget, 8, PERIOD)
        th, tw = plan.tile
        assert not plan.whole and th % PERIOD == 0 and tw % PERIOD == 0
        assert per_pixel * th * tw * 256 + io * pixels <= budget
        # no smaller tile of the same shape class would need fewer runs
        for axis, length in ((0, h), (1, w)):
            spans = plan_axis(length, plan.tile[axis], 8, PERIOD)
            smaller = plan.tile[axis] - PERIOD
            assert plan.tile[axis] == length or smaller < minimum_tile(8, PERIOD) or \
                len(plan_axis(length, smaller, 8, PERIOD)) > len(spans)
    with pytest.raises(MemoryBudgetError) as refused:
        plan_for_budget(h, w, per_pixel, io, 50e6, 8, PERIOD)
    smallest = refused.value.needed
    assert plan_for_budget(h, w, per_pixel, io, smallest, 8, PERIOD).tile == (minimum_tile(8, PERIOD),) * 2


# ---- sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("2G", 2 << 30), ("500M", 500 << 20), ("500m", 500 << 20), ("1.5GiB", 3 << 29), ("64KB", 64 << 10),
    ("1048576", 1 << 20), (" 3 G ", 3 << 30), ("1T", 1 << 40)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "abc", "2X", "-1G", "0", "0.1", "1e9", "2 G B"])
def test_parse_size_refuses(text):
    with pytest.raises(BadInputError) as refused:
        parse_size(text)
    assert "\n" not in str(refused.value)


def test_format_size_rounds_up_so_the_size_given_back_works():
    for size in (1, 1023, 1024, 1025, 5 << 20, (5 << 20) + 1, 123456789, 7 << 30):
        assert parse_size(format_size(size)) >= size


@pytest.mark.parametrize("value", ["lots", "0", "-2G"])
def test_cli_memory_limit_usage_errors(capsys, tmp_path, value):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    for command in (["compress", image], ["decompress", tmp_path / "a.dcae"]):
        code = cli.main([str(a) for a in command] + ["-o", str(tmp_path / "out"), f"--memory-limit={value}"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert "argument --memory-limit" in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# ---- tiled coding on a real photo ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """kodim23, 768x512: latent 32 x 48, so 24 x 24 tiles with halo 8 cut both axes."""
    return np.asarray(Image.open(DATA / "kodak" / "kodim23.png").convert("RGB"))


@pytest.fixture(scope="module")
def codecs(tiny_bundle):
    """(whole, tiled): one codec that never tiles, one that runs in 24 x 24 latent tiles
    (forced: the plan a limit gives depends on what the process holds)."""
    from dcae_deploy.runtime import Codec

    whole = Codec(tiny_bundle, threads=1, memory_limit=1 << 40)
    tiled = Codec(tiny_bundle, threads=1)
    tiled.transforms.tile = (24, 24)
    return whole, tiled


@pytest.fixture(scope="module")
def whole_file(codecs, photo):
    return codecs[0].encode(photo)


def test_tiled_decode_matches_whole_decode(codecs, whole_file):
    whole, tiled = codecs
    expected = whole.decode(whole_file.data)
    assert whole.transforms.last_plan["g_s"].whole
    got = tiled.decode(whole_file.data)
    plan = tiled.transforms.last_plan["g_s"]
    assert plan.count >= 4 and plan.halo == DEFAULT_HALO
    np.testing.assert_array_equal(got.symbols, expected.symbols)
    diff = np.abs(got.x.astype(np.int16) - expected.x.astype(np.int16))
    assert diff.mean() <= 0.01 and diff.max() <= 1


def test_tiled_encode_matches_whole_encode_and_decodes_anywhere(codecs, whole_file, photo):
    whole, tiled = codecs
    result = tiled.encode(photo)
    assert tiled.transforms.last_plan["g_a"].count >= 4
    sizes = {name: bpp(len(r.data), 512, 768) for name, r in (("whole", whole_file), ("tiled", result))}
    assert abs(sizes["tiled"] / sizes["whole"] - 1) <= 0.001
    # both files, on a decoder that never tiles: the encoder's symbols, and the same quality
    quality = {}
    for name, encoded in (("whole", whole_file), ("tiled", result)):
        decoded = whole.decode(encoded.data)
        np.testing.assert_array_equal(decoded.symbols, encoded.symbols.reshape(-1))
        quality[name] = psnr(photo, decoded.x)
    assert abs(quality["tiled"] - quality["whole"]) <= 0.01


def test_too_small_budget_is_refused_with_the_smallest_that_works(tiny_bundle, photo, monkeypatch):
    from dcae_deploy.runtime import Codec, tiling

    # What the process holds, fixed: the size named is then exact.
    monkeypatch.setattr(tiling, "resident_memory", lambda: 300 << 20)
    codec = Codec(tiny_bundle, threads=1, memory_limit=1 << 20)
    with pytest.raises(MemoryBudgetError, match=r"memory limit 1\.0M is too small for g_a .*, with 300M held "
                                                r"by the process already: it needs at least \S+") as refused:
        codec.encode(photo)
    smallest = re.search(r"needs at least (\S+)$", str(refused.value)).group(1)
    assert parse_size(smallest) > 300 << 20
    codec.transforms.memory_limit = parse_size(smallest)
    data = codec.compress(photo)  # the size it named works, in the smallest tiles
    assert codec.transforms.last_plan["g_a"].tile == (minimum_tile(DEFAULT_HALO, PERIOD),) * 2
    codec.transforms.memory_limit = 1 << 20
    with pytest.raises(MemoryBudgetError, match="too small for g_s"):
        codec.decompress(data)


def test_a_limit_leaves_room_for_what_the_process_holds(tiny_bundle, monkeypatch):
    """Under a memory limit the budget is the limit less what the process
    holds, for graphs at 21/20 of their recorded bytes per pixel: the same
    limit tiles once the process holds a large array, and the smallest limit
    named grows by that array."""
    from dcae_deploy.runtime.bundle import Bundle
    from dcae_deploy.runtime.memory import resident_memory
    from dcae_deploy.runtime.tiling import ImageTransforms, with_large_tile_allowance

    from dcae_deploy.runtime import tiling

    bundle = Bundle.open(tiny_bundle)
    h, w = 32, 48  # kodim23's latent
    # What the planner reads, recorded (other objects of a long test session
    # may be freed meanwhile, so the reading is checked, not assumed).
    readings = []
    monkeypatch.setattr(tiling, "resident_memory", lambda: readings.append(resident_memory()) or readings[-1])
    whole_cost = with_large_tile_allowance(bundle.manifest.bytes_per_pixel["g_a"]) * h * w * 256
    transforms = ImageTransforms(None, bundle, resident_memory() + whole_cost + (16 << 20))
    assert transforms.plan("g_a", h, w).whole
    with pytest.raises(MemoryBudgetError) as refused:
        ImageTransforms(None, bundle, 1 << 20).plan("g_a", h, w)
    smallest = refused.value.needed - readings[-1]  # the smallest tile's cost, beside what is held
    held = np.ones(64 << 18, np.float32)  # 64M, in memory
    plan = transforms.plan("g_a", h, w)
    assert readings[-1] - readings[0] >= 32 << 20, readings  # the reading sees the array
    assert plan.count > 1 and plan.tile[0] * plan.tile[1] < h * w, plan
    with pytest.raises(MemoryBudgetError) as refused:
        ImageTransforms(None, bundle, 1 << 20).plan("g_a", h, w)
    assert refused.value.needed == readings[-1] + smallest  # what is held, named in the refusal
    del held
    monkeypatch.undo()

    # The arithmetic, with what is held fixed: plan_for_budget on the limit
    # less what is held, the whole-image output (not the input, held) beside the tile.

    monkeypatch.setattr(tiling, "resident_memory", lambda: 200 << 20)
    bpp = {graph: with_large_tile_allowance(value) for graph, value in bundle.manifest.bytes_per_pixel.items()}
    assert all(bpp[g] * 20 >= bundle.manifest.bytes_per_pixel[g] * 21 > (bpp[g] - 1) * 20 for g in ("g_a", "g_s"))
    for graph, output in (("g_a", 4 * bundle.latent_channels / 256), ("g_s", 12)):
        for limit in ((200 << 20) + whole_cost // 3, (200 << 20) + whole_cost // 2, (200 << 20) + whole_cost * 2):
            expected = plan_for_budget(h, w, bpp[graph], output, limit - (200 << 20), DEFAULT_HALO, PERIOD)
            assert ImageTransforms(None, bundle, limit).plan(graph, h, w) == expected
        with pytest.raises(MemoryBudgetError) as refused:
            ImageTransforms(None, bundle, 100 << 20).plan(graph, h, w)
        with pytest.raises(MemoryBudgetError) as pure:
            plan_for_budget(h, w, bpp[graph], output, 0, DEFAULT_HALO, PERIOD)
        assert refused.value.needed == (200 << 20) + pure.value.needed


def test_cli_too_small_limit_one_line_nothing_written(capsys, tmp_path, tiny_bundle, photo, whole_file):
    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    (tmp_path / "photo.dcae").write_bytes(whole_file.data)
    for command, target in (("compress", tmp_path / "out.dcae"), ("decompress", tmp_path / "out.png")):
        source = image if command == "compress" else tmp_path / "photo.dcae"
        code = cli.main([command, str(source), "-o", str(target), "-b", str(tiny_bundle), "--threads", "1",
                         "--memory-limit", "1M"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("dcae: error: ") and "needs at least" in lines[0]
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.dcae", "photo.png"]  # no temporaries


def test_image_transforms_run_without_a_memory_pattern():
    # With one, the second tile of a shape holds a planned block besides the
    # first tile's arena chunks, twice the memory the tiles were sized for.
    from dcae_deploy.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(threads=1)
    assert not backend._session_options("g_a").enable_mem_pattern
    assert not backend._session_options("g_s").enable_mem_pattern
    assert backend._session_options("h_s").enable_mem_pattern


def test_manifest_records_the_measured_bytes_per_pixel(tiny_bundle):
    import json

    from dcae_deploy.runtime.errors import BundleError
    from dcae_deploy.runtime.manifest import Manifest

    text = (tiny_bundle / "manifest.json").read_text()
    recorded = Manifest.from_json(text).bytes_per_pixel
    assert set(recorded) == {"g_a", "g_s"} and all(isinstance(v, int) and v > 1 for v in recorded.values())
    data = json.loads(text)
    del data["bytes_per_pixel"]  # a bundle from before the field: measured on first use
    assert Manifest.from_json(json.dumps(data)).bytes_per_pixel == {}
    for bad in ({"g_a": -1, "g_s": 100}, {"h_s": 5}, {"g_a": 1.5}, [100, 100]):
        data["bytes_per_pixel"] = bad
        with pytest.raises(BundleError, match="bytes_per_pixel"):
            Manifest.from_json(json.dumps(data))
