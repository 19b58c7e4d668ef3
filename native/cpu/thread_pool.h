// thread_pool.h — a process-wide pool of worker threads for the CPU backend.
// Threads are created once (lazily) and reused: creating threads per call
// cost time and churned malloc arenas (RSS crept up for thousands of calls).
// run(T, fn) executes fn(0) … fn(T−1) on the pool and the calling thread and
// returns when all are done. Which OS thread runs which index does not
// matter: the work of index t is fixed, so results stay deterministic.
// One job runs at a time; concurrent callers (async calls on the libuv
// pool) queue on a mutex.
#pragma once

#include <functional>

namespace ms {

void pool_run(int T, const std::function<void(int)>& fn);

}  // namespace ms
