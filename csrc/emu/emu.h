// CUDA-on-CPU emulation harness (torch-free, C++20, g++).
//
// Runs the kernels of csrc/kernels/*.cuh on the host so they can be checked without a GPU:
//   * every CUDA thread of a block is a fiber (ucontext) on the calling host thread, or, in the sanitizer
//     builds, a std::thread of a pool (TSan and ASan must see real threads: that is where races are
//     found). Fibers because 256 OS threads per block on a 2-core machine spend most of their time being
//     scheduled: the fiber build runs the emulator tests several times faster and never spins;
//   * threadIdx/blockIdx/blockDim/gridDim are thread-locals (set for the running fiber on each switch);
//   * __syncthreads() is a barrier; a thread that returns drops out of it (arrive_and_drop), as on
//     a GPU where exited threads no longer take part in bar.sync. Fibers that all wait on barriers that
//     can never complete (a barrier in divergent code) raise "emu: deadlock" instead of hanging;
//   * blocks run one after another, so the block's shared memory is one arena, POISONED with 0xFF bytes
//     (a NaN pattern for floats, -1 for ints) before each block: a read of shared memory nobody wrote
//     in this block shows up as NaN in the result;
//   * warp shuffles are a per-warp exchange between two warp barriers (full mask only), __syncwarp is the
//     warp barrier, atomics go through std::atomic_ref.
// What it cannot show (see docs/cuda.md): implicit warp lockstep, weak GPU memory ordering, inter-block
// races, register/shared-memory limits. Under -fsanitize=thread a missing barrier is a reported data race.
#pragma once

#ifndef DSC_EMU
#define DSC_EMU 1
#endif

#include <atomic>
#include <barrier>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(DSC_EMU_THREADS)
#define DSC_EMU_FIBERS 0
#else
#define DSC_EMU_FIBERS 1
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#endif

namespace emu {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline constexpr std::size_t kSharedArenaBytes = 64 * 1024;  // more than any kernel here asks for
inline constexpr int kWarp = 32;

#if DSC_EMU_FIBERS
void fiber_wait(const uint64_t* gen, uint64_t seen);
#endif

#if DSC_EMU_FIBERS
// A block's (or a warp's) barrier among fibers: arrivals are counted, the last one opens the next phase.
class Barrier {
 public:
  explicit Barrier(std::ptrdiff_t n) : expected_(n) {}
  void arrive_and_wait() {
    const uint64_t seen = gen_;
    if (++arrived_ == expected_) {
      open();
      return;
    }
    fiber_wait(&gen_, seen);
  }
  void arrive_and_drop() {
    --expected_;
    if (expected_ > 0 && arrived_ == expected_) open();
  }

 private:
  void open() {
    arrived_ = 0;
    ++gen_;
  }
  std::ptrdiff_t expected_, arrived_ = 0;
  uint64_t gen_ = 0;
};
#else
// The sanitizer builds: std::barrier. A mutex + condition variable barrier would sleep instead of spin,
// but a thread waking late re-acquires the mutex after faster threads' next arrivals, which gives TSan a
// happens-before edge that hides the race of a dropped barrier (emu_tsan_drop_<id> then fails).
using Barrier = std::barrier<>;
#endif

struct Warp {
  explicit Warp(std::ptrdiff_t n) : bar(n) {}
  Barrier bar;
  alignas(64) unsigned char slot[kWarp][8];  // one 8-byte exchange slot per lane
};

struct Block {
  explicit Block(unsigned nthreads) : bar(nthreads), arena(new unsigned char[kSharedArenaBytes]) {
    std::memset(arena.get(), 0xFF, kSharedArenaBytes);  // poison
    const unsigned nwarps = (nthreads + kWarp - 1) / kWarp;
    for (unsigned w = 0; w < nwarps; ++w) {
      const unsigned lanes = std::min<unsigned>(kWarp, nthreads - w * kWarp);
      warps.emplace_back(new Warp(lanes));
    }
  }
  Barrier bar;
  std::unique_ptr<unsigned char[]> arena;
  std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadState {
  dim3 threadIdx, blockIdx, blockDim, gridDim;
  Block* block = nullptr;
  unsigned linear = 0;
};

inline thread_local ThreadState tls;

inline unsigned lane_id() { return tls.linear % kWarp; }
inline Warp& my_warp() { return *tls.block->warps[tls.linear / kWarp]; }

inline void syncthreads() { tls.block->bar.arrive_and_wait(); }
inline void syncwarp() { my_warp().bar.arrive_and_wait(); }

inline void* shared_arena(std::size_t bytes) {
  if (bytes > kSharedArenaBytes) throw std::runtime_error("emu: shared memory request exceeds the arena");
  return tls.block->arena.get();
}

template <class T>
T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) <= 8, "emu shuffle: 8-byte values at most");
  Warp& w = my_warp();
  const unsigned lane = lane_id();
  std::memcpy(w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T out;
  std::memcpy(&out, w.slot[lane ^ static_cast<unsigned>(mask)], sizeof(T));
  w.bar.arrive_and_wait();
  return out;
}

template <class T>
T atomic_add(T* addr, T v) {
  return std::atomic_ref<T>(*addr).fetch_add(v);
}

