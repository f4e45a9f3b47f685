// A TensorFlow Lite external delegate plugin for edge-infer's tests.
//
// It implements the classic plugin ABI that libedgetpu implements
// (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate) and
// computes the float32 ops it claims itself, so a model it takes part of
// gives the CPU's results. Options (keys and values, all optional):
//
//   ops=RELU,LOGISTIC,MUL  builtin ops it claims (names as in builtin_ops.h
//                          without kTfLiteBuiltin, upper case): ADD, SUB,
//                          MUL, RELU, RELU6, LOGISTIC, TANH, FULLY_CONNECTED,
//                          SOFTMAX, CONCATENATION, RESHAPE. Default: none.
//   refuse=1               create returns NULL after reporting why, as
//                          libedgetpu does when no Edge TPU is attached
//   fail_prepare=1         the delegate's Prepare fails
//   fail_invoke_at=N       the Nth invoke fails (with a report), later ones
//                          succeed again, like a device that came back
//   fail_invoke_from=N     every invoke from the Nth on fails
//   allow_dynamic=1        sets kTfLiteDelegateFlagsAllowDynamicTensors
//
// Invokes are counted per delegate instance, once per model invoke (on the
// kernel of its first partition). test_delegate_live_instances() returns how
// many delegates exist, so tests can check that every one is destroyed.
//
// Built by tests/common/delegate.rs against the TensorFlow Lite headers
// vendored in edgefirst-tflite-sys (C++: they use `enum : int`). Only the
// struct prefixes that TF 2.2 and LiteRT 2.3.0 share are used.
// GetNodeAndRegistration may only be called during the delegate's Prepare,
// so everything a kernel needs is cached there.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/lite/builtin_ops.h"
#include "tensorflow/lite/core/c/common.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// builtin_op_data.h is not vendored whole; these are the leading fields of
// its params structs, unchanged since TF 2.2.
enum Activation {
  kActNone = 0,
  kActRelu = 1,
  kActReluN1To1 = 2,
  kActRelu6 = 3,
  kActTanh = 4,
  kActSignBit = 5,
  kActSigmoid = 6,
};
struct FullyConnectedParams {
  int activation;
  int weights_format;
  bool keep_num_dims;
};
struct SoftmaxParams {
  float beta;
};
struct ConcatenationParams {
  int axis;
  int activation;
};
// TfLiteAddParams, TfLiteSubParams, TfLiteMulParams start with it.
struct ActivationParams {
  int activation;
};
struct ReshapeParams {
  int shape[8];
  int num_dimensions;
};

const std::map<std::string, int>& OpNames() {
  static const std::map<std::string, int> names = {
      {"ADD", kTfLiteBuiltinAdd},
      {"SUB", kTfLiteBuiltinSub},
      {"MUL", kTfLiteBuiltinMul},
      {"RELU", kTfLiteBuiltinRelu},
      {"RELU6", kTfLiteBuiltinRelu6},
      {"LOGISTIC", kTfLiteBuiltinLogistic},
      {"TANH", kTfLiteBuiltinTanh},
      {"FULLY_CONNECTED", kTfLiteBuiltinFullyConnected},
      {"SOFTMAX", kTfLiteBuiltinSoftmax},
      {"CONCATENATION", kTfLiteBuiltinConcatenation},
      {"RESHAPE", kTfLiteBuiltinReshape},
  };
  return names;
}

std::atomic<int> g_live{0};

using Shape = std::vector<int>;

// One claimed node, as Prepare saw it.
struct NodeInfo {
  int op = 0;
  std::vector<int> inputs;
  std::vector<int> outputs;
  int activation = kActNone;
  float beta = 1.0f;
  int axis = 0;
  bool keep_num_dims = false;
  Shape reshape;  // RESHAPE: the target shape, may hold one -1
};

struct Kernel;

struct TestDelegate {
  TfLiteDelegate base{};  // what the runtime sees; base.data_ points here
  std::set<int> ops;
  bool fail_prepare = false;
  long fail_invoke_at = 0;
  long fail_invoke_from = 0;
  // Claimed nodes by (context, node index): one context per subgraph.
  std::map<std::pair<TfLiteContext*, int>, NodeInfo> claimed;
  TfLiteContext* primary = nullptr;  // the first context prepared
  Kernel* counting_kernel = nullptr;  // first partition of the primary one
  long invokes = 0;
};

