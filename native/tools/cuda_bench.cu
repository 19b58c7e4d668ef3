// cuda_bench.cu — ms_cuda_bench: times the fused CUDA kernels on
// device-resident data (no host↔device copies of W or dW inside the timings,
// which is what a training loop with W kept on the GPU would see). Not part
// of the addon: a program of its own, linked with the CUDA and CPU backends.
//
// Build and run:
//   cmake-js compile && cmake --build build --target ms_cuda_bench && build/ms_cuda_bench --bf16
//   scripts/check_gpu.sh (step bench_native) builds it with nvcc alone and runs it.
//
//   ms_cuda_bench [--n 512] [--d 512] [--c 100000,1000000] [--iters 20] [--warmup 3] [--bf16] [--filter 0]
//
// Prints one JSON object per class count on stdout:
//   forward_ms, backward_ms, fwd_bwd_ms   medians of CUDA-event timings
//   tflops_fwd_bwd                       3·2·N·d·C / fwd_bwd time (the useful work; the
//                                        backward's recomputation of the tiles is not counted)
//   peak_device_bytes                    most device memory held at once by this program
//                                        (W, dW, X, dX and the workspace)
//   workspace_bytes                      the part that is neither inputs nor outputs
// Margin: adaptive (m1 = 0.03, m2 = 0.5), s = 64.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../cuda/cuda_common.cuh"    // DeviceBuffer, Stream, MS_LAUNCH, the allocation counter
#include "../cuda/fused_loss_cuda.cuh"  // DeviceWeights, upload_weights, LossRunner on device pointers

using namespace ms;
using namespace ms::cu;

namespace {

__global__ void fill_normal(float* p, size_t n, uint64_t seed) {
  for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
    // Two hashed uniforms → one Box–Muller normal.
    const uint64_t h = mix64(seed ^ mix64(k));
    const float u1 = ((float)(h >> 40) + 1.0f) * (1.0f / 16777216.0f);
    const float u2 = (float)((h >> 8) & 0xffffffu) * (1.0f / 16777216.0f);
    p[k] = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    MS_CUDA_CHECK(cudaEventCreate(&a));
    MS_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  double ms() const {
    float t = 0;
    MS_CUDA_CHECK(cudaEventSynchronize(b));
    MS_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    return t;
  }
};

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  std::string str(s);
  size_t pos = 0;
  while (pos < str.size()) {
    const size_t e = str.find(',', pos);
    v.push_back(std::stoll(str.substr(pos, e == std::string::npos ? std::string::npos : e - pos)));
    if (e == std::string::npos) break;
    pos = e + 1;
  }
  return v;
}

struct Args {
  int64_t n = 512;
  int d = 512, iters = 20, warmup = 3;
  std::vector<int64_t> cs = {100000, 1000000};
  bool bf16_path = false;
  float filter = 0.0f;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int k = 1; k < argc; ++k) {
    const std::string key = argv[k];
    const char* v = k + 1 < argc ? argv[k + 1] : "";
    if (key == "--n") a.n = std::atoll(v), ++k;
    else if (key == "--d") a.d = std::atoi(v), ++k;
    else if (key == "--c") a.cs = parse_list(v), ++k;
    else if (key == "--iters") a.iters = std::max(1, std::atoi(v)), ++k;
    else if (key == "--warmup") a.warmup = std::max(0, std::atoi(v)), ++k;
    else if (key == "--bf16") a.bf16_path = true;
    else if (key == "--filter") a.filter = (float)std::atof(v), ++k;
  }
  return a;
}

MarginParams adaptive_margin() {
  MarginParams m{};
  m.kind = MarginKind::Adaptive;
  m.scale = 64.0f;
  m.m1 = 0.03f;
  m.m2 = 0.5f;
  m.fallback = true;
  return m;
}

// One class count's device data: X, dX, dW, the labels, W in the kernels'
// layout and the runner. `stream` is declared last, so it is destroyed first
// and waits for the kernels before any buffer is freed.
struct BenchData {
  DeviceWeights w;
  DeviceBuffer<float> x, gx, gw;
  DeviceBuffer<int32_t> labels;
  std::optional<LossRunner> runner;
  Stream stream;
  BenchData(const Args& a, int64_t c)
      : x((size_t)a.n * a.d, "X"), gx((size_t)a.n * a.d, "dX"), gw((size_t)c * a.d, "dW"), labels((size_t)a.n, "labels") {}
};

// X and W drawn on the device (W in fp32, then brought to the kernels'
// layout), labels on the host, the batch set. Resets the peak counter once
// W's fp32 source is gone.
void make_data(BenchData& b, const Args& a, int64_t c) {
  const cudaStream_t s = b.stream.get();
  MS_LAUNCH(fill_normal, 1024, 256, 0, s, b.x.get(), (size_t)a.n * a.d, 1);
  MS_CUDA_LAUNCHED("fill_normal");
  {
    DeviceBuffer<float> wsrc((size_t)c * a.d, "W source");
    MS_LAUNCH(fill_normal, 4096, 256, 0, s, wsrc.get(), (size_t)c * a.d, 2);
    MS_CUDA_LAUNCHED("fill_normal");
    upload_weights(b.w, wsrc.get(), c, a.d, a.bf16_path, s, /*src_on_device=*/true);
  }
  device_bytes_reset_peak();  // the generator's fp32 source is gone: count from here
  std::vector<int32_t> hl((size_t)a.n);
  std::mt19937 rng(3);
  for (auto& y : hl) y = (int32_t)(rng() % (uint32_t)c);
  MS_CUDA_CHECK(cudaMemcpyAsync(b.labels.get(), hl.data(), hl.size() * 4, cudaMemcpyHostToDevice, s));
  b.runner.emplace(a.n, c, a.d, a.bf16_path, s);
  if (b.runner->set_batch(b.x.get(), b.labels.get(), nullptr, a.n) >= 0) throw CudaError{"non-finite X"};
}

