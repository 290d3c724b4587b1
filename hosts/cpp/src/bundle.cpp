#include "bundle.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "container.hpp"
#include "dcae/codec.hpp"
#include "errors.hpp"
#include "fileio.hpp"
#include "hashing.hpp"
#include "npy.hpp"

namespace dcae {
namespace {

using nlohmann::json;

constexpr const char* kManifestName = "manifest.json";

[[noreturn]] void refuse(const std::string& reason) { fail(ErrorKind::bundle, reason); }

std::pair<std::vector<std::string>, std::vector<std::string>> graph_io_names(const std::string& name) {
  if (name == "g_a") return {{"x"}, {"y"}};
  if (name == "h_a") return {{"y"}, {"z"}};
  if (name == "h_s") return {{"z_hat"}, {"latent_scales", "latent_means"}};
  if (name == "slice_params_0") return {{"latent_scales", "latent_means"}, {"mu", "scale", "support"}};
  if (name.rfind("slice_params_", 0) == 0) return {{"latent_scales", "latent_means", "y_hat_prev"}, {"mu", "scale", "support"}};
  if (name.rfind("slice_lrp_", 0) == 0) return {{"support", "y_hat_raw"}, {"y_hat"}};
  return {{"y_hat"}, {"x_hat"}};  // g_s
}

std::vector<std::string> sorted_names(const std::vector<TensorSpec>& tensors) {
  std::vector<std::string> names;
  for (const TensorSpec& t : tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  return names;
}

std::string joined(const std::vector<std::string>& names) {
  std::string text = "[";
  for (size_t i = 0; i < names.size(); ++i) text += (i ? ", " : "") + names[i];
  return text + "]";
}

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool is_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// The manifest names files inside the bundle; never follow it elsewhere.
std::string member(const std::string& bundle, const std::string& file, const std::string& what) {
  if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos)
    refuse("manifest names " + what + " file '" + file + "', not a file in the bundle directory");
  return bundle + "/" + file;
}

void check_file(const std::string& path, const std::string& expected_sha256, const std::string& what) {
  const std::string name = path.substr(path.rfind('/') + 1);
  if (!is_file(path)) refuse("bundle " + what + " " + name + " is missing");
  if (sha256_file_hex(path, "bundle " + what + " " + name) != expected_sha256)
    refuse("bundle " + what + " " + name + " was altered (sha256 mismatch)");
}

std::vector<TensorSpec> tensors(const json& list) {
  std::vector<TensorSpec> out;
  for (const json& t : list) out.push_back({t.at("name").get<std::string>(), t.at("dtype").get<std::string>()});
  return out;
}

// The manifest's entropy_fingerprint, recomputed as dcae_deploy/runtime/manifest.py does.
std::string entropy_path_fingerprint(const Bundle& bundle, const std::string& entropy_sha256) {
  std::string text = "dcae-entropy-path-v1";
  for (const std::string& name : graph_order(bundle.num_slices))
    if (is_entropy_graph(name)) {
      const GraphSpec& g = bundle.graphs.at(name);
      text += name + ":" + g.precision + ":" + g.sha256 + ";";
    }
  text += "tables:" + entropy_sha256;
  return sha256_hex(text);
}

// As dcae_deploy.runtime.manifest validates it; the bound keeps the
// planner's products of bytes and pixels in 64 bits.
void read_bytes_per_pixel(const json& record, Bundle* bundle) {
  bool valid = record.is_object();
  if (valid)
    for (const auto& [name, value] : record.items())
      valid = valid && (name == "g_a" || name == "g_s") && value.is_number_integer() &&
              value.get<int64_t>() > 0 && value.get<int64_t>() < (int64_t{1} << 31);
  if (!valid) refuse("manifest bytes_per_pixel must map g_a and g_s to positive whole numbers, got " + record.dump());
  for (const auto& [name, value] : record.items()) bundle->bytes_per_pixel[name] = value.get<int64_t>();
}

// As dcae_deploy.runtime.manifest and RateLevels.from_record read it: an
// empty object is a model trained at one rate.
void read_rate_levels(const json& record, Bundle* bundle) {
  if (!record.is_object()) refuse("manifest rate_levels is not an object");
  if (record.empty()) return;
  RateLevels levels;
  std::string problem;
  try {
    if (!record.at("gains").is_array()) throw std::invalid_argument("gains is not a list");
    for (const json& gain : record.at("gains")) levels.gains.push_back(gain.get<double>());
    levels.reference = record.at("reference").get<int>();
    problem = levels.problem();
  } catch (const std::exception& e) {
    problem = e.what();
  }
  if (!problem.empty()) refuse("manifest rate_levels is not a set of rate levels (" + one_line(problem) + ")");
  bundle->rate_levels = std::move(levels);
}

void read_manifest(const std::string& path, Bundle* bundle, std::string* entropy_file, std::string* entropy_sha256) {
  if (!is_directory(path)) refuse("bundle not found: " + path + " is not a directory");
  const std::string manifest_path = path + "/" + kManifestName;
  if (!is_file(manifest_path)) refuse("not a bundle: " + manifest_path + " is missing");
  json d;
  try {
    const std::vector<uint8_t> text = read_file(manifest_path);
    d = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    refuse(std::string(kManifestName) + " is not valid JSON (" + e.what() + ")");
  } catch (const Error& e) {
    refuse(std::string("bundle ") + kManifestName + " cannot be read (" + e.what() + ")");
  }
  try {
    if (!d.is_object() || d.value("format", "") != "dcae-bundle") refuse(std::string(kManifestName) + " is not a dcae-bundle manifest");
    if (d.at("format_version") != 1)
      refuse("bundle format version " + d.at("format_version").dump() + " is not supported (this host reads version 1)");
    const json& config = d.at("model").at("config");
    bundle->latent_channels = config.at("M").get<int>();
    bundle->num_slices = config.at("num_slices").get<int>();
    bundle->z_channels = config.at("z_channels").get<int>();
    if (bundle->num_slices < 1 || bundle->latent_channels < 1 || bundle->z_channels < 1 ||
        bundle->latent_channels % bundle->num_slices)
      refuse("manifest model config has M=" + std::to_string(bundle->latent_channels) +
             ", num_slices=" + std::to_string(bundle->num_slices) + ": M must split into slices");
    if (bundle->num_slices > 1000) refuse("manifest model config has an absurd number of slices");
    bundle->window_size = config.at("window_size").get<int>();
    if (bundle->window_size < 1 || bundle->window_size > 1024)
      refuse("manifest model config has window_size=" + std::to_string(bundle->window_size));
    for (const json& g : d.at("graphs")) {
      GraphSpec spec{g.at("name").get<std::string>(), g.at("file").get<std::string>(), g.at("sha256").get<std::string>(),
                     g.at("precision").get<std::string>(), tensors(g.at("inputs")), tensors(g.at("outputs"))};
      bundle->graphs[spec.name] = spec;
    }
    *entropy_file = d.at("entropy_file").get<std::string>();
    *entropy_sha256 = d.at("entropy_sha256").get<std::string>();
    bundle->entropy_fingerprint = d.at("entropy_fingerprint").get<std::string>();
    if (d.contains("entropy_model_fingerprint") && !d.at("entropy_model_fingerprint").is_null())
      bundle->entropy_model_fingerprint = d.at("entropy_model_fingerprint").get<std::string>();
    if (d.contains("int8_weight_bits") && !d.at("int8_weight_bits").is_null())
      bundle->int8_weight_bits = d.at("int8_weight_bits").get<int>();
    if (d.contains("bytes_per_pixel")) read_bytes_per_pixel(d.at("bytes_per_pixel"), bundle);
    if (d.contains("rate_levels")) read_rate_levels(d.at("rate_levels"), bundle);
    bundle->portable_margin = kDefaultPortableMargin;
    if (d.contains("portable") && d.at("portable").contains("margin")) {
      const json& margin = d.at("portable").at("margin");
      // As a file stores it (float32), which is what the container checks.
      if (!margin.is_number() || !(margin.get<float>() > 0.0f && margin.get<float>() <= kMaxPortableMargin))
        refuse("manifest portable margin must be a number in (0, 0.01], got " + margin.dump());
      bundle->portable_margin = margin.get<double>();
    }
  } catch (const json::exception& e) {
    refuse(std::string(kManifestName) + " is missing or has malformed fields (" + e.what() + ")");
  }
}

void check_graphs(const std::string& path, Bundle* bundle) {
  std::vector<std::string> expected = graph_order(bundle->num_slices);
  std::vector<std::string> missing;
  for (const std::string& name : expected)
    if (!bundle->graphs.count(name)) missing.push_back(name);
  if (!missing.empty() || bundle->graphs.size() != expected.size())
    refuse("manifest graphs do not match the model: missing " + joined(missing));
  for (const std::string& name : expected) {
    const GraphSpec& spec = bundle->graphs.at(name);
    if (spec.precision != "fp32" && spec.precision != "fp16" && spec.precision != "int8")
      refuse("graph " + name + " has unknown precision '" + spec.precision + "'");
    auto [wanted_in, wanted_out] = graph_io_names(name);
    std::sort(wanted_in.begin(), wanted_in.end());
    std::sort(wanted_out.begin(), wanted_out.end());
    if (sorted_names(spec.inputs) != wanted_in || sorted_names(spec.outputs) != wanted_out)
      refuse("manifest graph " + name + " has inputs " + joined(sorted_names(spec.inputs)) + " and outputs " +
             joined(sorted_names(spec.outputs)) + ", expected " + joined(wanted_in) + " and " + joined(wanted_out));
    for (const auto* list : {&spec.inputs, &spec.outputs})
      for (const TensorSpec& t : *list)
        if (t.dtype != "float32" && t.dtype != "float16")
          refuse("manifest graph " + name + " tensor " + t.name + " has dtype '" + t.dtype + "', expected float32 or float16");
    if (is_entropy_graph(name) && spec.precision != "fp32") bundle->reduced_precision_entropy = true;
  }
  for (const std::string& name : expected) {
    const GraphSpec& spec = bundle->graphs.at(name);
    check_file(member(path, spec.file, "graph " + name), spec.sha256, "graph");
  }
}

const NpyArray& array(const std::map<std::string, NpyArray>& npz, const std::string& name) {
  auto found = npz.find(name);
  if (found == npz.end()) refuse("bundle entropy.npz lacks array " + name);
  return found->second;
}

void load_entropy(const std::string& path, Bundle* bundle) {
  const std::string what = "bundle entropy tables";
  const auto npz = read_npz(path, what);
  auto floats = [&](const char* name) { return to_float32(array(npz, name), what + " " + name); };
  auto ints = [&](const char* name) { return to_int32(array(npz, name), what + " " + name); };
  auto shape = [&](const char* name) { return array(npz, name).shape; };

  bundle->scale_table.scales = floats("gaussian_scale_table");
  const std::vector<float> bound = floats("gaussian_scale_bound");
  const std::vector<float>& table = bundle->scale_table.scales;
  if (shape("gaussian_scale_table").size() != 1 || table.size() < 2)
    refuse(what + ": gaussian_scale_table must be 1-D with at least 2 scales");
  for (size_t i = 0; i < table.size(); ++i)
    if (!std::isfinite(table[i]) || (i && !(table[i] > table[i - 1])))
      refuse(what + ": gaussian_scale_table must be finite and ascending");
  if (!shape("gaussian_scale_bound").empty() || !std::isfinite(bound[0]))
    refuse(what + ": gaussian_scale_bound must be one finite number");
  bundle->scale_table.bound = bound[0];

  auto tables = [&](const std::string& prefix, size_t rows) {
    const std::vector<size_t> cdf_shape = shape((prefix + "_cdfs").c_str());
    if (cdf_shape.size() != 2 || cdf_shape[0] != rows)
      refuse(what + ": " + prefix + "_cdfs must have " + std::to_string(rows) + " rows");
    std::vector<int32_t> cdfs = ints((prefix + "_cdfs").c_str());
    std::vector<int32_t> lengths = ints((prefix + "_cdf_lengths").c_str());
    std::vector<int32_t> offsets = ints((prefix + "_offsets").c_str());
    const std::string problem = CdfTables::problem(cdfs, cdf_shape[0], cdf_shape[1], lengths, offsets);
    if (!problem.empty()) refuse(what + ": " + prefix + " tables are not valid rANS tables (" + problem + ")");
    return CdfTables(std::move(cdfs), cdf_shape[0], cdf_shape[1], std::move(lengths), std::move(offsets));
  };
  bundle->gaussian = tables("gaussian", table.size());
  bundle->z.medians = floats("z_medians");
  if (shape("z_medians") != std::vector<size_t>{static_cast<size_t>(bundle->z_channels)})
    refuse(what + ": z_medians must be " + std::to_string(bundle->z_channels) + " values");
  for (float m : bundle->z.medians)
    if (!std::isfinite(m)) refuse(what + ": z_medians must be finite");
  bundle->z.cdfs = tables("z", static_cast<size_t>(bundle->z_channels));
}

}  // namespace

std::vector<std::string> graph_order(int num_slices) {
  std::vector<std::string> names = {"g_a", "h_a", "h_s"};
  for (int i = 0; i < num_slices; ++i) {
    names.push_back("slice_params_" + std::to_string(i));
    names.push_back("slice_lrp_" + std::to_string(i));
  }
  names.push_back("g_s");
  return names;
}

bool is_entropy_graph(const std::string& name) { return name == "h_s" || name.rfind("slice_", 0) == 0; }

bool Bundle::int8_weights_saturate_without_vnni() const {
  const bool has_int8 = std::any_of(graphs.begin(), graphs.end(), [](const auto& g) { return g.second.precision == "int8"; });
  return has_int8 && (int8_weight_bits == 0 ? 8 : int8_weight_bits) > 7;
}

std::string Bundle::graph_path(const std::string& name) const { return path + "/" + graphs.at(name).file; }

Bundle Bundle::open(const std::string& path) {
  Bundle bundle;
  bundle.path = path;
  std::string entropy_file, entropy_sha256;
  read_manifest(path, &bundle, &entropy_file, &entropy_sha256);
  check_graphs(path, &bundle);
  if (bundle.entropy_fingerprint != entropy_path_fingerprint(bundle, entropy_sha256))
    refuse("manifest entropy fingerprint does not match its graphs and tables");
  const std::string& model_fingerprint = bundle.entropy_model_fingerprint;
  if (!model_fingerprint.empty() &&
      (model_fingerprint.size() != 32 || model_fingerprint.find_first_not_of("0123456789abcdef") != std::string::npos))
    refuse("manifest entropy_model_fingerprint must be 32 lowercase hex digits");
  const std::string entropy_path = member(path, entropy_file, "entropy");
  check_file(entropy_path, entropy_sha256, "entropy tables");
  load_entropy(entropy_path, &bundle);
  return bundle;
}

}  // namespace dcae
