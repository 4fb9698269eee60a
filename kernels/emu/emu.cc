// The emulator's scheduler: fibers, barriers and the block loop of emu.h.
#include "emu.h"

#include <sys/mman.h>

#include <cstdio>
#include <string>
#include <vector>

#if !defined(__x86_64__) || !defined(__linux__)
#error "the kernel emulator switches fibers with x86-64 Linux assembly"
#endif

// Saves the callee-saved registers and the stack pointer to *save_sp, then resumes the context
// saved at new_sp (or starts one that set_up() prepared).
extern "C" __attribute__((visibility("hidden"))) void sl_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .pushsection .text
  .globl sl_emu_switch
  .hidden sl_emu_switch
  .type sl_emu_switch, @function
sl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sl_emu_switch, .-sl_emu_switch
  .popsection
)");

namespace emu {
namespace {

// Kernels keep a few KB on their stacks; the guard page below turns an overflow into a crash at
// the faulting access instead of a corrupted neighbour.
constexpr size_t STACK = 64 * 1024, GUARD = 4096;

struct Stack {
  char* mem = nullptr;
  Stack() {
    void* p = mmap(nullptr, GUARD + STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("emu: mmap of a fiber stack");
      std::abort();
    }
    mem = static_cast<char*>(p);
    mprotect(mem, GUARD, PROT_NONE);
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack() { munmap(mem, GUARD + STACK); }
  void* top() const { return mem + GUARD + STACK; }
};

struct Barrier {
  unsigned n = 0, count = 0;
  uint64_t gen = 0;
};

// Shuffle k of a warp goes through buf[k % 2]: a lane can only write the same buffer again two
// shuffles later, after the barrier of the next one, which every lane reaches only once it has
// read this one. So one barrier per shuffle suffices.
struct Warp {
  Barrier bar;
  uint64_t buf[2][32];
};

struct Fiber {
  void* sp = nullptr;
  unsigned tid = 0;
  bool done = false;
  // Waiting at `bar` until its generation moves past `gen`; null when runnable.
  const Barrier* bar = nullptr;
  uint64_t gen = 0;
};

// One OS thread's emulation: the launch in progress.
struct State {
  std::vector<Stack*> stacks;  // kept across launches; never shrinks
  std::vector<Fiber> fibers;
  std::vector<unsigned> order;
  std::vector<Warp> warps;
  Barrier block;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  const std::function<void()>* body = nullptr;
  std::string error;
  ~State() {
    for (Stack* s : stacks) delete s;
  }
};

// The hot paths reach the state through a plain thread_local pointer: a thread_local object
// with a constructor would be reached through an initialisation check on every access.
thread_local State* st = nullptr;

State& state() {
  static thread_local State owned;  // constructed on a thread's first launch, freed at its exit
  st = &owned;
  return owned;
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield() { sl_emu_switch(&st->cur->sp, st->sched_sp); }

// The scheduler resumes a fiber waiting here only once the last thread has arrived.
void arrive(Barrier& b) {
  if (++b.count == b.n) {
    b.count = 0;
    ++b.gen;
    return;
  }
  st->cur->bar = &b;
  st->cur->gen = b.gen;
  yield();
  st->cur->bar = nullptr;
}

[[noreturn]] void trampoline() {
  (*st->body)();
  st->cur->done = true;
  yield();
  std::abort();  // a finished fiber is never resumed
}

// A fresh context on `stack` that starts in trampoline(), laid out as sl_emu_switch pops it.
void* set_up(const Stack& stack) {
  void** sp = static_cast<void**>(stack.top());
  *--sp = nullptr;                                     // trampoline's return address (never used)
  *--sp = reinterpret_cast<void*>(&trampoline);        // where sl_emu_switch's ret goes
  for (int r = 0; r < 6; ++r) *--sp = nullptr;         // rbp rbx r12-r15
  return sp;
}

// xorshift64*: the per-block resume order, the same on every run.
uint64_t next(uint64_t& s) {
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return s * 0x2545F4914F6CDD1Dull;
}

const char* fail(const char* kernel, const std::string& what) {
  st->error = std::string(kernel) + ": " + what;
  return st->error.c_str();
}

}  // namespace

void sync_block() { arrive(st->block); }

uint64_t exchange(uint64_t v, unsigned src) {
  Warp& w = st->warps[threadIdx.x / 32];
  uint64_t* buf = w.buf[w.bar.gen & 1];
  buf[threadIdx.x & 31] = v;
  arrive(w.bar);
  return buf[src];
}

const char* run(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body) {
  State& s = state();
  const unsigned n = block.x;
  if (n == 0 || n % 32 != 0 || n > 1024 || block.y != 1 || block.z != 1 || grid.z != 1) {
    return fail(kernel, "the emulator runs 1-D blocks of whole warps (32 to 1024 threads) on a 2-D grid, got block (" +
                            std::to_string(block.x) + ", " + std::to_string(block.y) + ", " + std::to_string(block.z) +
                            ")");
  }
  while (s.stacks.size() < n) s.stacks.push_back(new Stack());
  s.fibers.assign(n, Fiber{});
  s.order.resize(n);
  s.warps.assign(n / 32, Warp{});
  for (Warp& w : s.warps) w.bar.n = 32;
  s.body = &body;
  blockDim = block;
  gridDim = grid;
  for (unsigned y = 0; y < grid.y; ++y) {
    for (unsigned x = 0; x < grid.x; ++x) {
      blockIdx = {x, y, 0};
      s.block = Barrier{n, 0, 0};
      for (Warp& w : s.warps) w.bar.count = 0;
      uint64_t seed = (((uint64_t)y << 32) | x) * 0x9E3779B97F4A7C15ull + 1;
      for (unsigned t = 0; t < n; ++t) {
        s.fibers[t] = Fiber{set_up(*s.stacks[t]), t, false, nullptr, 0};
        s.order[t] = t;
      }
      for (unsigned t = n - 1; t > 0; --t) std::swap(s.order[t], s.order[next(seed) % (t + 1)]);
      for (unsigned done = 0; done < n;) {
        bool moved = false;
        done = 0;
        for (unsigned t : s.order) {
          Fiber& f = s.fibers[t];
          if (!f.done && (!f.bar || f.bar->gen != f.gen)) {
            s.cur = &f;
            threadIdx = {f.tid, 0, 0};
            sl_emu_switch(&s.sched_sp, f.sp);
            moved = true;
          }
          done += f.done;
        }
        if (done < n && !moved) {
          // Nobody can move: the waiting fibers are abandoned (the next launch starts afresh).
          unsigned at_block = 0, at_warp = 0;
          for (const Fiber& f : s.fibers) at_block += f.bar == &s.block, at_warp += f.bar && f.bar != &s.block;
          return fail(kernel, "deadlock in block (" + std::to_string(x) + ", " + std::to_string(y) + "): " +
                                  std::to_string(at_block) + " threads wait at __syncthreads, " +
                                  std::to_string(at_warp) + " at a warp shuffle, " + std::to_string(done) +
                                  " have returned (a barrier not every thread reaches)");
        }
      }
    }
  }
  return nullptr;
}

}  // namespace emu
