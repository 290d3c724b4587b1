// dcae-host: compress PNG images to .dcae files and back with a bundle, in
// C++ (the Python runtime's `dcae compress` / `dcae decompress`).
//
// Every failure a user can cause is one line on stderr and a non-zero exit
// (1; 2 for a command-line mistake); outputs are written to a temporary name
// and renamed, so a failure never leaves a half-written file. With several
// inputs it goes on past a failing file, reports each failure, and exits 1.
#include <sys/stat.h>
#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "container.hpp"
#include "dcae/codec.hpp"
#include "errors.hpp"
#include "fileio.hpp"
#include "hashing.hpp"
#include "npy.hpp"
#include "portable.hpp"
#include "quality.hpp"
#include "tiling.hpp"

namespace {

const char* const kUsage = R"(usage:
  dcae-host compress   -b BUNDLE IN.png [IN.png | DIR ...] -o OUT [options]
  dcae-host decompress -b BUNDLE IN.dcae [IN.dcae | DIR ...] -o OUT [options]
  dcae-host inspect FILE.dcae
  dcae-host --help | --version

Learned image compression with DCAE: runs a bundle written by dcae-export
(ONNX graphs and entropy tables) on OpenVINO, and reads and writes the same
.dcae files as the Python runtime (`dcae`). PNG in and out (grayscale,
palette and 16-bit PNGs become 8-bit RGB; alpha is dropped).

  -b, --bundle DIR     bundle directory written by dcae-export (required)
  -o, --output OUT     output file for one input file; otherwise a directory
                       (created) that receives one file per input, named
                       after the input's stem
  --threads N          threads per graph (default: one per CPU core); does not
                       change the bitstream
  --backend NAME       openvino (default: every graph in f32) or openvino-bf16
                       (g_a, h_a, g_s in bf16 where the CPU has it; the entropy
                       graphs stay f32, so the files are the same kind)
  --memory-limit SIZE  the process's peak memory, such as 2G or 500M (K, M,
                       G, T: powers of 1024): g_a and g_s get what the
                       process does not hold already, and an image that
                       needs more runs in tiles that fit (the file and its
                       decoding stay valid for every decoder; tiles move
                       pixels by at most a level). Refused, with the smallest
                       size that works, when not even one tile fits (default:
                       half the memory available, read when each image is
                       coded)
  --json               print one JSON object per file, with timings in ms, the
                       tiles g_a or g_s ran in and (compress) the gain code
                       and rate control's tries
  --save-latents DIR   also write the latents as .npy files (for comparing hosts)
compress:
  -q, --quality Q      quality from 0 to 100, higher is better (default 50: the
                       model's reference rate); maps onto the rates the model
                       was trained at, or gains 1/8 to 4 for a model trained
                       at one rate
  --target-bpp B       the largest file of at most B bits per pixel, and
                       within 3% of it; the image transforms run once, the
                       entropy path once per try
  --max-bytes N        the largest file of at most N bytes (never over); an
                       image that cannot be coded that small is an error
                       naming the smallest size it can reach
                       (--quality, --target-bpp and --max-bytes: one at most)
  --not-portable       write a file that decodes only on this backend class
                       (default: portable, decodes on any backend)
  --margin D           portable margin, natural log, at most 0.01 (default:
                       the margin measured for the model when the bundle was
                       exported, 4.1e-5 where it records none)
decompress:
  --force              try a file written by another setup (refused by
                       default: it usually fails with a desync)
)";

struct UsageError {
  std::string message;
};

struct Arguments {
  std::string command;
  std::vector<std::string> inputs;
  std::string bundle, output, save_latents;
  dcae::Options options;
  dcae::RateChoice rate;
  std::vector<std::string> rate_options;  // which were given, to refuse more than one
  bool force = false, json = false;
};

int positive_int(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || value < 1 || value > 4096)
    throw UsageError{flag + " expects a whole number from 1, got '" + text + "'"};
  return static_cast<int>(value);
}

double margin_value(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end) throw UsageError{"--margin expects a number, got '" + text + "'"};
  // (0 in Options stands for the bundle's measured margin.)
  if (!(value > 0.0)) throw UsageError{"portable margin must be in (0, 0.01], got " + text};
  return value;
}

uint64_t memory_size(const std::string& text) {
  try {
    return dcae::parse_size(text);
  } catch (const dcae::Error& e) {
    throw UsageError{std::string("--memory-limit: ") + e.what()};
  }
}

