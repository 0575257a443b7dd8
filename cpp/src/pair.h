// Two halves of a job of a few microseconds (a cell step at small batch): the first on the
// calling thread, the second on a helper thread that stays hot between calls. An OpenMP
// fork and join of two threads costs about 0.5 us here, a sixth of such a step; handing a
// job to a spinning helper costs a few cache-line transfers (60-90 ns each between these
// cores), which is why the job travels by value: see run_pair below.
#pragma once

#include <cstddef>
#include <type_traits>

namespace fastrnn {

// The most bytes of a job that run_pair copies to the helper.
constexpr size_t kPairJobBytes = 256;

// Runs part(job, 0) on the caller and part(copy, 1) on the helper thread, where copy holds
// the `bytes` bytes of *job copied next to the helper's wake-up flag (a job of more than
// kPairJobBytes runs both parts on the caller). Whoever comes first
// takes part 1: if the helper has not claimed it by the time part 0 is done (it is asleep,
// descheduled, or a concurrent call holds it), the caller runs it too, so a call never waits
// on a thread that has not started. Returns after both parts are done; part must not throw.
void run_pair(void (*part)(const void* job, int index), const void* job, size_t bytes);

// f(0) on the caller, f(1) on the helper. F is copied to the helper, so it must hold its
// operands by value (pointers and sizes), not capture the caller's variables by reference:
// each reference the helper follows into the caller's stack is one more transfer from the
// caller's core, in a chain (job -> captured address -> value -> data).
template <typename F>
void run_pair(const F& f) {
  static_assert(std::is_trivially_copyable_v<F> && sizeof(F) <= kPairJobBytes && alignof(F) <= 64,
                "run_pair copies the job: a small, trivially copyable functor");
  run_pair([](const void* j, int i) { (*static_cast<const F*>(j))(i); }, &f, sizeof(F));
}

}  // namespace fastrnn
