// Launch policy of the emulator build: the launcher's (grid, block, args) run on emu::launch, with
// the launch-configuration limits a real GPU enforces checked first.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "emu/emu.h"

struct EmuPolicy {
  template <class K, class... A>
  static void launch(K kernel, int64_t gx, int64_t gy, int64_t gz, int threads, A... args) {
    if (gx < 1 || gy < 1 || gz < 1 || gx > 2147483647LL || gy > 65535 || gz > 65535 || threads < 1 || threads > 1024)
      throw std::runtime_error("emu: invalid launch configuration grid=(" + std::to_string(gx) + "," +
                               std::to_string(gy) + "," + std::to_string(gz) + ") block=" + std::to_string(threads));
    emu::launch(emu::dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)),
                emu::dim3(static_cast<unsigned>(threads)), [&] { kernel(args...); });
  }
};
