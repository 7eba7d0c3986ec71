// Launch policy of the emulator build: the launcher's (grid, block, args) run on emu::launch, with
// the launch-configuration limits a real GPU enforces checked first. Every launch is counted by kernel
// name (launch_counts), so tests can see which kernels a call ran, e.g. that an unwanted gradient costs none.
#pragma once

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "emu/emu.h"

namespace emu {

// The kernel's name without namespace, template arguments or parameters ("dsconv_bwd_dwp_kernel"), from the
// symbol of its instantiation (the kernels are inline functions: a weak, exported symbol once their address is
// taken). "?" where the symbol is not exported (an executable built without -rdynamic).
inline std::string kernel_name(const void* fn) {
  Dl_info info{};
  if (dladdr(fn, &info) == 0 || info.dli_sname == nullptr) return "?";
  int status = 0;
  char* dem = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string s = status == 0 && dem != nullptr ? dem : info.dli_sname;
  std::free(dem);
  s = s.substr(0, s.find_first_of("<("));
  const size_t cut = s.find_last_of(": ");
  return cut == std::string::npos ? s : s.substr(cut + 1);
}

struct LaunchCounts {
  std::mutex mu;
  std::map<std::string, int64_t> n;
  static LaunchCounts& get() {
    static LaunchCounts c;
    return c;
  }
  void add(const void* fn) {
    const std::string name = kernel_name(fn);
    std::lock_guard<std::mutex> lock(mu);
    ++n[name];
  }
  // "name count" lines in name order; reset: start counting afresh.
  std::string report(bool reset) {
    std::lock_guard<std::mutex> lock(mu);
    std::string out;
    for (const auto& [name, count] : n) out += name + " " + std::to_string(count) + "\n";
    if (reset) n.clear();
    return out;
  }
};

}  // namespace emu

struct EmuPolicy {
  template <class K, class... A>
  static void launch(K kernel, int64_t gx, int64_t gy, int64_t gz, int threads, A... args) {
    if (gx < 1 || gy < 1 || gz < 1 || gx > 2147483647LL || gy > 65535 || gz > 65535 || threads < 1 || threads > 1024)
      throw std::runtime_error("emu: invalid launch configuration grid=(" + std::to_string(gx) + "," +
                               std::to_string(gy) + "," + std::to_string(gz) + ") block=" + std::to_string(threads));
    emu::LaunchCounts::get().add(reinterpret_cast<const void*>(kernel));
    emu::launch(emu::dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)),
                emu::dim3(static_cast<unsigned>(threads)), [&] { kernel(args...); });
  }
};