struct Kernel {
  TestDelegate* delegate = nullptr;
  std::vector<NodeInfo> nodes;           // in execution order
  std::vector<int> outputs;              // the partition's outputs
  std::map<int, Shape> shapes;           // every tensor a node writes
  std::map<int, std::vector<float>> scratch;  // tensors inside the partition
};

TestDelegate* FromBase(TfLiteDelegate* base) {
  return static_cast<TestDelegate*>(base->data_);
}

size_t NumElements(const Shape& s) {
  size_t n = 1;
  for (int d : s) n *= static_cast<size_t>(std::max(d, 0));
  return n;
}

Shape DimsOf(const TfLiteTensor& t) {
  Shape s;
  if (t.dims == nullptr) return s;
  for (int i = 0; i < t.dims->size; ++i) s.push_back(t.dims->data[i]);
  return s;
}

bool IsFloat(TfLiteContext* ctx, int t) {
  return t >= 0 && static_cast<size_t>(t) < ctx->tensors_size &&
         ctx->tensors[t].type == kTfLiteFloat32;
}

bool SupportedActivation(int a) {
  return a == kActNone || a == kActRelu || a == kActReluN1To1 ||
         a == kActRelu6 || a == kActTanh || a == kActSigmoid;
}

float Activate(int a, float x) {
  switch (a) {
    case kActRelu:
      return std::max(0.0f, x);
    case kActReluN1To1:
      return std::min(1.0f, std::max(-1.0f, x));
    case kActRelu6:
      return std::min(6.0f, std::max(0.0f, x));
    case kActTanh:
      return std::tanh(x);
    case kActSigmoid:
      return 1.0f / (1.0f + std::exp(-x));
    default:
      return x;
  }
}

// Whether the delegate can run this node; fills `info` if so.
bool Claim(TfLiteContext* ctx, int op, const TfLiteNode* node,
           NodeInfo* info) {
  info->op = op;
  for (int i = 0; i < node->inputs->size; ++i)
    info->inputs.push_back(node->inputs->data[i]);
  for (int i = 0; i < node->outputs->size; ++i)
    info->outputs.push_back(node->outputs->data[i]);
  if (info->outputs.size() != 1 || !IsFloat(ctx, info->outputs[0]))
    return false;
  const auto& in = info->inputs;
  switch (op) {
    case kTfLiteBuiltinRelu:
    case kTfLiteBuiltinRelu6:
    case kTfLiteBuiltinLogistic:
    case kTfLiteBuiltinTanh:
      return in.size() == 1 && IsFloat(ctx, in[0]);
    case kTfLiteBuiltinAdd:
    case kTfLiteBuiltinSub:
    case kTfLiteBuiltinMul: {
      if (in.size() != 2 || !IsFloat(ctx, in[0]) || !IsFloat(ctx, in[1]))
        return false;
      auto* p = static_cast<const ActivationParams*>(node->builtin_data);
      info->activation = p ? p->activation : kActNone;
      return SupportedActivation(info->activation);
    }
    case kTfLiteBuiltinFullyConnected: {
      if (in.size() < 2 || !IsFloat(ctx, in[0]) || !IsFloat(ctx, in[1]))
        return false;
      if (in.size() > 2 && in[2] >= 0 && !IsFloat(ctx, in[2])) return false;
      if (DimsOf(ctx->tensors[in[1]]).size() != 2) return false;
      auto* p = static_cast<const FullyConnectedParams*>(node->builtin_data);
      if (p == nullptr || p->weights_format != 0) return false;
      info->activation = p->activation;
      info->keep_num_dims = p->keep_num_dims;
      return SupportedActivation(info->activation);
    }
    case kTfLiteBuiltinSoftmax: {
      auto* p = static_cast<const SoftmaxParams*>(node->builtin_data);
      info->beta = p ? p->beta : 1.0f;
      return in.size() == 1 && IsFloat(ctx, in[0]);
    }
    case kTfLiteBuiltinConcatenation: {
      if (in.empty()) return false;
      for (int t : in)
        if (!IsFloat(ctx, t)) return false;
      auto* p = static_cast<const ConcatenationParams*>(node->builtin_data);
      if (p == nullptr) return false;
      info->axis = p->axis;
      info->activation = p->activation;
      return SupportedActivation(info->activation);
    }
    case kTfLiteBuiltinReshape: {
      if (in.empty() || !IsFloat(ctx, in[0])) return false;
      if (in.size() >= 2 && in[1] >= 0) {
        // The new shape as a constant int32 tensor.
        const TfLiteTensor& s = ctx->tensors[in[1]];
        if (s.type != kTfLiteInt32 || s.allocation_type != kTfLiteMmapRo ||
            s.data.i32 == nullptr)
          return false;
        Shape dims = DimsOf(s);
        if (dims.size() > 1) return false;
        size_t n = NumElements(dims);
        info->reshape.assign(s.data.i32, s.data.i32 + n);
      } else {
        auto* p = static_cast<const ReshapeParams*>(node->builtin_data);
        if (p == nullptr || p->num_dimensions < 0 || p->num_dimensions > 8)
          return false;
        info->reshape.assign(p->shape, p->shape + p->num_dimensions);
      }
      return true;
    }
    default:
      return false;
  }
}

