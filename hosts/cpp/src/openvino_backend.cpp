// OpenVINO's CPU plugin, reading the bundle's ONNX graphs directly, set up
// exactly as the Python runtime's OpenVinoBackend (dcae_deploy/runtime/backends.py) so
// that both compute the same bits: graphs compiled for static input shapes
// (the same graph compiled for dynamic shapes computes other bits), the same
// properties, the entropy graphs always in f32.
#include <openvino/openvino.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <list>
#include <set>
#include <sstream>

#include "backend.hpp"
#include "errors.hpp"

namespace dcae {
namespace {

// Each compiled model holds its own copy of the weights: keep the most
// recently used image sizes only (dcae_deploy.runtime.backends.OPENVINO_COMPILED_SIZES_KEPT).
constexpr size_t kCompiledSizesKept = 2;

// |ln(scale) - ln(scale in float64)| of OpenVINO's f32 entropy graphs near
// index boundaries: dcae_deploy.runtime.backends.OpenVinoBackend.sigma_error_bound
// (measured at most 7.7e-6 on the embedded model; 5.3e-6 on its earlier
// weights, stated with a margin of 2x).
constexpr double kOpenVinoScaleErrorBound = 1.1e-5;

// dcae_deploy.runtime.backends.OpenVinoBackend.bundle_warning, word for word.
constexpr const char* kInt8SaturationWarning =
    "this int8 bundle has 8-bit weights, which OpenVINO's int8 kernels saturate on this CPU (no VNNI): "
    "the image comes out far worse (measured 13 dB worse on an AMD EPYC with AVX2); export it again with "
    "dcae-export --precision int8 (the onnxruntime form, 7-bit weights)";

// Whether int8 kernels on this CPU add pairs of u8 x s8 products in int16
// (VPMADDUBSW: x86 without VNNI or AMX), where 8-bit weights saturate
// (dcae_deploy.runtime.backends.int8_products_saturate_here). False where it cannot be told.
bool int8_products_saturate_here() {
#if defined(__x86_64__) || defined(_M_X64)
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags{std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    return !flags.count("avx512_vnni") && !flags.count("avx_vnni") && !flags.count("amx_int8");
  }
#endif
  return false;
}

std::string release(const std::string& build) { return build.substr(0, build.find('-')); }

ov::Core& core() {
  // One Core per process: it owns the plugins and their thread pools.
  static ov::Core instance;
  return instance;
}

using ShapeKey = std::vector<std::vector<int64_t>>;

class OpenVinoSession final : public GraphSession {
 public:
  OpenVinoSession(const GraphSpec& spec, std::shared_ptr<ov::Model> model, ov::AnyMap config)
      : spec_(spec), model_(std::move(model)), config_(std::move(config)) {
    for (const TensorSpec& t : spec_.outputs) output_names_.push_back(t.name);
  }

  double prepare(const std::vector<TensorInput>& inputs) override {
    const auto start = std::chrono::steady_clock::now();
    request(inputs);
    return compiled_now_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() : 0.0;
  }

  std::map<std::string, Tensor> run(const std::vector<TensorInput>& inputs) override {
    std::map<std::string, Tensor> outputs;
    try {
      ov::InferRequest& infer = request(inputs);
      for (const TensorInput& input : inputs) {
        const ov::Shape shape(input.shape.begin(), input.shape.end());
        // Wraps the caller's memory: OpenVINO reads it during infer() only.
        infer.set_tensor(input.name, ov::Tensor(ov::element::f32, shape, const_cast<float*>(input.data)));
      }
      infer.infer();
      for (const std::string& name : output_names_) {
        const ov::Tensor result = infer.get_tensor(name);
        Tensor& out = outputs[name];
        for (size_t side : result.get_shape()) out.shape.push_back(static_cast<int64_t>(side));
        out.data.resize(result.get_size());
        std::memcpy(out.data.data(), result.data<const float>(), out.data.size() * sizeof(float));
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail(ErrorKind::backend, "graph " + spec_.name + " failed in OpenVINO: " + e.what());
    }
    return outputs;
  }

 private:
  ov::InferRequest& request(const std::vector<TensorInput>& inputs) {
    ShapeKey key;
    for (const TensorInput& input : inputs) key.push_back(input.shape);
    compiled_now_ = false;
    for (auto it = requests_.begin(); it != requests_.end(); ++it)
      if (it->first == key) {
        requests_.splice(requests_.end(), requests_, it);  // now the most recently used
        return requests_.back().second;
      }
    if (requests_.size() >= kCompiledSizesKept) requests_.pop_front();
    try {
      std::shared_ptr<ov::Model> model = model_->clone();
      std::map<std::string, ov::PartialShape> shapes;
      for (const TensorInput& input : inputs) shapes[input.name] = ov::PartialShape(ov::Shape(input.shape.begin(), input.shape.end()));
      model->reshape(shapes);
      ov::CompiledModel compiled = core().compile_model(model, "CPU", config_);
      requests_.emplace_back(key, compiled.create_infer_request());
    } catch (const std::exception& e) {
      fail(ErrorKind::backend, "graph " + spec_.name + " cannot be compiled by OpenVINO: " + e.what());
    }
    compiled_now_ = true;
    return requests_.back().second;
  }

  GraphSpec spec_;
  std::shared_ptr<ov::Model> model_;
  ov::AnyMap config_;
  std::vector<std::string> output_names_;
  std::list<std::pair<ShapeKey, ov::InferRequest>> requests_;  // oldest first
  bool compiled_now_ = false;
};

class OpenVinoBackend final : public Backend {
 public:
  OpenVinoBackend(std::string precision, int threads) : precision_(std::move(precision)), threads_(threads) {
    if (threads < 0) fail(ErrorKind::backend, "thread count must be at least 1, got " + std::to_string(threads));
    try {
      if (precision_ == "bf16") {
        const auto capabilities = core().get_property("CPU", ov::device::capabilities);
        if (std::find(capabilities.begin(), capabilities.end(), "BF16") == capabilities.end())
          fail(ErrorKind::backend, "OpenVINO bf16 unavailable: this CPU has no bf16 instructions");
      }
      numeric_class_ = "openvino-cpu:" + release(ov::get_openvino_version().buildNumber);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail(ErrorKind::backend, std::string("OpenVINO CPU plugin unavailable: ") + e.what());
    }
  }

