// CUDA-on-CPU emulation harness (torch-free, C++20, g++).
//
// Runs the kernels of csrc/kernels/*.cuh on the host so they can be checked without a GPU:
//   * every CUDA thread of a block is a fiber on the calling host thread, or, in the ASan build
//     (and with DSC_EMU_THREADS), a std::thread of a pool. Fibers because 256 OS threads per block on a
//     2-core machine spend most of their time being scheduled: the fiber build runs the emulator tests
//     several times faster and never spins. Under ThreadSanitizer each fiber is a TSan fiber and every
//     switch is declared unsynchronised, so the only happens-before edges between the CUDA threads of a
//     block are the ones its barriers make (declared at each barrier, one sync object per phase parity):
//     a dropped barrier is a reported race whatever order the fibers happen to run in;
//   * threadIdx/blockIdx/blockDim/gridDim live in the running CUDA thread's own state (a thread-local
//     in the pool build, the fiber's record in the fiber build, reached through a pointer the scheduler
//     sets on each switch);
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

#if defined(__SANITIZE_ADDRESS__) || defined(DSC_EMU_THREADS)
#define DSC_EMU_FIBERS 0
#else
#define DSC_EMU_FIBERS 1
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#endif

#if DSC_EMU_FIBERS && defined(__SANITIZE_THREAD__)
#define DSC_EMU_TSAN_FIBERS 1
#include <sanitizer/tsan_interface.h>
#else
#define DSC_EMU_TSAN_FIBERS 0
#endif

// How a fiber switch is made. glibc's swapcontext saves and restores the signal mask, a system call on
// every switch: two per fiber per barrier, 42% of the emulator tests' CPU time went to the kernel
// (MEASURED, tests/test_emu_kernels.py: 20 s user, 15 s system; 8.5 and 0.6 with the switch below). On
// x86-64 the switch is six callee-saved registers and the stack pointer (dsc_emu_switch). The TSan build
// keeps ucontext, the switch ThreadSanitizer's fiber API is documented with (under TSan the kernels'
// instrumentation, not the switch, is the cost: 5.7 -> 5.5 s for tsan_main's clean run), so both paths
// run in the suite; other CPUs keep it too, as does -DDSC_EMU_UCONTEXT.
#if DSC_EMU_FIBERS && !DSC_EMU_TSAN_FIBERS && defined(__x86_64__) && !defined(DSC_EMU_UCONTEXT)
#define DSC_EMU_ASM_SWITCH 1
// dsc_emu_switch(&from_sp, &to_sp): pushes the callee-saved registers on the running stack, stores its
// stack pointer in from_sp, loads to_sp, pops the registers saved there and returns into that fiber. Both
// stack pointers are read and written inside, uninstrumented (with the switch declared to ThreadSanitizer
// before the call, an instrumented read of to_sp would count as the next fiber's: a false race, seen when
// this switch was tried under TSan). Weak and hidden: every unit that includes this header defines it.
extern "C" void dsc_emu_switch(void** from_sp, void* const* to_sp);
asm(R"(
  .text
  .weak dsc_emu_switch
  .hidden dsc_emu_switch
  .type dsc_emu_switch, @function
dsc_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq (%rsi), %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dsc_emu_switch, .-dsc_emu_switch
)");
#else
#define DSC_EMU_ASM_SWITCH 0
#endif

namespace emu {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline constexpr std::size_t kSharedArenaBytes = 64 * 1024;  // more than any kernel here asks for
inline constexpr int kWarp = 32;

// Happens-before declarations for ThreadSanitizer (no-ops elsewhere): a release on an address, and an acquire
// of everything released on it before.
#if DSC_EMU_TSAN_FIBERS
inline void hb_release(void* a) { __tsan_release(a); }
inline void hb_acquire(void* a) { __tsan_acquire(a); }
#else
inline void hb_release(void*) {}
inline void hb_acquire(void*) {}
#endif

#if DSC_EMU_FIBERS
void fiber_wait(const std::atomic<uint64_t>* gen, uint64_t seen);

// A block's (or a warp's) barrier among fibers: arrivals are counted, the last one opens the next phase.
// The counters are relaxed atomics only so that ThreadSanitizer, which sees every fiber as a thread of its
// own, takes them for the scheduler's bookkeeping they are; they order nothing. What a barrier orders is
// declared: each arrival releases on the phase's sync object, each thread leaving the barrier acquires it.
// Two objects alternate by phase parity, so a thread resumed late from phase k cannot acquire what faster
// threads have already released on arriving at phase k + 1 (that would hide a race of phase k + 1).
class Barrier {
 public:
  explicit Barrier(std::ptrdiff_t n) : expected_(n) {}
  void arrive_and_wait() {
    const uint64_t seen = gen_.load(std::memory_order_relaxed);
    hb_release(&sync_[seen & 1]);
    if (arrived_.fetch_add(1, std::memory_order_relaxed) + 1 == expected_.load(std::memory_order_relaxed))
      open();
    else
      fiber_wait(&gen_, seen);
    hb_acquire(&sync_[seen & 1]);
  }
  void arrive_and_drop() {
    hb_release(&sync_[gen_.load(std::memory_order_relaxed) & 1]);
    const std::ptrdiff_t left = expected_.fetch_sub(1, std::memory_order_relaxed) - 1;
    if (left > 0 && arrived_.load(std::memory_order_relaxed) == left) open();
  }

