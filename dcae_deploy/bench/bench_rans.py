"""Speed of dcae_deploy.runtime.rans against compressai's C++ coder on a DCAE-sized y.

    python -m dcae_deploy.bench.bench_rans [--height 512 --width 768 --repeat 5]

y has 320 channels at 1/16 scale (491,520 symbols for 768x512), coded as
DCAE does: five slices of 64 channels into one stream, the slices decoded one
after another. compressai's time includes the `.tolist()` conversions and the
tensor rebuilt from its output lists, as in the model code; ours starts from
and returns numpy arrays. Prints the best of `--repeat` runs.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import GaussianConditional

from dcae_deploy.runtime import rans

N_SLICES = 5
Y_CHANNELS = 320


def dcae_tables():
    conditional = GaussianConditional(None)
    table = torch.exp(torch.linspace(math.log(0.11), math.log(256), 64))
    conditional.update_scale_table(table, force=True)
    return conditional


def y_symbols(conditional, height, width, max_scale, seed=0):
    """Indexes and symbols for a y of shape (1, 320, h/16, w/16): scales
    log-uniform from below the table's bottom (clamped to index 0, DCAE's most
    common) up to `max_scale`, values Laplacian with those scales."""
    rng = np.random.default_rng(seed)
    shape = (1, Y_CHANNELS, height // 16, width // 16)
    scales = np.exp(rng.uniform(math.log(0.05), math.log(max_scale), shape)).astype(np.float32)
    indexes = conditional.build_indexes(torch.from_numpy(scales))
    symbols = torch.from_numpy(np.round(rng.laplace(0, scales / math.sqrt(2))).astype(np.int32))
    return symbols, indexes


def best_of(repeat, function):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def compressai_encode(conditional, symbol_slices, index_slices):
    cdfs = conditional.quantized_cdf.tolist()
    lengths = conditional.cdf_length.reshape(-1).int().tolist()
    offsets = conditional.offset.reshape(-1).int().tolist()
    symbols_list, indexes_list = [], []
    for symbols, indexes in zip(symbol_slices, index_slices):
        symbols_list.extend(symbols.reshape(-1).tolist())
        indexes_list.extend(indexes.reshape(-1).tolist())
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols_list, indexes_list, cdfs, lengths, offsets)
    return encoder.flush()


def compressai_decode(conditional, data, index_slices):
    cdfs = conditional.quantized_cdf.tolist()
    lengths = conditional.cdf_length.reshape(-1).int().tolist()
    offsets = conditional.offset.reshape(-1).int().tolist()
    decoder = RansDecoder()
    decoder.set_stream(data)
    return [torch.Tensor(decoder.decode_stream(indexes.reshape(-1).tolist(), cdfs, lengths, offsets))
            .reshape(indexes.shape) for indexes in index_slices]


def ours_encode(tables, symbols, indexes):
    return rans.encode_with_indexes(symbols, indexes, *tables)


def ours_decode(tables, data, index_slices):
    decoder = rans.RansStreamDecoder(data)
    parts = [decoder.decode(indexes, *tables) for indexes in index_slices]
    decoder.finish()
    return parts


def run(conditional, height, width, max_scale, repeat):
    symbols, indexes = y_symbols(conditional, height, width, max_scale)
    symbol_slices = symbols.chunk(N_SLICES, dim=1)
    index_slices = indexes.chunk(N_SLICES, dim=1)
    # Our flat arrays, in the same order as the slices' concatenation.
    flat_symbols = np.concatenate([s.reshape(-1).numpy() for s in symbol_slices])
    flat_index_slices = [i.reshape(-1).numpy().astype(np.int32) for i in index_slices]
    flat_indexes = np.concatenate(flat_index_slices)
    tables = (conditional.quantized_cdf.numpy(), conditional.cdf_length.numpy(),
              conditional.offset.numpy())

    ours_encode(tables, flat_symbols[:100], flat_indexes[:100])  # load the compiled kernels
    t_ref_enc, ref_data = best_of(repeat, lambda: compressai_encode(conditional, symbol_slices, index_slices))
    t_enc, data = best_of(repeat, lambda: ours_encode(tables, flat_symbols, flat_indexes))
    assert data == ref_data, "streams differ"
    t_ref_dec, ref_parts = best_of(repeat, lambda: compressai_decode(conditional, data, index_slices))
    t_dec, parts = best_of(repeat, lambda: ours_decode(tables, data, flat_index_slices))
    assert np.array_equal(np.concatenate(parts), flat_symbols)
    assert np.array_equal(torch.cat([p.reshape(-1) for p in ref_parts]).numpy(), flat_symbols)

    n = flat_symbols.size
    print(f"y {Y_CHANNELS}x{height // 16}x{width // 16} = {n:,} symbols, scales up to "
          f"{max_scale:g}: {len(data):,} bytes ({8 * len(data) / n:.2f} bits/symbol)")
    for step, ref, ours in (("encode", t_ref_enc, t_enc), ("decode", t_ref_dec, t_dec)):
        print(f"  {step}: compressai {1e3 * ref:7.1f} ms   ours {1e3 * ours:6.1f} ms   "
              f"speed-up {ref / ours:4.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    conditional = dcae_tables()
    # A trained model's scales are mostly small; the golden (untrained) weights
    # spread them over the whole table.
    for max_scale in (8.0, 256.0):
        run(conditional, args.height, args.width, max_scale, args.repeat)


if __name__ == "__main__":
    main()
