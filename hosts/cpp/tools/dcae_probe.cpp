// dcae-probe: the C++ host's parts on their own, so that tests can feed them
// the same inputs as the Python runtime's and compare the outputs byte for
// byte. Arrays travel as .npy/.npz; errors are one line on stderr, exit 1.
//
//   dcae-probe rans-encode IN.npz OUT.bin           symbols, indexes, cdfs, cdf_lengths, offsets
//   dcae-probe rans-decode IN.npz STREAM OUT.npy    indexes, cdfs, cdf_lengths, offsets
//   dcae-probe indexes IN.npz OUT.npy               scales, scale_table, scale_bound
//   dcae-probe side-mark IN.npz MARGIN OUT.bin      scales, scale_table, scale_bound: the side stream
//                                                   without shifts of the marked elements
//   dcae-probe portable-encode IN.npz MARGIN INDEXES.npy SIDE.bin
//        scales ((1, C, h, w); the plane is h * w), scale_table, scale_bound, and the unshifted
//        indexes (build_indexes of the scales where absent): encode_portable's shifted indexes
//        (flat int32) and side stream; prints "K BLOCK LISTED" (BLOCK 0 when K is 1)
//   dcae-probe side-parse STREAM LATENT_SIZE MARKS.npy CHOICES.npy
//        (LATENT_SIZE "-": not known, as for inspect): (n, 2) int32 position, bit;
//        the shift choices (int32); prints "K BLOCK"
//   dcae-probe portable-decode IN.npz MARGIN SLICES SIDE OUT.npy
//        scales ((1, C, h, w), the decoder's), scale_table, scale_bound: the indexes (flat int32)
//        PortableDecoding gives, slice by slice (SLICES equal channel blocks)
//   dcae-probe png IN.png OUT.npy                   (H, W, 3) int32 pixels; warnings on stderr
//   dcae-probe npz IN.npz                           each array's name, dtype kind and shape
//   dcae-probe tile-plan BUNDLE < QUERIES
//        each line "GRAPH HEIGHT WIDTH LIMIT [HELD]" (latent px; LIMIT bytes, 0: half the memory
//        available; HELD: the bytes the process holds, 0 if left out): the plan the codec runs GRAPH with, one JSON line each: {"tile": [h, w], "rows": [[origin,
//        start, end], ...], "cols": [...]}, or {"error": "..."} for a refusal
//   dcae-probe tile-plan - < QUERIES
//        each line "HEIGHT WIDTH BYTES_PER_PIXEL IO_BYTES_PER_PIXEL BUDGET HALO PERIOD": plan_for_budget,
//        the plan's JSON line or {"needed": N}
//   dcae-probe gain-codes < QUERIES
//        each line "REFERENCE REACH GAIN... QUALITY" (rate levels, then a quality), or "QUALITY" alone
//        (the untrained levels): the gain code, one line each
//   dcae-probe rate-search IN.npz LOW HIGH MAX_BYTES EXACT
//        sizes (int32, the file size at each gain code 0..65535): search_gain_code over LOW..HIGH
//        for a cap (EXACT 0) or a target (1) of MAX_BYTES; prints each try "CODE BYTES" as it
//        is made, then "kept CODE", or the one-line error
#include <cstdlib>
#include <iterator>
#include <optional>
#include <sstream>
#include <iostream>
#include <string>
#include <vector>

#include "dcae/codec.hpp"
#include "entropy.hpp"
#include "errors.hpp"
#include "fileio.hpp"
#include "npy.hpp"
#include "portable.hpp"
#include "quality.hpp"
#include "rans.hpp"
#include "bundle.hpp"
#include "tiling.hpp"