#if DSC_EMU_FIBERS
// Runs the n CUDA threads of one block as fibers on the calling host thread, round robin: each runs
// until it waits on a barrier or returns. Stacks are mmap'ed once per host thread (pages committed on
// first touch) with a guard page below each, so an overflow faults instead of corrupting a neighbour.
class FiberRunner {
 public:
  static FiberRunner& get() {
    thread_local FiberRunner runner;
    return runner;
  }
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    grow(n);
    job_ = &job;
    for (unsigned i = 0; i < n; ++i) {
      Fiber& f = fibers_[i];
      f.done = false;
      f.gen = nullptr;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = &home_;
      makecontext(&f.ctx, reinterpret_cast<void (*)()>(&FiberRunner::entry), 1, static_cast<int>(i));
    }
    unsigned live = n;
    while (live > 0) {
      bool progress = false;
      for (unsigned i = 0; i < n; ++i) {
        Fiber& f = fibers_[i];
        if (f.done || (f.gen != nullptr && *f.gen == f.seen)) continue;
        if (f.gen != nullptr) tls = f.state;  // a fresh fiber sets its own
        f.gen = nullptr;
        current_ = i;
        swapcontext(&home_, &f.ctx);
        progress = true;
        if (f.done) --live;
      }
      if (!progress) {
        job_ = nullptr;
        throw std::runtime_error(
            "emu: deadlock: every live thread of the block waits on a barrier that cannot "
            "complete (a __syncthreads or warp collective in divergent code)");
      }
    }
    job_ = nullptr;
  }
  // Called by a fiber: park until *gen moves past seen.
  void wait(const uint64_t* gen, uint64_t seen) {
    Fiber& f = fibers_[current_];
    f.gen = gen;
    f.seen = seen;
    f.state = tls;
    swapcontext(&f.ctx, &home_);
  }

 private:
  static constexpr std::size_t kStack = 512 * 1024;
  struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    const uint64_t* gen = nullptr;
    uint64_t seen = 0;
    bool done = false;
    ThreadState state;  // the fiber's threadIdx etc. while it is parked
  };
  static void entry(int i) {
    FiberRunner& r = get();
    (*r.job_)(static_cast<unsigned>(i));
    r.fibers_[static_cast<unsigned>(i)].done = true;  // uc_link returns to home_
  }
  void grow(unsigned n) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    while (fibers_.size() < n) {
      void* m =
          mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("emu: cannot map a fiber stack");
      mprotect(m, page, PROT_NONE);  // guard page: stacks grow down
      fibers_.emplace_back();
      fibers_.back().stack = static_cast<char*>(m) + page;
    }
  }
  std::vector<Fiber> fibers_;  // never shrinks: the stacks are reused by every block
  ucontext_t home_;
  unsigned current_ = 0;
  const std::function<void(unsigned)>* job_ = nullptr;
};

inline void fiber_wait(const uint64_t* gen, uint64_t seen) { FiberRunner::get().wait(gen, seen); }
#else
// A persistent pool of host threads, one per CUDA thread of a block (grown on demand), so a launch
// does not pay thread creation per block. Blocks are handed out one at a time under a mutex, which
// also orders one block's shared-memory use before the next block's (as the GPU's block retirement does).
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // leaked on purpose: workers stay parked until the process exits
    return *pool;
  }
  // Runs job(t) for t in [0, n) on n pool threads and waits for all of them.
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    std::unique_lock<std::mutex> lk(mu_);
    while (workers_.size() < n) {
      const unsigned id = static_cast<unsigned>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
      workers_.back().detach();
    }
    job_ = &job;
    active_ = n;
    remaining_ = n;
    ++gen_;
    start_.notify_all();
    done_.wait(lk, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(unsigned id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      start_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      if (id >= active_) continue;
      const std::function<void(unsigned)>* job = job_;
      lk.unlock();
      (*job)(id);
      lk.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }
  std::mutex mu_;
  std::condition_variable start_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(unsigned)>* job_ = nullptr;
  unsigned active_ = 0, remaining_ = 0;
  uint64_t gen_ = 0;
};

#endif

// Runs grid x block threads; `body` is the kernel invocation (a lambda capturing the arguments).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024) throw std::runtime_error("emu: bad block size");
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block blk(nthreads);  // fresh barriers, freshly poisoned shared memory
        std::exception_ptr err;
        std::atomic<bool> failed{false};
#if DSC_EMU_FIBERS
        FiberRunner::get().run(nthreads, [&](unsigned t) {
#else
        Pool::get().run(nthreads, [&](unsigned t) {
#endif
          tls.blockIdx = dim3(bx, by, bz);
          tls.gridDim = grid;
          tls.blockDim = block;
          tls.threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          tls.block = &blk;
          tls.linear = t;
          try {
            body();
          } catch (...) {
            if (!failed.exchange(true)) err = std::current_exception();
          }
          // The thread has returned: drop out of the warp's and the block's barriers.
          my_warp().bar.arrive_and_drop();
          blk.bar.arrive_and_drop();
          tls.block = nullptr;
        });
        if (err) std::rethrow_exception(err);
      }
}

}  // namespace emu

// The CUDA spellings the kernel headers use, mapped onto the harness.
#define threadIdx (::emu::tls.threadIdx)
#define blockIdx (::emu::tls.blockIdx)
#define blockDim (::emu::tls.blockDim)
#define gridDim (::emu::tls.gridDim)
#define __syncthreads() ::emu::syncthreads()
#define __syncwarp(...) ::emu::syncwarp()
#define __shfl_xor_sync(mask, v, lanemask) ::emu::shfl_xor((v), (lanemask))
#define atomicAdd(addr, v) ::emu::atomic_add((addr), (v))