struct Timings {
  std::vector<double> fwd, bwd, fwd_bwd;  // ms per iteration
  int64_t skipped = 0;                    // tiles the filter skipped (last backward)
};

// Warm-up, then forward and backward timed apart, then both in one interval.
Timings time_steps(BenchData& b, const Args& a, const MarginParams& m) {
  LossRunner& r = *b.runner;
  const cudaStream_t s = b.stream.get();
  Events ev;
  for (int k = 0; k < a.warmup; ++k) {
    r.forward(b.w, m);
    r.backward(b.w, m, a.filter, b.gx.get(), b.gw.get());
  }
  b.stream.sync();
  Timings t;
  for (int k = 0; k < a.iters; ++k) {
    MS_CUDA_CHECK(cudaEventRecord(ev.a, s));
    r.forward(b.w, m);
    MS_CUDA_CHECK(cudaEventRecord(ev.b, s));
    t.fwd.push_back(ev.ms());
    MS_CUDA_CHECK(cudaEventRecord(ev.a, s));
    t.skipped = r.backward(b.w, m, a.filter, b.gx.get(), b.gw.get());
    MS_CUDA_CHECK(cudaEventRecord(ev.b, s));
    t.bwd.push_back(ev.ms());
  }
  for (int k = 0; k < a.iters; ++k) {
    MS_CUDA_CHECK(cudaEventRecord(ev.a, s));
    r.forward(b.w, m);
    r.backward(b.w, m, a.filter, b.gx.get(), b.gw.get());
    MS_CUDA_CHECK(cudaEventRecord(ev.b, s));
    t.fwd_bwd.push_back(ev.ms());
  }
  return t;
}

// The mean of the last forward's per-row losses (a check that it computed something).
double mean_loss(BenchData& b, int64_t n) {
  std::vector<float> ps((size_t)n);
  MS_CUDA_CHECK(cudaMemcpyAsync(ps.data(), b.runner->per_sample(), ps.size() * 4, cudaMemcpyDeviceToHost,
                                b.stream.get()));
  b.stream.sync();
  double loss = 0;
  for (float v : ps) loss += v;
  return loss / (double)n;
}

void print_result(const CudaDeviceInfo& info, const Args& a, int64_t c, const Timings& t, size_t peak_bytes,
                  int64_t total_tiles, double loss) {
  const int64_t n = a.n;
  const int d = a.d;
  const double flops = 6.0 * (double)n * d * (double)c;
  const double fb = median(t.fwd_bwd);
  std::printf(
      "{\"device\":\"%s\",\"sm\":\"%d.%d\",\"n\":%lld,\"d\":%d,\"c\":%lld,\"margin\":\"adaptive\",\"scale\":64,"
      "\"operands\":\"%s\",\"grad_filter\":%g,\"iters\":%d,\"forward_ms\":%.4f,\"backward_ms\":%.4f,"
      "\"fwd_bwd_ms\":%.4f,\"tflops_fwd_bwd\":%.2f,\"tflops_forward\":%.2f,\"peak_device_bytes\":%zu,"
      "\"workspace_bytes\":%zu,\"skipped_tiles\":%lld,\"total_tiles\":%lld,\"loss\":%.6f}\n",
      info.name.c_str(), info.major, info.minor, (long long)n, d, (long long)c, a.bf16_path ? "bf16" : "tf32",
      a.filter, a.iters, median(t.fwd), median(t.bwd), fb, flops / (fb * 1e-3) / 1e12,
      2.0 * n * d * (double)c / (median(t.fwd) * 1e-3) / 1e12, peak_bytes,
      LossRunner::workspace_bytes(n, c, d, a.bf16_path, true, info.multiprocessors), (long long)t.skipped,
      (long long)total_tiles, loss);
  std::fflush(stdout);
}

void bench_classes(const CudaDeviceInfo& info, const Args& a, int64_t c, const MarginParams& m) {
  device_bytes_reset_peak();
  const size_t live0 = device_bytes_live();
  BenchData b(a, c);
  make_data(b, a, c);
  const Timings t = time_steps(b, a, m);
  const double loss = mean_loss(b, a.n);
  print_result(info, a, c, t, device_bytes_peak() - live0, b.runner->total_tiles(), loss);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse_args(argc, argv);
  std::string why;
  if (!cuda_usable(&why)) {
    std::fprintf(stderr, "CUDA not usable: %s\n", why.c_str());
    return 1;
  }
  CudaDeviceInfo info;
  cuda_device_info(&info);
  const MarginParams m = adaptive_margin();
  try {
    for (int64_t c : a.cs) bench_classes(info, a, c, m);
  } catch (const CudaError& e) {
    std::fprintf(stderr, "CUDA error: %s\n", e.message.c_str());
    return 2;
  } catch (const InputError& e) {
    std::fprintf(stderr, "input error: %s\n", e.message.c_str());
    return 3;
  }
  return 0;
}
