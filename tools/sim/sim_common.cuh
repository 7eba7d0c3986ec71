// Host-side helpers of the simulation harness (tools/sim/README.md): argument parsing, device buffers,
// storage-type conversion, a plain-launch policy for csrc/kernels/launch.cuh, and the result check.
// Everything here runs on the host; the kernels come from csrc/ (fused) or tools/sim/baseline/ (unfused).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define SIM_CK(x)                                                                                        \
  do {                                                                                                   \
    cudaError_t e_ = (x);                                                                                \
    if (e_ != cudaSuccess) {                                                                             \
      std::printf("CUDA error %d (%s) at %s:%d\n", (int)e_, cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                                      \
    }                                                                                                    \
  } while (0)

namespace sim {

// Launch index printed with every launch; the simulator's log lists kernels in the same order.
inline int& launch_counter() {
  static int n = 0;
  return n;
}

// --dry: list the launches (kernel order, grids, blocks) of a problem without a GPU or simulator: no CUDA
// call is made, nothing is checked. The cost model reads the grids of shapes too big to simulate this way.
inline bool& dry_run() {
  static bool d = false;
  return d;
}

// What a dry launch also prints, for the result cache's key (tools/sim/simlib.py launch_fingerprint): the
// kernel's host stub address relative to this function's (nm names the kernel from it) and an FNV-1a hash
// of the argument bytes. Device pointers are null in a dry run, so the bytes depend only on the host logic
// (tile sizes, splits, workspace offsets). Problem objects are value-initialised: their padding is zero.
inline void dry_anchor() {}
inline long long stub_offset(const void* kernel) {
  return (long long)((const char*)kernel - (const char*)(const void*)&dry_anchor);
}
inline uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ ((const unsigned char*)p)[i]) * 1099511628211ULL;
  return h;
}
template <class... A>
uint64_t args_hash(const A&... args) {
  uint64_t h = 14695981039346656037ULL;
  ((h = fnv1a(h, &args, sizeof(A))), ...);
  return h;
}
template <class K, class... A>
void print_dry(K kernel, const A&... args) {
  if (dry_run())
    std::printf("[sim] dry stub=%lld args=%016llx\n", stub_offset((const void*)kernel),
                (unsigned long long)args_hash(args...));
}
inline void sync() {
  if (!dry_run()) SIM_CK(cudaDeviceSynchronize());
}

// Plain <<<>>> launch on the default stream: the simulator runs launches one after another, as one
// CUDA stream does on a GPU.
struct SimPolicy {
  template <class K, class... A>
  static void launch(K kernel, int64_t gx, int64_t gy, int64_t gz, int threads, A... args) {
    if (gx < 1 || gx > 2147483647LL || gy < 1 || gy > 65535 || gz < 1 || gz > 65535) {
      std::printf("launch grid (%lld, %lld, %lld) out of range\n", (long long)gx, (long long)gy, (long long)gz);
      std::exit(1);
    }
    std::printf("[sim] launch %d grid=(%lld,%lld,%lld) block=%d\n", launch_counter()++, (long long)gx, (long long)gy,
                (long long)gz, threads);
    print_dry(kernel, args...);
    if (dry_run()) return;
    kernel<<<dim3((unsigned)gx, (unsigned)gy, (unsigned)gz), threads>>>(args...);
    SIM_CK(cudaGetLastError());
  }
};

// The same, for kernels with 2-D grids and blocks (the unfused baseline).
template <class K, class... A>
void launch(K kernel, dim3 grid, dim3 block, A... args) {
  std::printf("[sim] launch %d grid=(%u,%u,%u) block=%u (%ux%u)\n", launch_counter()++, grid.x, grid.y, grid.z,
              block.x * block.y * block.z, block.x, block.y);
  print_dry(kernel, args...);
  if (dry_run()) return;
  kernel<<<grid, block>>>(args...);
  SIM_CK(cudaGetLastError());
}

// ---- storage types --------------------------------------------------------------------------
template <class T>
struct Host;
template <>
struct Host<float> {
  static float to(float v) { return v; }
  static float from(float v) { return v; }
  static constexpr double tol = 2e-4;  // fp32 storage, fp32 accumulation vs a float64 reference
  static constexpr const char* name = "f32";
};
template <>
struct Host<__half> {
  static __half to(float v) { return __float2half_rn(v); }
  static float from(__half v) { return __half2float(v); }
  static constexpr double tol = 2e-2;  // activations (y included) rounded to fp16 between kernels
  static constexpr const char* name = "f16";
};
template <>
struct Host<__nv_bfloat16> {
  static __nv_bfloat16 to(float v) { return __float2bfloat16_rn(v); }
  static float from(__nv_bfloat16 v) { return __bfloat162float(v); }
  static constexpr double tol = 8e-2;  // 8-bit mantissa storage
  static constexpr const char* name = "bf16";
};

