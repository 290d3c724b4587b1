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
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "dcae/codec.hpp"
#include "entropy.hpp"
#include "errors.hpp"
#include "fileio.hpp"
#include "npy.hpp"
#include "portable.hpp"
#include "rans.hpp"

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