namespace {

using Arrays = std::map<std::string, dcae::NpyArray>;

const dcae::NpyArray& get(const Arrays& arrays, const std::string& name) {
  auto found = arrays.find(name);
  if (found == arrays.end()) dcae::fail(dcae::ErrorKind::bad_input, "input lacks array " + name);
  return found->second;
}

std::vector<int32_t> ints(const Arrays& arrays, const std::string& name) { return dcae::to_int32(get(arrays, name), name); }
std::vector<float> floats(const Arrays& arrays, const std::string& name) { return dcae::to_float32(get(arrays, name), name); }

dcae::CdfTables tables(const Arrays& arrays) {
  const dcae::NpyArray& cdfs = get(arrays, "cdfs");
  if (cdfs.shape.size() != 2) dcae::fail(dcae::ErrorKind::bad_input, "cdfs must be 2-D");
  return dcae::CdfTables(ints(arrays, "cdfs"), cdfs.shape[0], cdfs.shape[1], ints(arrays, "cdf_lengths"),
                         ints(arrays, "offsets"));
}

dcae::ScaleTable scale_table(const Arrays& arrays) {
  dcae::ScaleTable table;
  table.scales = floats(arrays, "scale_table");
  table.bound = floats(arrays, "scale_bound").at(0);
  return table;
}

void write(const std::string& path, const std::vector<uint8_t>& bytes) {
  dcae::write_atomically(path, bytes.data(), bytes.size());
}

uint64_t whole_number(const std::string& text) {
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || *end) dcae::fail(dcae::ErrorKind::bad_input, "expected a whole number, got " + text);
  return value;
}

double number(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end) dcae::fail(dcae::ErrorKind::bad_input, "expected a number, got " + text);
  return value;
}

// (n, 2) int32: each listed position and its side bit.
std::vector<uint8_t> marks_npy(const dcae::SideInfo& side) {
  std::vector<int32_t> pairs;
  for (size_t i = 0; i < side.positions.size(); ++i) {
    pairs.push_back(static_cast<int32_t>(side.positions[i]));
    pairs.push_back(side.bits[i]);
  }
  return dcae::npy_bytes({side.positions.size(), 2}, pairs.data());
}

std::string spans_json(const std::vector<dcae::Span>& spans) {
  std::string text = "[";
  for (size_t i = 0; i < spans.size(); ++i)
    text += (i ? ", [" : "[") + std::to_string(spans[i].origin) + ", " + std::to_string(spans[i].start) + ", " +
            std::to_string(spans[i].end) + "]";
  return text + "]";
}

std::string plan_json(const dcae::TilePlan& plan) {
  return "{\"tile\": [" + std::to_string(plan.tile_height) + ", " + std::to_string(plan.tile_width) +
         "], \"rows\": " + spans_json(plan.rows) + ", \"cols\": " + spans_json(plan.cols) + "}";
}

std::string json_text(const std::string& text) {
  std::string out = "\"";
  for (char c : text) out += c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c);
  return out + "\"";
}

// One query per line on stdin, one JSON line per query on stdout.
void tile_plans(const std::string& bundle_dir) {
  std::optional<dcae::Bundle> bundle;
  if (bundle_dir != "-") bundle = dcae::Bundle::open(bundle_dir);
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream fields(line);
    std::vector<std::string> f{std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
    if (f.empty()) continue;
    if (bundle) {
      if (f.size() != 4 && f.size() != 5)
        dcae::fail(dcae::ErrorKind::bad_input, "expected GRAPH HEIGHT WIDTH LIMIT [HELD], got " + line);
      try {
        const dcae::TilePlan plan = dcae::bundle_transform_plan(
            *bundle, f[0], static_cast<int64_t>(whole_number(f[1])), static_cast<int64_t>(whole_number(f[2])),
            whole_number(f[3]), f.size() == 5 ? whole_number(f[4]) : 0);
        std::cout << plan_json(plan) << "\n";
      } catch (const dcae::Error& e) {
        std::cout << "{\"error\": " << json_text(e.what()) << "}\n";
      }
      continue;
    }
    if (f.size() != 7)
      dcae::fail(dcae::ErrorKind::bad_input, "expected HEIGHT WIDTH BYTES_PER_PIXEL IO BUDGET HALO PERIOD, got " + line);
    uint64_t needed = 0;
    const auto as_int = [&](size_t i) { return static_cast<int64_t>(whole_number(f[i])); };
    const std::optional<dcae::TilePlan> plan =
        dcae::plan_for_budget(as_int(0), as_int(1), as_int(2), number(f[3]), whole_number(f[4]), as_int(5), as_int(6),
                              &needed);
    std::cout << (plan ? plan_json(*plan) : "{\"needed\": " + std::to_string(needed) + "}") << "\n";
  }
}

