// Two halves of a job of a few microseconds (a cell step at small batch): the first on the
// calling thread, the second on a helper thread that stays hot between calls. An OpenMP
// fork and join of two threads costs about 0.5 us here, a sixth of such a step; handing a
// job to a spinning helper costs two cache-line transfers.
#pragma once

namespace fastrnn {

// Runs part(ctx, 0) on the caller and part(ctx, 1) on the helper thread. Whoever comes first
// takes part 1: if the helper has not claimed it by the time part 0 is done (it is asleep,
// descheduled, or a concurrent call holds it), the caller runs it too, so a call never waits
// on a thread that has not started. Returns after both parts are done; part must not throw.
void run_pair(void (*part)(void* ctx, int index), void* ctx);

template <typename F>
void run_pair(F& f) {
  run_pair([](void* c, int i) { (*static_cast<F*>(c))(i); }, &f);
}

}  // namespace fastrnn