// The rate options, in dcae_deploy.runtime.cli's words for values out of range.
double quality_value(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end) throw UsageError{"--quality: quality must be a number from 0 to 100, got '" + text + "'"};
  try {
    dcae::check_quality(value, "'" + text + "'");
  } catch (const dcae::Error& e) {
    throw UsageError{std::string("--quality: ") + e.what()};
  }
  return value;
}

double target_bpp_value(const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end) value = NAN;
  try {
    dcae::check_target_bpp(value, "'" + text + "'");
  } catch (const dcae::Error& e) {
    throw UsageError{std::string("--target-bpp: ") + e.what()};
  }
  return value;
}

uint64_t max_bytes_value(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end || errno == ERANGE)
    throw UsageError{"--max-bytes: expected a whole number, got '" + text + "'"};
  if (value < 1) throw UsageError{"--max-bytes: must be at least 1, got " + std::to_string(value)};
  return static_cast<uint64_t>(value);
}

// An option given again replaces its value, as in the Python CLI.
void given(std::vector<std::string>* options, const std::string& option) {
  if (std::find(options->begin(), options->end(), option) == options->end()) options->push_back(option);
}

Arguments parse(int argc, char** argv) {
  Arguments args;
  if (argc < 2) throw UsageError{"missing command (compress, decompress or inspect)"};
  args.command = argv[1];
  if (args.command != "compress" && args.command != "decompress" && args.command != "inspect")
    throw UsageError{"unknown command '" + args.command + "' (compress, decompress or inspect)"};
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{a + " needs a value"};
      return argv[++i];
    };
    const bool codec_command = args.command != "inspect";
    if ((a == "-b" || a == "--bundle") && codec_command) args.bundle = value();
    else if ((a == "-o" || a == "--output") && codec_command) args.output = value();
    else if (a == "--threads" && codec_command) args.options.threads = positive_int(a, value());
    else if (a == "--backend" && codec_command) args.options.backend = value();
    else if (a == "--memory-limit" && codec_command) args.options.memory_limit = memory_size(value());
    else if (a == "--json") args.json = true;
    else if (a == "--save-latents" && codec_command) args.save_latents = value();
    else if (a == "--not-portable" && args.command == "compress") args.options.portable = false;
    else if (a == "--margin" && args.command == "compress") args.options.margin = margin_value(value());
    else if ((a == "-q" || a == "--quality") && args.command == "compress")
      args.rate.quality = quality_value(value()), given(&args.rate_options, "--quality");
    else if (a == "--target-bpp" && args.command == "compress")
      args.rate.target_bpp = target_bpp_value(value()), given(&args.rate_options, a);
    else if (a == "--max-bytes" && args.command == "compress")
      args.rate.max_bytes = max_bytes_value(value()), given(&args.rate_options, a);
    else if (a == "--force" && args.command == "decompress") args.force = true;
    else if (a.size() > 1 && a[0] == '-') throw UsageError{"unknown option " + a + " for " + args.command};
    else args.inputs.push_back(a);
  }
  if (args.inputs.empty()) throw UsageError{"no input given"};
  if (args.rate_options.size() > 1)
    throw UsageError{"give one of --quality, --target-bpp and --max-bytes, not " + args.rate_options[0] + " and " +
                     args.rate_options[1]};
  if (args.command == "inspect") {
    if (args.inputs.size() != 1) throw UsageError{"inspect takes one file"};
    return args;
  }
  if (args.bundle.empty()) throw UsageError{"-b BUNDLE is required"};
  if (args.output.empty()) throw UsageError{"-o OUT is required"};
  return args;
}

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string stem(const std::string& path) {
  const std::string name = base_name(path);
  const size_t dot = name.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

std::string suffix(const std::string& path) {
  const std::string name = base_name(path);
  const size_t dot = name.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? "" : lower(name.substr(dot));
}

// Files named by the arguments (files, or directories: every file with one of
// `suffixes` directly inside), in order, without duplicates.
std::vector<std::string> expand_inputs(const std::vector<std::string>& arguments, const std::vector<std::string>& suffixes,
                                       const std::string& what) {
  std::vector<std::string> files;
  for (const std::string& argument : arguments) {
    if (is_directory(argument)) {
      std::vector<std::string> found;
      if (DIR* dir = ::opendir(argument.c_str())) {
        while (const dirent* entry = ::readdir(dir)) {
          const std::string path = argument + (argument.back() == '/' ? "" : "/") + entry->d_name;
          if (!is_directory(path) && std::count(suffixes.begin(), suffixes.end(), suffix(path))) found.push_back(path);
        }
        ::closedir(dir);
      }
      if (found.empty()) throw dcae::Error(dcae::ErrorKind::bad_input, "no " + what + " files in directory " + argument);
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (exists(argument)) {
      files.push_back(argument);
    } else {
      throw dcae::Error(dcae::ErrorKind::bad_input, "no such file or directory: " + argument);
    }
  }
  std::vector<std::string> unique;
  for (const std::string& f : files)
    if (std::find(unique.begin(), unique.end(), f) == unique.end()) unique.push_back(f);
  return unique;
}

void ensure_directory(const std::string& path) {
  if (!is_directory(path) && ::mkdir(path.c_str(), 0777) != 0)
    throw dcae::Error(dcae::ErrorKind::io, "cannot create directory " + path + ": " + std::strerror(errno));
}

// One output per input: `output` itself for one named file (unless it is a
// directory or ends in '/'), else output/<stem><suffix>.
std::vector<std::string> plan_outputs(const std::vector<std::string>& inputs, bool single_file, const std::string& output,
                                      const std::string& out_suffix) {
  if (single_file && !is_directory(output) && output.back() != '/') return {output};
  if (exists(output) && !is_directory(output)) throw UsageError{"-o " + output + " must be a directory when coding several files"};
  ensure_directory(output);
  std::vector<std::string> targets;
  std::map<std::string, std::string> seen;
  for (const std::string& input : inputs) {
    const std::string target = output + (output.back() == '/' ? "" : "/") + stem(input) + out_suffix;
    if (seen.count(target)) throw UsageError{"inputs " + seen[target] + " and " + input + " would both write " + target};
    seen[target] = input;
    targets.push_back(target);
  }
  return targets;
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else out += static_cast<char>(c);
  }
  return out + "\"";
}

std::string timings_json(const dcae::Timings& timings, double load_seconds, double save_seconds) {
  std::ostringstream out;
  out << "{";
  out << "\"read\": " << 1e3 * load_seconds;
  for (const auto& [stage, seconds] : timings) out << ", " << json_string(stage) << ": " << 1e3 * seconds;
  out << ", \"write\": " << 1e3 * save_seconds << "}";
  return out.str();
}

std::vector<size_t> as_sizes(const std::array<int64_t, 4>& shape) {
  return {static_cast<size_t>(shape[0]), static_cast<size_t>(shape[1]), static_cast<size_t>(shape[2]),
          static_cast<size_t>(shape[3])};
}

// Runs `work` on each input, reporting each failure on one line and going on.
template <typename Work>
int for_each_file(const std::vector<std::string>& inputs, const std::vector<std::string>& targets, Work work) {
  int failures = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::vector<std::string> warnings;
    std::string line, error;
    try {
      line = work(inputs[i], targets[i], &warnings);
    } catch (const dcae::Error& e) {
      error = e.what();
    } catch (const std::bad_alloc&) {
      error = "out of memory";
    } catch (const std::exception& e) {
      error = "internal error (" + dcae::one_line(e.what()) + ")";
    }
    if (error.empty()) {
      // Only on success: a failure is one line, its error.
      for (const std::string& w : warnings) std::cerr << "dcae-host: warning: " << inputs[i] << ": " << w << "\n";
      std::cout << line << std::endl;
    } else {
      ++failures;
      std::cerr << "dcae-host: error: " << inputs[i] << ": " << error << std::endl;
    }
  }
  return failures ? 1 : 0;
}