bool Broadcast(const Shape& a, const Shape& b, Shape* out) {
  size_t rank = std::max(a.size(), b.size());
  out->assign(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    int da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) return false;
    (*out)[i] = da == 1 ? db : da;
  }
  return true;
}

// The index into a tensor of `shape` (broadcast to `out`) of the element at
// `out` index `linear`.
size_t BroadcastIndex(const Shape& shape, const Shape& out, size_t linear) {
  size_t index = 0, stride = 1;
  size_t offset = out.size() - shape.size();
  for (size_t i = out.size(); i-- > 0;) {
    size_t coord = linear % static_cast<size_t>(out[i]);
    linear /= static_cast<size_t>(out[i]);
    if (i >= offset) {
      int d = shape[i - offset];
      if (d != 1) index += coord * stride;
      stride *= static_cast<size_t>(d);
    }
  }
  return index;
}

void* KernelInit(TfLiteContext* ctx, const char* buffer, size_t) {
  auto* params = reinterpret_cast<const TfLiteDelegateParams*>(buffer);
  TestDelegate* d = FromBase(params->delegate);
  auto* k = new Kernel;
  k->delegate = d;
  for (int i = 0; i < params->nodes_to_replace->size; ++i) {
    auto it = d->claimed.find({ctx, params->nodes_to_replace->data[i]});
    if (it != d->claimed.end()) k->nodes.push_back(it->second);
  }
  for (int i = 0; i < params->output_tensors->size; ++i)
    k->outputs.push_back(params->output_tensors->data[i]);
  if (ctx == d->primary && d->counting_kernel == nullptr)
    d->counting_kernel = k;
  return k;
}

void KernelFree(TfLiteContext*, void* buffer) {
  auto* k = static_cast<Kernel*>(buffer);
  if (k->delegate->counting_kernel == k) k->delegate->counting_kernel = nullptr;
  delete k;
}

