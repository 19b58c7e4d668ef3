// thread_pool.cc — see thread_pool.h.
#include "thread_pool.h"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace ms {
namespace {

class Pool {
 public:
  void run(int T, const std::function<void(int)>& fn) {
    if (T <= 1) {
      for (int t = 0; t < T; ++t) fn(t);
      return;
    }
    std::lock_guard<std::mutex> one_job(job_mu_);
    grow(T - 1);
    unsigned long gen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      count_ = T;
      next_ = 0;
      pending_ = T;
      gen = ++generation_;
    }
    wake_.notify_all();
    work(gen);  // the caller takes indices too
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void grow(int n) {
    while ((int)workers_.size() < n) {
      workers_.emplace_back([this, seen = generation_]() mutable {
        for (;;) {
          {
            std::unique_lock<std::mutex> lock(mu_);
            wake_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
          }
          work(seen);
        }
      });
      workers_.back().detach();  // the pool lives for the whole process
    }
  }

  // Claims indices of job `gen` one at a time under the lock (each index is
  // a large piece of work), so a worker that wakes late can never run an
  // index of a newer job with an older job's function.
  void work(unsigned long gen) {
    for (;;) {
      const std::function<void(int)>* fn;
      int t;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (generation_ != gen || job_ == nullptr || next_ >= count_) return;
        fn = job_;
        t = next_++;
      }
      (*fn)(t);  // never throws: callers wrap their work (see parallel in class_blocks.h)
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::mutex job_mu_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  int count_ = 0;
  int pending_ = 0;
  int next_ = 0;
  unsigned long generation_ = 0;
};

// Never destroyed: detached workers may still be waiting at process exit.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

void pool_run(int T, const std::function<void(int)>& fn) { pool().run(T, fn); }

}  // namespace ms