 private:
  void open() {
    arrived_.store(0, std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic<std::ptrdiff_t> expected_, arrived_{0};
  std::atomic<uint64_t> gen_{0};
  char sync_[2] = {};
};
#else
// The thread-pool build (ASan, DSC_EMU_THREADS): std::barrier. A mutex + condition variable barrier would
// sleep instead of spin, but a thread waking late re-acquires the mutex after faster threads' next arrivals:
// a happens-before edge that would hide the race of a dropped barrier from TSan in a threaded build.
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

#if DSC_EMU_FIBERS
// The running fiber's state (set by the scheduler before each switch; a relaxed atomic for the same reason
// as the barrier's counters). Each fiber writes only its own record.
inline thread_local std::atomic<ThreadState*> tls_current{nullptr};
inline ThreadState& cur() { return *tls_current.load(std::memory_order_relaxed); }
#else
inline thread_local ThreadState tls;
inline ThreadState& cur() { return tls; }
#endif

inline unsigned lane_id() { return cur().linear % kWarp; }
inline Warp& my_warp() { return *cur().block->warps[cur().linear / kWarp]; }

inline void syncthreads() { cur().block->bar.arrive_and_wait(); }
inline void syncwarp() { my_warp().bar.arrive_and_wait(); }

inline void* shared_arena(std::size_t bytes) {
  if (bytes > kSharedArenaBytes) throw std::runtime_error("emu: shared memory request exceeds the arena");
  return cur().block->arena.get();
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
// Under ThreadSanitizer: what the host thread did before the block happens before every fiber's start
// (released once, before any fiber runs, so no fiber's work reaches another that way), and every fiber's
// end happens before the host thread goes on; switches themselves order nothing.
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
      Fiber& f = *fibers_[i];
      f.done.store(false, std::memory_order_relaxed);
      f.gen.store(nullptr, std::memory_order_relaxed);
      f.state = ThreadState{};
#if DSC_EMU_ASM_SWITCH
      // The frame dsc_emu_switch pops on the first switch in: six zeroed registers, then start() as the
      // return address, entered as if called (rsp = 8 mod 16, a null return address above it).
      void** top = reinterpret_cast<void**>(f.stack + kStack);
      top[-1] = nullptr;
      top[-2] = reinterpret_cast<void*>(&FiberRunner::start);
      for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
      f.sp = top - 8;
#else
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = &home_;
      makecontext(&f.ctx, reinterpret_cast<void (*)()>(&FiberRunner::entry), 1, static_cast<int>(i));
#endif
    }
#if DSC_EMU_TSAN_FIBERS
    home_tsan_ = __tsan_get_current_fiber();
#endif
    hb_release(&start_);
    unsigned live = n;
    while (live > 0) {
      bool progress = false;
      for (unsigned i = 0; i < n; ++i) {
        Fiber& f = *fibers_[i];
        if (f.done.load(std::memory_order_relaxed)) continue;
        const std::atomic<uint64_t>* gen = f.gen.load(std::memory_order_relaxed);
        if (gen != nullptr && gen->load(std::memory_order_relaxed) == f.seen.load(std::memory_order_relaxed)) continue;
        f.gen.store(nullptr, std::memory_order_relaxed);
        current_.store(i, std::memory_order_relaxed);
        tls_current.store(&f.state, std::memory_order_relaxed);
        switch_to(f.tsan);
#if DSC_EMU_ASM_SWITCH
        dsc_emu_switch(&home_sp_, &f.sp);
#else
        swapcontext(&home_, &f.ctx);
#endif
        progress = true;
        if (f.done.load(std::memory_order_relaxed)) --live;
      }
      if (!progress) {
        job_ = nullptr;
        tls_current.store(nullptr, std::memory_order_relaxed);
        throw std::runtime_error(
            "emu: deadlock: every live thread of the block waits on a barrier that cannot "
            "complete (a __syncthreads or warp collective in divergent code)");
      }
    }
    hb_acquire(&end_);
    tls_current.store(nullptr, std::memory_order_relaxed);
    job_ = nullptr;
  }
  // Called by a fiber: park until *gen moves past seen.
  void wait(const std::atomic<uint64_t>* gen, uint64_t seen) {
    Fiber& f = *fibers_[current_.load(std::memory_order_relaxed)];
    f.seen.store(seen, std::memory_order_relaxed);
    f.gen.store(gen, std::memory_order_relaxed);
    switch_to(home_tsan_);
#if DSC_EMU_ASM_SWITCH
    dsc_emu_switch(&f.sp, &home_sp_);
#else
    swapcontext(&f.ctx, &home_);
#endif
  }

