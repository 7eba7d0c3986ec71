// CPU emulator extension: the same kernel headers, launcher and torch binding as the CUDA extension,
// run through the CUDA-on-CPU harness (csrc/emu/emu.h). Registers CPU kernels for the op family under
// the namespace fused_dsconv_emu, so the tests can compare them with the reference backend.
// Built on demand by the tests (torch.utils.cpp_extension.load); not part of the wheel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <utility>

#include "emu/emu.h"  // after the torch headers: it defines threadIdx, blockIdx, ... as macros
#include "kernels/common.cuh"
#include "emu/numeric.h"
#include "emu/policy.h"
#include "kernels/launch.cuh"
#include "binding/ops_impl.h"

namespace {
struct EmuTraits {
  using Policy = EmuPolicy;
  using Half = emu::half;
  using BF16 = emu::bf16;
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  static constexpr const char* kPrefix = "fused_dsconv_emu: ";
};
// Emulator only: the kernels launched so far, "name count" per line (csrc/emu/policy.h).
std::string launch_counts(bool reset) { return emu::LaunchCounts::get().report(reset); }
// Emulator only: plan and launch as a fast build does (csrc/kernels/plan.cuh); returns the previous setting.
bool set_runtime_dilation_only(bool on) { return std::exchange(dsc::runtime_dilation_only(), on); }
}  // namespace

TORCH_LIBRARY(fused_dsconv_emu, m) {
  DSC_SCHEMAS(m);
  m.def("launch_counts(bool reset=False) -> str", &launch_counts);
  m.def("set_runtime_dilation_only(bool on) -> bool", &set_runtime_dilation_only);
}

TORCH_LIBRARY_IMPL(fused_dsconv_emu, CPU, m) { DSC_IMPLS(m, EmuTraits); }