// What coding one file hands back to code_files.
struct Coded {
  std::string line;         // printed on success
  std::string json_fields;  // beyond input, output and timings: ", \"name\": value..."
  std::vector<std::pair<std::string, std::vector<uint8_t>>> latents;  // (name, .npy bytes) for --save-latents
  double read_seconds = 0, write_seconds = 0;
};

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Opens the codec once and runs `step(codec, source, target, warnings)` on
// every input file.
template <typename Step>
int code_files(const Arguments& args, const std::vector<std::string>& suffixes, const std::string& what,
               const std::string& out_suffix, Step step) {
  const std::vector<std::string> inputs = expand_inputs(args.inputs, suffixes, what);
  const bool single = args.inputs.size() == 1 && inputs.size() == 1 && inputs[0] == args.inputs[0];
  const std::vector<std::string> targets = plan_outputs(inputs, single, args.output, out_suffix);
  if (!args.save_latents.empty()) ensure_directory(args.save_latents);
  dcae::Codec codec(args.bundle, args.options);
  for (const std::string& w : codec.last_warnings()) std::cerr << "dcae-host: warning: " << w << "\n";
  return for_each_file(inputs, targets, [&](const std::string& source, const std::string& target,
                                            std::vector<std::string>* warnings) {
    const Coded coded = step(codec, source, target, warnings);
    for (const auto& [name, bytes] : coded.latents) {
      const std::string path = args.save_latents + "/" + stem(source) + "." + name + ".npy";
      dcae::write_atomically(path, bytes.data(), bytes.size());
    }
    if (!args.json) return coded.line;
    std::ostringstream out;
    out << "{\"input\": " << json_string(source) << ", \"output\": " << json_string(target) << coded.json_fields
        << ", \"timings_ms\": " << timings_json(codec.last_timings(), coded.read_seconds, coded.write_seconds) << "}";
    return out.str();
  });
}