 private:
  static constexpr std::size_t kStack = 512 * 1024;
  struct Fiber {
    ucontext_t ctx;
    void* sp = nullptr;  // its saved stack pointer while switched out (the asm switch)
    char* stack = nullptr;
    void* tsan = nullptr;  // its ThreadSanitizer fiber (TSan builds)
    std::atomic<const std::atomic<uint64_t>*> gen{nullptr};
    std::atomic<uint64_t> seen{0};
    std::atomic<bool> done{false};
    ThreadState state;  // the fiber's threadIdx etc.: written by the fiber itself once it runs
  };
  // Not instrumented, and entry() neither: TSan keeps a shadow call stack per fiber, so no instrumented
  // function may return after a switch has been declared and before the context switch itself.
  __attribute__((always_inline, no_sanitize("thread"))) static inline void switch_to(
      [[maybe_unused]] void* tsan_fiber) {
#if DSC_EMU_TSAN_FIBERS
    __tsan_switch_to_fiber(tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  }
  __attribute__((no_sanitize("thread"))) static void entry(int i) {
    FiberRunner& r = get();
    hb_acquire(&r.start_);
    Fiber& me = *r.fibers_[static_cast<unsigned>(i)];
    (*r.job_)(static_cast<unsigned>(i));
    me.done.store(true, std::memory_order_relaxed);
    hb_release(&r.end_);      // after the fiber's last access of anything the host thread touches next
    switch_to(r.home_tsan_);  // uc_link returns to home_
  }
#if DSC_EMU_ASM_SWITCH
  // A fiber's first frame (run() puts its address where dsc_emu_switch returns to). It never returns: the
  // finished fiber switches home for good, and run() lays out a fresh frame before the stack is used again.
  __attribute__((no_sanitize("thread"))) static void start() {
    FiberRunner& r = get();
    const unsigned i = r.current_.load(std::memory_order_relaxed);
    entry(static_cast<int>(i));
    void* abandoned = nullptr;
    dsc_emu_switch(&abandoned, &r.home_sp_);
    __builtin_unreachable();
  }
#endif
  void grow(unsigned n) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    while (fibers_.size() < n) {
      void* m =
          mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("emu: cannot map a fiber stack");
      mprotect(m, page, PROT_NONE);  // guard page: stacks grow down
      fibers_.emplace_back(new Fiber);
      fibers_.back()->stack = static_cast<char*>(m) + page;
#if DSC_EMU_TSAN_FIBERS
      fibers_.back()->tsan = __tsan_create_fiber(0);
#endif
    }
  }
  std::vector<std::unique_ptr<Fiber>> fibers_;  // stable records (they hold atomics), reused by every block
  ucontext_t home_;
  void* home_sp_ = nullptr;  // the host thread's stack pointer while a fiber runs (the asm switch)
  void* home_tsan_ = nullptr;
  std::atomic<unsigned> current_{0};
  const std::function<void(unsigned)>* job_ = nullptr;
  char start_ = 0, end_ = 0;  // sync objects of the block's start and end (TSan)
};

inline void fiber_wait(const std::atomic<uint64_t>* gen, uint64_t seen) { FiberRunner::get().wait(gen, seen); }
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
          ThreadState& me = cur();
          me.blockIdx = dim3(bx, by, bz);
          me.gridDim = grid;
          me.blockDim = block;
          me.threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          me.block = &blk;
          me.linear = t;
          try {
            body();
          } catch (...) {
            if (!failed.exchange(true)) err = std::current_exception();
          }
          // The thread has returned: drop out of the warp's and the block's barriers.
          my_warp().bar.arrive_and_drop();
          blk.bar.arrive_and_drop();
          me.block = nullptr;
        });
        if (err) std::rethrow_exception(err);
      }
}

}  // namespace emu

// The CUDA spellings the kernel headers use, mapped onto the harness.
#define threadIdx (::emu::cur().threadIdx)
#define blockIdx (::emu::cur().blockIdx)
#define blockDim (::emu::cur().blockDim)
#define gridDim (::emu::cur().gridDim)
#define __syncthreads() ::emu::syncthreads()
#define __syncwarp(...) ::emu::syncwarp()
#define __shfl_xor_sync(mask, v, lanemask) ::emu::shfl_xor((v), (lanemask))
#define atomicAdd(addr, v) ::emu::atomic_add((addr), (v))