  std::string name() const override { return precision_ == "f32" ? "openvino" : "openvino-" + precision_; }
  std::string numeric_class() const override { return numeric_class_; }
  double scale_error_bound() const override { return kOpenVinoScaleErrorBound; }
  std::string bundle_warning(const Bundle& bundle) const override {
    if (!bundle.int8_weights_saturate_without_vnni() || !int8_products_saturate_here()) return "";
    return kInt8SaturationWarning;
  }

  std::unique_ptr<GraphSession> load(const GraphSpec& graph, const std::string& path) override {
    const std::string file = path.substr(path.rfind('/') + 1);
    std::shared_ptr<ov::Model> model;
    std::vector<std::string> actual_in, actual_out;
    try {
      model = core().read_model(path);
      for (const auto& port : model->inputs()) actual_in.push_back(port.get_any_name());
      for (const auto& port : model->outputs()) actual_out.push_back(port.get_any_name());
    } catch (const std::exception& e) {
      fail(ErrorKind::bundle, "bundle graph " + file + " cannot be loaded by OpenVINO: " + e.what());
    }
    std::vector<std::string> wanted_in, wanted_out;
    for (const TensorSpec& t : graph.inputs) wanted_in.push_back(t.name);
    for (const TensorSpec& t : graph.outputs) wanted_out.push_back(t.name);
    for (auto* names : {&actual_in, &actual_out, &wanted_in, &wanted_out}) std::sort(names->begin(), names->end());
    if (actual_in != wanted_in || actual_out != wanted_out)
      fail(ErrorKind::bundle, "bundle graph " + file + " has other tensor names than the manifest says");
    // fp16 graphs: the host always hands over and gets back float32.
    bool all_f32 = true;
    for (const auto* list : {&graph.inputs, &graph.outputs})
      for (const TensorSpec& t : *list) all_f32 = all_f32 && t.dtype == "float32";
    if (!all_f32) {
      ov::preprocess::PrePostProcessor steps(model);
      for (const TensorSpec& t : graph.inputs) steps.input(t.name).tensor().set_element_type(ov::element::f32);
      for (const TensorSpec& t : graph.outputs) steps.output(t.name).tensor().set_element_type(ov::element::f32);
      model = steps.build();
    }
    return std::make_unique<OpenVinoSession>(graph, model, config_for(graph));
  }

 private:
  // The properties dcae_deploy.runtime.backends.openvino_compile_config sets: the
  // precision always given (the CPU plugin defaults to bf16 where the CPU has
  // it), one stream and the latency hint (one graph runs at a time).
  ov::AnyMap config_for(const GraphSpec& graph) const {
    const bool f32 = is_entropy_graph(graph.name) || precision_ == "f32";
    ov::AnyMap config = {ov::hint::inference_precision(f32 ? ov::element::f32 : ov::element::bf16),
                         ov::num_streams(1), ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    if (threads_ > 0) config.insert(ov::inference_num_threads(threads_));
    return config;
  }

  std::string precision_;
  int threads_;
  std::string numeric_class_;
};

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& name, int threads) {
  if (name == "openvino") return std::make_unique<OpenVinoBackend>("f32", threads);
  if (name == "openvino-bf16") return std::make_unique<OpenVinoBackend>("bf16", threads);
  fail(ErrorKind::backend, "unknown backend '" + name + "'; known: openvino, openvino-bf16");
}

}  // namespace dcae