std::string size_fields(uint32_t height, uint32_t width) {
  return ", \"height\": " + std::to_string(height) + ", \"width\": " + std::to_string(width);
}

// How many tiles the image transform ran in, and their shape in latent pixels
// (16 image pixels each); one tile is the whole image.
std::string tile_fields(const dcae::TransformTiles& tiles) {
  return ", \"tiles\": " + std::to_string(tiles.count) + ", \"tile\": [" + std::to_string(tiles.tile_height) +
         ", " + std::to_string(tiles.tile_width) + "]";
}

// Rate control's tries, [[gain_code, bytes], ...]; null for a quality.
std::string tries_json(const std::vector<std::pair<uint16_t, uint64_t>>& tries) {
  if (tries.empty()) return "null";
  std::string out = "[";
  for (size_t i = 0; i < tries.size(); ++i)
    out += (i ? ", [" : "[") + std::to_string(tries[i].first) + ", " + std::to_string(tries[i].second) + "]";
  return out + "]";
}

int compress(const Arguments& args) {
  const bool latents = !args.save_latents.empty();
  return code_files(args, {".png"}, "PNG", ".dcae", [&](dcae::Codec& codec, const std::string& source,
                                                        const std::string& target, std::vector<std::string>* warnings) {
    Coded coded;
    const auto t0 = Clock::now();
    const dcae::Image image = dcae::read_png(source, warnings);
    const auto t1 = Clock::now();
    const dcae::EncodeResult result = codec.encode(image, args.rate);
    for (const std::string& w : codec.last_warnings()) warnings->push_back(w);
    const auto t2 = Clock::now();
    dcae::write_atomically(target, result.file.data(), result.file.size());
    coded.read_seconds = seconds_between(t0, t1);
    coded.write_seconds = seconds_between(t2, Clock::now());
    if (latents) {
      const std::vector<size_t> shape = as_sizes(result.latent_shape);
      coded.latents = {{"symbols", dcae::npy_bytes(shape, result.symbols.data())},
                       {"indexes", dcae::npy_bytes(shape, result.indexes.data())},
                       {"y_hat", dcae::npy_bytes(shape, result.y_hat.data())},
                       {"z_symbols", dcae::npy_bytes({result.z_symbols.size()}, result.z_symbols.data())}};
    }
    const double bpp = 8.0 * static_cast<double>(result.file.size()) / (static_cast<double>(image.height) * image.width);
    char bpp_text[32];
    std::snprintf(bpp_text, sizeof bpp_text, "%.4f", bpp);
    coded.json_fields = ", \"bytes\": " + std::to_string(result.file.size()) + size_fields(image.height, image.width) +
                        ", \"bpp\": " + bpp_text + ", \"marked\": " + std::to_string(result.marked) +
                        ", \"threshold_shifts\": " +
                        (result.threshold_shifts ? std::to_string(result.threshold_shifts) : std::string("null")) +
                        ", \"shift_block\": " +
                        (result.shift_block ? std::to_string(result.shift_block) : std::string("null")) +
                        tile_fields(result.analysis_tiles) + ", \"gain_code\": " +
                        std::to_string(result.gain_code) + ", \"rate_tries\": " + tries_json(result.rate_tries);
    coded.line = source + " -> " + target + ": " + std::to_string(result.file.size()) + " bytes, " + bpp_text + " bpp";
    if (!result.rate_tries.empty()) {
      char gain[32];
      std::snprintf(gain, sizeof gain, "%g", static_cast<double>(dcae::gain_of(result.gain_code)));
      coded.line += std::string(" (gain ") + gain + ", " + std::to_string(result.rate_tries.size()) + " tries)";
    }
    return coded;
  });
}