TfLiteStatus KernelPrepare(TfLiteContext* ctx, TfLiteNode* node) {
  auto* k = static_cast<Kernel*>(node->user_data);
  if (k->nodes.empty()) {
    ctx->ReportError(ctx, "test delegate: a partition without nodes");
    return kTfLiteError;
  }
  k->shapes.clear();
  auto shape_of = [&](int t) -> Shape {
    auto it = k->shapes.find(t);
    return it != k->shapes.end() ? it->second : DimsOf(ctx->tensors[t]);
  };
  for (const NodeInfo& n : k->nodes) {
    Shape out;
    const Shape in0 = shape_of(n.inputs[0]);
    switch (n.op) {
      case kTfLiteBuiltinAdd:
      case kTfLiteBuiltinSub:
      case kTfLiteBuiltinMul:
        if (!Broadcast(in0, shape_of(n.inputs[1]), &out)) {
          ctx->ReportError(ctx, "test delegate: shapes do not broadcast");
          return kTfLiteError;
        }
        break;
      case kTfLiteBuiltinFullyConnected: {
        Shape w = shape_of(n.inputs[1]);
        size_t depth = static_cast<size_t>(w[1]);
        size_t total = NumElements(in0);
        if (depth == 0 || total % depth != 0) {
          ctx->ReportError(ctx, "test delegate: FULLY_CONNECTED input does not fit its weights");
          return kTfLiteError;
        }
        if (n.keep_num_dims) {
          out = in0;
          out.back() = w[0];
        } else {
          out = {static_cast<int>(total / depth), w[0]};
        }
        break;
      }
      case kTfLiteBuiltinConcatenation: {
        int rank = static_cast<int>(in0.size());
        int axis = n.axis < 0 ? n.axis + rank : n.axis;
        if (axis < 0 || axis >= rank) {
          ctx->ReportError(ctx, "test delegate: bad CONCATENATION axis");
          return kTfLiteError;
        }
        out = in0;
        out[axis] = 0;
        for (int t : n.inputs) {
          Shape s = shape_of(t);
          if (s.size() != in0.size()) {
            ctx->ReportError(ctx, "test delegate: CONCATENATION ranks differ");
            return kTfLiteError;
          }
          out[axis] += s[axis];
        }
        break;
      }
      case kTfLiteBuiltinReshape: {
        out = n.reshape;
        size_t known = 1;
        int unknown = -1;
        for (size_t i = 0; i < out.size(); ++i) {
          if (out[i] == -1) {
            unknown = static_cast<int>(i);
          } else {
            known *= static_cast<size_t>(std::max(out[i], 0));
          }
        }
        if (unknown >= 0 && known > 0) out[unknown] = static_cast<int>(NumElements(in0) / known);
        if (NumElements(out) != NumElements(in0)) {
          ctx->ReportError(ctx, "test delegate: RESHAPE changes the element count");
          return kTfLiteError;
        }
        break;
      }
      default:  // element-wise, SOFTMAX
        out = in0;
    }
    k->shapes[n.outputs[0]] = out;
  }
  k->scratch.clear();
  for (const NodeInfo& n : k->nodes) {
    int t = n.outputs[0];
    const Shape& s = k->shapes[t];
    if (std::find(k->outputs.begin(), k->outputs.end(), t) != k->outputs.end()) {
      if (DimsOf(ctx->tensors[t]) != s) {
        // ResizeTensor takes the array and frees it with free().
        auto* dims = static_cast<TfLiteIntArray*>(
            std::malloc(sizeof(int) * (s.size() + 1)));
        if (dims == nullptr) return kTfLiteError;
        dims->size = static_cast<int>(s.size());
        for (size_t i = 0; i < s.size(); ++i) dims->data[i] = s[i];
        if (ctx->ResizeTensor(ctx, &ctx->tensors[t], dims) != kTfLiteOk)
          return kTfLiteError;
      }
    } else {
      k->scratch[t].assign(NumElements(s), 0.0f);
    }
  }
  return kTfLiteOk;
}

