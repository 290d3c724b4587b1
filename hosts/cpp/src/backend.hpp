// What runs a bundle's graphs, behind one small interface (as the Python
// runtime's dcae_deploy/runtime/backends.py): a Backend loads a graph into a
// GraphSession, which maps named float32 inputs to named float32 outputs.
// OpenVINO implements it here; a TensorRT backend would implement the same
// two classes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"

namespace dcae {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// An input: a name and float32 data in C order, borrowed for the call.
struct TensorInput {
  std::string name;
  const float* data;
  std::vector<int64_t> shape;
};

class GraphSession {
 public:
  virtual ~GraphSession() = default;
  // Makes the session ready for inputs of these shapes (OpenVINO compiles
  // the graph for each new size); returns the seconds that took, 0 when
  // nothing was to do, so that graph timings count inference only.
  virtual double prepare(const std::vector<TensorInput>& inputs) = 0;
  // Error(backend) when the graph fails on the inputs.
  virtual std::map<std::string, Tensor> run(const std::vector<TensorInput>& inputs) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The arithmetic the backend does: part of the fingerprint of files that
  // are not portable, so that only a backend of the same class decodes them.
  virtual std::string numeric_class() const = 0;
  // Error(bundle) when the graph file cannot be loaded or its tensor names
  // are not the manifest's.
  virtual std::unique_ptr<GraphSession> load(const GraphSpec& graph, const std::string& path) = 0;
  // The backend's declared bound on |ln(scale) - ln(scale in float64)| for
  // fp32 entropy graphs: a portable file's margin must be at least twice it.
  virtual double scale_error_bound() const = 0;
  // Why this backend would run the bundle worse than it was measured at
  // export (a warning for the user), or "".
  virtual std::string bundle_warning(const Bundle&) const { return ""; }
};

// "openvino" (all graphs f32) or "openvino-bf16"; threads 0: one per core.
// Error(backend) for an unknown name or one this machine cannot run.
std::unique_ptr<Backend> make_backend(const std::string& name, int threads);

}  // namespace dcae