// ---- arguments ------------------------------------------------------------------------------
struct Args {
  std::string mode = "eval";    // eval | train | step (training forward + backward) | bwd (backward only)
  std::string dtype = "f32";    // f32 | f16 | bf16
  std::string layout = "nchw";  // nchw | nhwc (channels_last)
  int64_t N = 1, C = 32, K = 64, H = 28, W = 28;
  int stride = 1, dil = 3;
  unsigned seed = 7;
  bool check = true;
  int64_t plan_batch = 0;  // > 0: launch with the cuts the launcher plans at this batch (fused only) ...
  int64_t plan_hw = 0;     // ... and this input size (0: H x W)
};

inline void usage(const char* prog, const char* extra) {
  std::printf(
      "usage: %s [--mode eval|train|step|bwd] [--dtype f32|f16|bf16] [--layout nchw|nhwc] [--seed S]\n"
      "          [--no-check] [--dry] [--plan-batch B [--plan-hw S]] N C K H W stride dilation\n"
      "  eval: inference forward; train: training forward (batch statistics); step: training forward +\n"
      "  backward; bwd: backward only (its inputs prepared on the host). --plan-batch: the kernel variants and\n"
      "  splits the launcher picks at batch B and an S x S input (default H x W), run on this shape. %s\n",
      prog, extra);
}

inline Args parse(int argc, char** argv, const char* extra = "") {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto val = [&](const char* name) -> std::string {
      if (i + 1 >= argc) {
        std::printf("error: %s needs a value\n", name);
        usage(argv[0], extra);
        std::exit(2);
      }
      return argv[++i];
    };
    if (s == "--mode")
      a.mode = val("--mode");
    else if (s == "--dtype")
      a.dtype = val("--dtype");
    else if (s == "--layout")
      a.layout = val("--layout");
    else if (s == "--seed")
      a.seed = (unsigned)std::strtoul(val("--seed").c_str(), nullptr, 10);
    else if (s == "--no-check")
      a.check = false;
    else if (s == "--plan-batch")
      a.plan_batch = std::atoll(val("--plan-batch").c_str());
    else if (s == "--plan-hw")
      a.plan_hw = std::atoll(val("--plan-hw").c_str());
    else if (s == "--dry") {
      a.check = false;
      dry_run() = true;
    } else if (s == "-h" || s == "--help") {
      usage(argv[0], extra);
      std::exit(0);
    } else if (s.size() > 1 && s[0] == '-' && !(s[1] >= '0' && s[1] <= '9')) {
      std::printf("error: unknown option %s\n", s.c_str());
      usage(argv[0], extra);
      std::exit(2);
    } else
      pos.push_back(s);
  }
  if (!pos.empty() && pos.size() != 7) {
    std::printf("error: give all 7 of N C K H W stride dilation (got %zu)\n", pos.size());
    usage(argv[0], extra);
    std::exit(2);
  }
  if (pos.size() == 7) {
    a.N = std::atoll(pos[0].c_str());
    a.C = std::atoll(pos[1].c_str());
    a.K = std::atoll(pos[2].c_str());
    a.H = std::atoll(pos[3].c_str());
    a.W = std::atoll(pos[4].c_str());
    a.stride = std::atoi(pos[5].c_str());
    a.dil = std::atoi(pos[6].c_str());
  }
  auto bad = [&](const char* what) {
    std::printf("error: %s\n", what);
    usage(argv[0], extra);
    std::exit(2);
  };
  if (a.mode != "eval" && a.mode != "train" && a.mode != "step" && a.mode != "bwd")
    bad("--mode must be eval, train, step or bwd");
  if (a.dtype != "f32" && a.dtype != "f16" && a.dtype != "bf16") bad("--dtype must be f32, f16 or bf16");
  if (a.layout != "nchw" && a.layout != "nhwc") bad("--layout must be nchw or nhwc");
  if (a.N < 1 || a.C < 1 || a.K < 1 || a.H < 1 || a.W < 1) bad("N, C, K, H, W must be >= 1");
  if (a.stride != 1 && a.stride != 2) bad("stride must be 1 or 2");
  if (a.dil < 1) bad("dilation must be >= 1");
  if (a.plan_batch < 0 || a.plan_hw < 0) bad("--plan-batch and --plan-hw must be >= 1");
  return a;
}

// ---- deterministic inputs -------------------------------------------------------------------
struct Rng {
  uint64_t s;
  explicit Rng(unsigned seed) : s(0x9E3779B97F4A7C15ull ^ seed) {}
  double uniform() {  // [-1, 1)
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) * (2.0 / 9007199254740992.0) - 1.0;
  }
};

