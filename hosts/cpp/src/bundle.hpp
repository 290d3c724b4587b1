// Opening a bundle directory written by dcae-export (dcae_deploy/runtime/manifest.py,
// dcae_deploy/runtime/bundle.py): the manifest, every file's sha256, each graph's tensor
// names, and the entropy tables, all checked before a graph is loaded.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "entropy.hpp"
#include "quality.hpp"
#include "rans.hpp"

namespace dcae {

struct TensorSpec {
  std::string name;
  std::string dtype;  // "float32" or "float16"
};

struct GraphSpec {
  std::string name, file, sha256, precision;
  std::vector<TensorSpec> inputs, outputs;
};

// The graphs in pipeline order: g_a, h_a, h_s, slice_params_i, slice_lrp_i, g_s.
std::vector<std::string> graph_order(int num_slices);
// Graphs whose outputs decide scale indexes and roundings.
bool is_entropy_graph(const std::string& name);

struct Bundle {
  std::string path;
  int latent_channels = 0;  // M
  int num_slices = 0;
  int z_channels = 0;
  int window_size = 0;  // model config: the Swin window, which tile origins keep to (tiling.hpp)
  // manifest "bytes_per_pixel": the image transforms' measured working memory
  // per padded image pixel ({"g_a": n, "g_s": n}), which sizes their tiles;
  // a graph absent here was not measured.
  std::map<std::string, int64_t> bytes_per_pixel;
  std::map<std::string, GraphSpec> graphs;
  std::string entropy_fingerprint;        // manifest field, hex
  std::string entropy_model_fingerprint;  // manifest field, 32 hex chars; empty in older bundles
  bool reduced_precision_entropy = false;
  // manifest "int8_weight_bits": 7 or 8 in int8 bundles; 0 where absent
  // (bundles written before the field had 8-bit weights)
  int int8_weight_bits = 0;
  // The margin portable files of this model get by default: manifest
  // "portable"."margin": the model's own, recorded at export (dcae.margin.model_margin).
  double portable_margin = 0.0;
  // manifest "rate_levels": the gains a variable-rate model was trained at,
  // onto which qualities map; untrained_levels() where it has none.
  RateLevels rate_levels = untrained_levels();
  ScaleTable scale_table;
  CdfTables gaussian;
  ZTables z;

  int slice_channels() const { return latent_channels / num_slices; }
  // Whether the bundle has int8 graphs with 8-bit weights, which int8
  // kernels on x86 without VNNI saturate (dcae_deploy.runtime.manifest, same name).
  bool int8_weights_saturate_without_vnni() const;
  std::string graph_path(const std::string& name) const;

  // Error(bundle) with a one-line reason for anything missing or altered.
  static Bundle open(const std::string& path);
};

}  // namespace dcae