// One query per line on stdin: the rate levels and a quality; its gain code.
void gain_codes() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream fields(line);
    std::vector<std::string> f{std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
    if (f.empty()) continue;
    if (f.size() != 1 && f.size() < 5)
      dcae::fail(dcae::ErrorKind::bad_input, "expected [REFERENCE REACH GAIN...] QUALITY, got " + line);
    dcae::RateLevels levels = dcae::untrained_levels();
    if (f.size() > 1) {
      levels.gains.clear();
      levels.reference = static_cast<int>(whole_number(f[0]));
      levels.reach = number(f[1]);
      for (size_t i = 2; i + 1 < f.size(); ++i) levels.gains.push_back(number(f[i]));
    }
    if (const std::string problem = levels.problem(); !problem.empty()) dcae::fail(dcae::ErrorKind::bad_input, problem);
    std::cout << levels.gain_code(number(f.back())) << "\n";
  }
}

void rate_search(const std::vector<std::string>& a) {
  const std::vector<int32_t> sizes = ints(dcae::read_npz(a[1], "input"), "sizes");
  if (sizes.size() != 65536) dcae::fail(dcae::ErrorKind::bad_input, "sizes must hold one size per gain code");
  const dcae::RateTarget target{whole_number(a[4]), whole_number(a[5]) != 0, "--max-bytes " + a[4]};
  // Each try printed as it is made: a search that fails shows its tries too.
  const auto size_at = [&](uint16_t code) {
    std::cout << code << " " << sizes[code] << std::endl;
    return static_cast<uint64_t>(sizes[code]);
  };
  const dcae::RateSearch search = dcae::search_gain_code(
      size_at, target, {static_cast<uint16_t>(whole_number(a[2])), static_cast<uint16_t>(whole_number(a[3]))});
  std::cout << "kept " << search.gain_code << "\n";
}