// A host tensor in logical [n, c, h, w] order held as doubles (the reference's values, already rounded
// to the storage type where it is an input), with its storage layout.
struct Tensor4 {
  int64_t n, c, h, w;
  bool cl;
  std::vector<double> v;  // logical NCHW order
  // No values in a --dry run (shapes too big to hold are only listed there).
  Tensor4(int64_t n_, int64_t c_, int64_t h_, int64_t w_, bool cl_)
      : n(n_), c(c_), h(h_), w(w_), cl(cl_), v(dry_run() ? 0 : n_ * c_ * h_ * w_, 0.0) {}
  double& at(int64_t a, int64_t b, int64_t y, int64_t x) { return v[((a * c + b) * h + y) * w + x]; }
  double at(int64_t a, int64_t b, int64_t y, int64_t x) const { return v[((a * c + b) * h + y) * w + x]; }
  int64_t storage(int64_t a, int64_t b, int64_t y, int64_t x) const {
    return cl ? ((a * h + y) * w + x) * c + b : ((a * c + b) * h + y) * w + x;
  }
  int64_t size() const { return n * c * h * w; }
  // element strides of the storage, in logical n, c, h, w order
  int64_t sn() const { return c * h * w; }
  int64_t sc() const { return cl ? 1 : h * w; }
  int64_t sh() const { return cl ? w * c : w; }
  int64_t sw() const { return cl ? c : 1; }
};

template <class T>
void fill(std::vector<double>& v, Rng& r, double scale) {
  for (auto& e : v) e = (double)Host<T>::from(Host<T>::to((float)(scale * r.uniform())));
}

// ---- device buffers ---------------------------------------------------------------------------
template <class E>
struct DevBuf {
  E* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t n_) : n(n_ ? n_ : 1) {
    if (!dry_run()) SIM_CK(cudaMalloc(&p, n * sizeof(E)));
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void put(const std::vector<E>& h) {
    if (dry_run()) return;
    SIM_CK(cudaMemcpy(p, h.data(), h.size() * sizeof(E), cudaMemcpyHostToDevice));
  }
  std::vector<E> get() const {
    std::vector<E> h(n);
    if (dry_run()) return h;
    SIM_CK(cudaMemcpy(h.data(), p, n * sizeof(E), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T>
std::vector<T> to_storage(const Tensor4& t) {
  if (dry_run()) return {};
  std::vector<T> s(t.size());
  for (int64_t a = 0; a < t.n; ++a)
    for (int64_t b = 0; b < t.c; ++b)
      for (int64_t y = 0; y < t.h; ++y)
        for (int64_t x = 0; x < t.w; ++x) s[t.storage(a, b, y, x)] = Host<T>::to((float)t.at(a, b, y, x));
  return s;
}
template <class T>
std::vector<T> to_storage(const std::vector<double>& v) {
  std::vector<T> s(v.size());
  for (size_t i = 0; i < v.size(); ++i) s[i] = Host<T>::to((float)v[i]);
  return s;
}
template <class T>
Tensor4 from_storage(const std::vector<T>& s, const Tensor4& like) {
  Tensor4 t(like.n, like.c, like.h, like.w, like.cl);
  for (int64_t a = 0; a < t.n; ++a)
    for (int64_t b = 0; b < t.c; ++b)
      for (int64_t y = 0; y < t.h; ++y)
        for (int64_t x = 0; x < t.w; ++x) t.at(a, b, y, x) = Host<T>::from(s[t.storage(a, b, y, x)]);
  return t;
}
template <class T>
std::vector<double> from_storage(const std::vector<T>& s, size_t n) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Host<T>::from(s[i]);
  return v;
}

// ---- the check --------------------------------------------------------------------------------
// Per output: max |got - ref| / scale, scale = max |ref| (or a given floor for outputs that are ~0 in
// exact arithmetic, e.g. the bias gradient under training batch norm). Prints one line per output.
struct Checker {
  bool ok = true;
  int n = 0;
  void cmp(const char* name, const std::vector<double>& got, const std::vector<double>& ref, double tol,
           double scale_floor = 0.0) {
    double mx = 0.0, err = 0.0;
    size_t worst = 0;
    bool nan = false;
    for (size_t i = 0; i < ref.size(); ++i) mx = std::fmax(mx, std::fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::isnan(got[i]) != std::isnan(ref[i])) nan = true;
      const double d = std::fabs(got[i] - ref[i]);
      if (d > err) {
        err = d;
        worst = i;
      }
    }
    const double scale = std::fmax(std::fmax(mx, scale_floor), 1e-30);
    const bool pass = !nan && err / scale <= tol && got.size() == ref.size();
    std::printf("[check] %-6s n=%zu max|ref|=%.4g max_err=%.3g rel=%.3g (tol %.1g) at %zu%s -> %s\n", name, ref.size(),
                mx, err, err / scale, tol, worst, nan ? " NaN mismatch" : "", pass ? "ok" : "BAD");
    ok = ok && pass;
    ++n;
  }
  int verdict(const char* what) const {
    std::printf("%s: %d outputs checked -> %s\n", what, n, ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
  }
};

}  // namespace sim