TfLiteStatus KernelInvoke(TfLiteContext* ctx, TfLiteNode* node) {
  auto* k = static_cast<Kernel*>(node->user_data);
  TestDelegate* d = k->delegate;
  if (k == d->counting_kernel) {
    long n = ++d->invokes;
    if ((d->fail_invoke_at > 0 && n == d->fail_invoke_at) ||
        (d->fail_invoke_from > 0 && n >= d->fail_invoke_from)) {
      ctx->ReportError(ctx, "test delegate: invoke %ld failed on purpose", n);
      return kTfLiteError;
    }
  }
  auto data = [&](int t) -> float* {
    auto it = k->scratch.find(t);
    return it != k->scratch.end() ? it->second.data() : ctx->tensors[t].data.f;
  };
  auto shape_of = [&](int t) -> Shape {
    auto it = k->shapes.find(t);
    return it != k->shapes.end() ? it->second : DimsOf(ctx->tensors[t]);
  };
  for (const NodeInfo& n : k->nodes) {
    const int o = n.outputs[0];
    float* out = data(o);
    const Shape out_shape = shape_of(o);
    const size_t count = NumElements(out_shape);
    const float* a = data(n.inputs[0]);
    if (out == nullptr || a == nullptr) {
      ctx->ReportError(ctx, "test delegate: tensor %d has no data", out ? n.inputs[0] : o);
      return kTfLiteError;
    }
    switch (n.op) {
      case kTfLiteBuiltinRelu:
        for (size_t i = 0; i < count; ++i) out[i] = std::max(0.0f, a[i]);
        break;
      case kTfLiteBuiltinRelu6:
        for (size_t i = 0; i < count; ++i) out[i] = std::min(6.0f, std::max(0.0f, a[i]));
        break;
      case kTfLiteBuiltinLogistic:
        for (size_t i = 0; i < count; ++i) out[i] = 1.0f / (1.0f + std::exp(-a[i]));
        break;
      case kTfLiteBuiltinTanh:
        for (size_t i = 0; i < count; ++i) out[i] = std::tanh(a[i]);
        break;
      case kTfLiteBuiltinAdd:
      case kTfLiteBuiltinSub:
      case kTfLiteBuiltinMul: {
        const float* b = data(n.inputs[1]);
        const Shape sa = shape_of(n.inputs[0]), sb = shape_of(n.inputs[1]);
        for (size_t i = 0; i < count; ++i) {
          float x = a[BroadcastIndex(sa, out_shape, i)];
          float y = b[BroadcastIndex(sb, out_shape, i)];
          float r = n.op == kTfLiteBuiltinAdd   ? x + y
                    : n.op == kTfLiteBuiltinSub ? x - y
                                                : x * y;
          out[i] = Activate(n.activation, r);
        }
        break;
      }
      case kTfLiteBuiltinFullyConnected: {
        const float* w = data(n.inputs[1]);
        const float* bias = n.inputs.size() > 2 && n.inputs[2] >= 0 ? data(n.inputs[2]) : nullptr;
        const Shape ws = shape_of(n.inputs[1]);
        const size_t units = static_cast<size_t>(ws[0]), depth = static_cast<size_t>(ws[1]);
        const size_t batches = NumElements(shape_of(n.inputs[0])) / depth;
        for (size_t b = 0; b < batches; ++b) {
          for (size_t u = 0; u < units; ++u) {
            double sum = bias ? bias[u] : 0.0;
            for (size_t i = 0; i < depth; ++i)
              sum += static_cast<double>(a[b * depth + i]) * w[u * depth + i];
            out[b * units + u] = Activate(n.activation, static_cast<float>(sum));
          }
        }
        break;
      }
      case kTfLiteBuiltinSoftmax: {
        const size_t depth = out_shape.empty() ? 1 : static_cast<size_t>(out_shape.back());
        for (size_t row = 0; depth > 0 && row < count / depth; ++row) {
          const float* x = a + row * depth;
          float* y = out + row * depth;
          float max = *std::max_element(x, x + depth);
          double sum = 0;
          for (size_t i = 0; i < depth; ++i) {
            y[i] = std::exp((x[i] - max) * n.beta);
            sum += y[i];
          }
          for (size_t i = 0; i < depth; ++i) y[i] = static_cast<float>(y[i] / sum);
        }
        break;
      }
      case kTfLiteBuiltinConcatenation: {
        const int rank = static_cast<int>(out_shape.size());
        const int axis = n.axis < 0 ? n.axis + rank : n.axis;
        size_t outer = 1;
        for (int i = 0; i < axis; ++i) outer *= static_cast<size_t>(out_shape[i]);
        size_t offset = 0;
        const size_t out_row = count / std::max<size_t>(outer, 1);
        for (int t : n.inputs) {
          const float* src = data(t);
          const size_t row = NumElements(shape_of(t)) / std::max<size_t>(outer, 1);
          for (size_t r = 0; r < outer; ++r) {
            for (size_t i = 0; i < row; ++i)
              out[r * out_row + offset + i] = Activate(n.activation, src[r * row + i]);
          }
          offset += row;
        }
        break;
      }
      case kTfLiteBuiltinReshape:
        if (out != a) std::memcpy(out, a, count * sizeof(float));
        break;
      default:
        ctx->ReportError(ctx, "test delegate: op %d was not claimed", n.op);
        return kTfLiteError;
    }
  }
  return kTfLiteOk;
}