int run(const std::vector<std::string>& a) {
  const std::string& command = a.at(0);
  if (command == "rans-encode" && a.size() == 3) {
    const Arrays in = dcae::read_npz(a[1], "input");
    const std::vector<int32_t> symbols = ints(in, "symbols"), indexes = ints(in, "indexes");
    if (symbols.size() != indexes.size()) dcae::fail(dcae::ErrorKind::bad_input, "symbols and indexes differ in length");
    write(a[2], dcae::rans_encode(symbols.data(), indexes.data(), symbols.size(), tables(in)));
  } else if (command == "rans-decode" && a.size() == 4) {
    const Arrays in = dcae::read_npz(a[1], "input");
    const std::vector<int32_t> indexes = ints(in, "indexes");
    const std::vector<uint8_t> stream = dcae::read_file(a[2]);
    std::vector<int32_t> symbols(indexes.size());
    dcae::RansDecoder decoder(stream.data(), stream.size());
    decoder.decode(indexes.data(), indexes.size(), tables(in), symbols.data());
    decoder.finish();
    write(a[3], dcae::npy_bytes({symbols.size()}, symbols.data()));
  } else if (command == "indexes" && a.size() == 3) {
    const Arrays in = dcae::read_npz(a[1], "input");
    const std::vector<float> scales = floats(in, "scales");
    std::vector<int32_t> indexes(scales.size());
    dcae::build_indexes(scales.data(), scales.size(), scale_table(in), indexes.data());
    write(a[2], dcae::npy_bytes({indexes.size()}, indexes.data()));
  } else if (command == "side-mark" && a.size() == 4) {
    const Arrays in = dcae::read_npz(a[1], "input");
    const std::vector<float> scales = floats(in, "scales");
    const dcae::ScaleTable table = scale_table(in);
    std::vector<int32_t> indexes(scales.size());
    dcae::build_indexes(scales.data(), scales.size(), table, indexes.data());
    dcae::SideInfo side;
    dcae::mark_slice(scales.data(), indexes.data(), scales.size(), 0, number(a[2]),
                     dcae::CriticalValues(table), &side);
    write(a[3], dcae::encode_side_stream(side, scales.size()));
  } else if (command == "portable-encode" && a.size() == 5) {
    const Arrays in = dcae::read_npz(a[1], "input");
    const std::vector<float> scales = floats(in, "scales");
    const std::vector<size_t>& shape = get(in, "scales").shape;
    const size_t plane = shape.size() == 4 ? shape[2] * shape[3] : scales.size();
    const dcae::ScaleTable table = scale_table(in);
    std::vector<int32_t> indexes(scales.size());
    if (in.count("indexes")) {
      indexes = ints(in, "indexes");
      if (indexes.size() != scales.size()) dcae::fail(dcae::ErrorKind::bad_input, "scales and indexes differ in size");
    } else {
      dcae::build_indexes(scales.data(), scales.size(), table, indexes.data());
    }
    const dcae::CriticalValues critical(table);
    const dcae::PortableEncoding encoding =
        dcae::encode_portable(scales.data(), indexes.data(), scales.size(), plane, number(a[2]), critical);
    write(a[3], dcae::npy_bytes({indexes.size()}, indexes.data()));
    write(a[4], encoding.side);
    std::cout << encoding.shifts.count << " " << encoding.shifts.block << " " << encoding.listed << "\n";
  } else if (command == "side-parse" && a.size() == 5) {
    const std::vector<uint8_t> stream = dcae::read_file(a[1]);
    const uint64_t latent_size = a[2] == "-" ? dcae::kLatentSizeUnknown : whole_number(a[2]);
    if (latent_size == dcae::kLatentSizeUnknown && a[2] != "-")
      dcae::fail(dcae::ErrorKind::bad_input, "a latent has at least one element");
    const dcae::SideInfo side = dcae::decode_side_stream(stream.data(), stream.size(), latent_size);
    write(a[3], marks_npy(side));
    const std::vector<int32_t> choices(side.shifts.choices.begin(), side.shifts.choices.end());
    write(a[4], dcae::npy_bytes({choices.size()}, choices.data()));
    std::cout << side.shifts.count << " " << side.shifts.block << "\n";
  } else if (command == "portable-decode" && a.size() == 6) {
    const Arrays in = dcae::read_npz(a[1], "input");
    const std::vector<float> scales = floats(in, "scales");
    const dcae::ScaleTable table = scale_table(in);
    const uint64_t slices = whole_number(a[3]);
    if (!slices || scales.size() % slices) dcae::fail(dcae::ErrorKind::bad_input, "SLICES must divide the latent");
    const std::vector<uint8_t> stream = dcae::read_file(a[4]);
    const dcae::CriticalValues critical(table);
    dcae::PortableDecoding decoding(stream.data(), stream.size(), scales.size(), critical, number(a[2]));
    const size_t slice = scales.size() / slices;
    std::vector<int32_t> indexes(scales.size());
    for (size_t start = 0; start < scales.size(); start += slice) {
      dcae::build_indexes(scales.data() + start, slice, table, indexes.data() + start);
      decoding.apply(start, scales.data() + start, indexes.data() + start, slice);
    }
    write(a[5], dcae::npy_bytes({indexes.size()}, indexes.data()));
  } else if (command == "png" && a.size() == 3) {
    std::vector<std::string> warnings;
    const dcae::Image image = dcae::read_png(a[1], &warnings);
    for (const std::string& w : warnings) std::cerr << "dcae-probe: warning: " << w << "\n";
    const std::vector<int32_t> pixels(image.rgb.begin(), image.rgb.end());
    write(a[2], dcae::npy_bytes({image.height, image.width, 3}, pixels.data()));
  } else if (command == "npz" && a.size() == 2) {
    for (const auto& [name, array] : dcae::read_npz(a[1], "input")) {
      std::cout << name << " " << array.kind << array.item_size;
      for (size_t side : array.shape) std::cout << " " << side;
      std::cout << "\n";
    }
  } else if (command == "tile-plan" && a.size() == 2) {
    tile_plans(a[1]);
  } else if (command == "gain-codes" && a.size() == 1) {
    gain_codes();
  } else if (command == "rate-search" && a.size() == 6) {
    rate_search(a);
  } else {
    std::cerr << "dcae-probe: error: unknown command or wrong arguments (see the source's header)\n";
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "dcae-probe: error: missing command\n";
    return 2;
  }
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "dcae-probe: error: " << dcae::one_line(e.what()) << "\n";
    return 1;
  }
}
