// bench_main.cu — ms_cuda_bench: times the fused CUDA kernels on
// device-resident data (no host↔device copies of W or dW inside the timings,
// which is what a training loop with W kept on the GPU would see). Not part
// of the addon (CMake excludes native/cuda/*_main.cu from it).
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

#include "cuda_common.cuh"
#include "fused_loss_cuda.cuh"

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

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 512;
  int d = 512, iters = 20, warmup = 3;
  std::vector<int64_t> cs = {100000, 1000000};
  bool bf16_path = false;
  float filter = 0.0f;
  for (int a = 1; a < argc; ++a) {
    const std::string k = argv[a];
    const char* v = a + 1 < argc ? argv[a + 1] : "";
    if (k == "--n") n = std::atoll(v), ++a;
    else if (k == "--d") d = std::atoi(v), ++a;
    else if (k == "--c") cs = parse_list(v), ++a;
    else if (k == "--iters") iters = std::max(1, std::atoi(v)), ++a;
    else if (k == "--warmup") warmup = std::max(0, std::atoi(v)), ++a;
    else if (k == "--bf16") bf16_path = true;
    else if (k == "--filter") filter = (float)std::atof(v), ++a;
  }
  std::string why;
  if (!cuda_usable(&why)) {
    std::fprintf(stderr, "CUDA not usable: %s\n", why.c_str());
    return 1;
  }
  CudaDeviceInfo info;
  cuda_device_info(&info);
  MarginParams m{};
  m.kind = MarginKind::Adaptive;
  m.scale = 64.0f;
  m.m1 = 0.03f;
  m.m2 = 0.5f;
  m.fallback = true;

  try {
    for (int64_t c : cs) {
      device_bytes_reset_peak();
      const size_t live0 = device_bytes_live();
      {
        DeviceWeights w;
        DeviceBuffer<float> x((size_t)n * d, "X"), gx((size_t)n * d, "dX"), gw((size_t)c * d, "dW");
        DeviceBuffer<int32_t> labels((size_t)n, "labels");
        std::optional<LossRunner> runner;
        Stream stream;
        const cudaStream_t s = stream.get();
        MS_LAUNCH(fill_normal, 1024, 256, 0, s, x.get(), (size_t)n * d, 1);
        MS_CUDA_LAUNCHED("fill_normal");
        {
          // W is generated on the device (fp32), then brought to the kernels' layout.
          DeviceBuffer<float> wsrc((size_t)c * d, "W source");
          MS_LAUNCH(fill_normal, 4096, 256, 0, s, wsrc.get(), (size_t)c * d, 2);
          MS_CUDA_LAUNCHED("fill_normal");
          upload_weights(w, wsrc.get(), c, d, bf16_path, s, /*src_on_device=*/true);
        }
        device_bytes_reset_peak();  // the generator's fp32 source is gone: count from here
        std::vector<int32_t> hl((size_t)n);
        std::mt19937 rng(3);
        for (auto& y : hl) y = (int32_t)(rng() % (uint32_t)c);
        MS_CUDA_CHECK(cudaMemcpyAsync(labels.get(), hl.data(), hl.size() * 4, cudaMemcpyHostToDevice, s));
        runner.emplace(n, c, d, bf16_path, s);
        if (runner->set_batch(x.get(), labels.get(), nullptr, n) >= 0) throw CudaError{"non-finite X"};

        Events ev;
        for (int k = 0; k < warmup; ++k) {
          runner->forward(w, m);
          runner->backward(w, m, filter, gx.get(), gw.get());
        }
        stream.sync();
        std::vector<double> tf, tb, tfb;
        int64_t skipped = 0;
        for (int k = 0; k < iters; ++k) {
          MS_CUDA_CHECK(cudaEventRecord(ev.a, s));
          runner->forward(w, m);
          MS_CUDA_CHECK(cudaEventRecord(ev.b, s));
          tf.push_back(ev.ms());
          MS_CUDA_CHECK(cudaEventRecord(ev.a, s));
          skipped = runner->backward(w, m, filter, gx.get(), gw.get());
          MS_CUDA_CHECK(cudaEventRecord(ev.b, s));
          tb.push_back(ev.ms());
        }
        for (int k = 0; k < iters; ++k) {
          MS_CUDA_CHECK(cudaEventRecord(ev.a, s));
          runner->forward(w, m);
          runner->backward(w, m, filter, gx.get(), gw.get());
          MS_CUDA_CHECK(cudaEventRecord(ev.b, s));
          tfb.push_back(ev.ms());
        }
        std::vector<float> ps((size_t)n);
        MS_CUDA_CHECK(cudaMemcpyAsync(ps.data(), runner->per_sample(), ps.size() * 4, cudaMemcpyDeviceToHost, s));
        stream.sync();
        double loss = 0;
        for (float v : ps) loss += v;
        loss /= (double)n;
        const double flops = 6.0 * (double)n * d * (double)c;
        const double fb = median(tfb);
        std::printf(
            "{\"device\":\"%s\",\"sm\":\"%d.%d\",\"n\":%lld,\"d\":%d,\"c\":%lld,\"margin\":\"adaptive\",\"scale\":64,"
            "\"operands\":\"%s\",\"grad_filter\":%g,\"iters\":%d,\"forward_ms\":%.4f,\"backward_ms\":%.4f,"
            "\"fwd_bwd_ms\":%.4f,\"tflops_fwd_bwd\":%.2f,\"tflops_forward\":%.2f,\"peak_device_bytes\":%zu,"
            "\"workspace_bytes\":%zu,\"skipped_tiles\":%lld,\"total_tiles\":%lld,\"loss\":%.6f}\n",
            info.name.c_str(), info.major, info.minor, (long long)n, d, (long long)c, bf16_path ? "bf16" : "tf32",
            filter, iters, median(tf), median(tb), fb, flops / (fb * 1e-3) / 1e12,
            2.0 * n * d * (double)c / (median(tf) * 1e-3) / 1e12, device_bytes_peak() - live0,
            LossRunner::workspace_bytes(n, c, d, bf16_path, true, info.multiprocessors), (long long)skipped,
            (long long)runner->total_tiles(), loss);
        std::fflush(stdout);
      }
    }
  } catch (const CudaError& e) {
    std::fprintf(stderr, "CUDA error: %s\n", e.message.c_str());
    return 2;
  } catch (const InputError& e) {
    std::fprintf(stderr, "input error: %s\n", e.message.c_str());
    return 3;
  }
  return 0;
}