TfLiteStatus DelegatePrepare(TfLiteContext* ctx, TfLiteDelegate* base) {
  TestDelegate* d = FromBase(base);
  if (d->fail_prepare) {
    ctx->ReportError(ctx, "test delegate: Prepare failed on purpose (fail_prepare=1)");
    return kTfLiteError;
  }
  if (d->primary == nullptr) d->primary = ctx;
  if (ctx == d->primary) d->counting_kernel = nullptr;
  // A re-preparation (after an input resize) starts over for this context.
  for (auto it = d->claimed.begin(); it != d->claimed.end();) {
    it = it->first.first == ctx ? d->claimed.erase(it) : std::next(it);
  }
  TfLiteIntArray* plan = nullptr;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk) return kTfLiteError;
  std::vector<int> nodes;
  for (int i = 0; i < plan->size; ++i) {
    int index = plan->data[i];
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, index, &node, &reg) != kTfLiteOk) return kTfLiteError;
    if (d->ops.count(reg->builtin_code) == 0) continue;
    NodeInfo info;
    if (Claim(ctx, reg->builtin_code, node, &info)) {
      d->claimed[{ctx, index}] = info;
      nodes.push_back(index);
    }
  }
  if (nodes.empty()) return kTfLiteOk;
  std::vector<int> array(nodes.size() + 1);
  array[0] = static_cast<int>(nodes.size());
  std::copy(nodes.begin(), nodes.end(), array.begin() + 1);
  TfLiteRegistration reg{};
  reg.init = KernelInit;
  reg.free = KernelFree;
  reg.prepare = KernelPrepare;
  reg.invoke = KernelInvoke;
  reg.builtin_code = kTfLiteBuiltinDelegate;
  reg.custom_name = "EdgeInferTestDelegate";
  reg.version = 1;
  return ctx->ReplaceNodeSubsetsWithDelegateKernels(
      ctx, reg, reinterpret_cast<const TfLiteIntArray*>(array.data()), base);
}

bool ParseCount(const char* text, long* out) {
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < 0) return false;
  *out = v;
  return true;
}

}  // namespace

EXPORT TfLiteDelegate* tflite_plugin_create_delegate(
    char** keys, char** values, size_t n, void (*report_error)(const char*)) {
  auto report = [&](const std::string& message) {
    if (report_error != nullptr) report_error(message.c_str());
  };
  auto* d = new TestDelegate;
  for (size_t i = 0; i < n; ++i) {
    const std::string key = keys[i], value = values[i];
    bool ok = true;
    if (key == "ops") {
      size_t start = 0;
      while (start <= value.size() && !value.empty()) {
        size_t comma = value.find(',', start);
        std::string name = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        auto it = OpNames().find(name);
        if (it == OpNames().end()) {
          report("test delegate: unknown op '" + name + "' in ops");
          delete d;
          return nullptr;
        }
        d->ops.insert(it->second);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (key == "refuse") {
      if (value == "1") {
        report("test delegate: refusing to create a delegate (refuse=1), as libedgetpu does with no Edge TPU attached");
        delete d;
        return nullptr;
      }
    } else if (key == "fail_prepare") {
      d->fail_prepare = value == "1";
    } else if (key == "fail_invoke_at") {
      ok = ParseCount(value.c_str(), &d->fail_invoke_at);
    } else if (key == "fail_invoke_from") {
      ok = ParseCount(value.c_str(), &d->fail_invoke_from);
    } else if (key == "allow_dynamic") {
      if (value == "1") d->base.flags |= kTfLiteDelegateFlagsAllowDynamicTensors;
    } else {
      report("test delegate: unknown option '" + key + "'");
      delete d;
      return nullptr;
    }
    if (!ok) {
      report("test delegate: option '" + key + "' needs a count, got '" + value + "'");
      delete d;
      return nullptr;
    }
  }
  d->base.data_ = d;
  d->base.Prepare = DelegatePrepare;
  g_live.fetch_add(1);
  return &d->base;
}

EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate == nullptr) return;
  delete FromBase(delegate);
  g_live.fetch_sub(1);
}

EXPORT int test_delegate_live_instances() { return g_live.load(); }