int decompress(const Arguments& args) {
  const bool latents = !args.save_latents.empty();
  return code_files(args, {".dcae", ".bin"}, ".dcae or .bin", ".png",
                    [&](dcae::Codec& codec, const std::string& source, const std::string& target,
                        std::vector<std::string>* warnings) {
    Coded coded;
    const auto t0 = Clock::now();
    const std::vector<uint8_t> file = dcae::read_file(source);
    const auto t1 = Clock::now();
    const dcae::DecodeResult result = codec.decode(file, args.force);
    *warnings = codec.last_warnings();
    const auto t2 = Clock::now();
    dcae::write_png(target, result.image);
    coded.read_seconds = seconds_between(t0, t1);
    coded.write_seconds = seconds_between(t2, Clock::now());
    if (latents) {
      const std::vector<size_t> shape = as_sizes(result.latent_shape);
      coded.latents = {{"symbols", dcae::npy_bytes(shape, result.symbols.data())},
                       {"y_hat", dcae::npy_bytes(shape, result.y_hat.data())}};
    }
    coded.json_fields = size_fields(result.image.height, result.image.width) + tile_fields(result.synthesis_tiles);
    coded.line = source + " -> " + target + ": " + std::to_string(result.image.height) + "x" +
                 std::to_string(result.image.width);
    return coded;
  });
}

// The header fields and stream lengths of a .dcae; needs no bundle. A
// portable file's side stream is parsed and checked on its own terms (the
// latent's size depends on the model): the elements it lists and its
// threshold shifts, as dcae_deploy.runtime.cli's describe.
int inspect(const Arguments& args) {
  const std::vector<uint8_t> data = dcae::read_file(args.inputs[0]);
  const dcae::DcaeFile file = dcae::unpack_dcae(data.data(), data.size());
  const dcae::FileHeader& h = file.header;
  std::string side_fields = ", \"side_marked\": 0, \"threshold_shifts\": null, \"shift_block\": null";
  if (h.portable) {
    const dcae::SideInfo side = dcae::decode_side_stream(file.side.data, file.side.size, dcae::kLatentSizeUnknown);
    side_fields = ", \"side_marked\": " + std::to_string(side.positions.size()) +
                  ", \"threshold_shifts\": " + std::to_string(side.shifts.count) + ", \"shift_block\": " +
                  (side.shifts.count > 1 ? std::to_string(side.shifts.block) : std::string("null"));
  }
  char margin[32], gain[32];
  std::snprintf(margin, sizeof margin, "%.9g", static_cast<double>(h.margin));
  std::snprintf(gain, sizeof gain, "%.9g", static_cast<double>(dcae::gain_of(h.gain_code)));
  std::cout << "{\"file\": " << json_string(args.inputs[0]) << ", \"version\": " << int{dcae::kFormatVersion}
            << ", \"gain_code\": " << h.gain_code << ", \"gain\": " << gain
            << ", \"portable\": " << (h.portable ? "true" : "false")
            << ", \"reduced_precision_entropy\": " << (h.reduced_precision_entropy ? "true" : "false")
            << ", \"height\": " << h.height << ", \"width\": " << h.width << ", \"fingerprint\": \""
            << dcae::to_hex(h.fingerprint.data(), 16) << "\", \"margin\": " << margin << ", \"z_bytes\": " << file.z.size
            << ", \"y_bytes\": " << file.y.size << ", \"side_bytes\": " << file.side.size << side_fields
            << ", \"file_bytes\": " << data.size() << "}" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::cout << kUsage;
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "--version") == 0) {
    std::cout << "dcae-host 0.1.0\n";
    return 0;
  }
  for (int i = 2; i < argc; ++i)
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::cout << kUsage;
      return 0;
    }
  try {
    const Arguments args = parse(argc, argv);
    if (args.command == "compress") return compress(args);
    if (args.command == "decompress") return decompress(args);
    return inspect(args);
  } catch (const UsageError& e) {
    std::cerr << "dcae-host: error: " << dcae::one_line(e.message) << " (see dcae-host --help)" << std::endl;
    return 2;
  } catch (const dcae::Error& e) {
    std::cerr << "dcae-host: error: " << e.what() << std::endl;
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "dcae-host: error: out of memory" << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "dcae-host: error: internal error (" << dcae::one_line(e.what()) << ")" << std::endl;
    return 1;
  } catch (...) {
    std::cerr << "dcae-host: error: internal error (unknown exception)" << std::endl;
    return 1;
  }
}
