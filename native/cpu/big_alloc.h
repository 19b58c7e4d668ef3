// big_alloc.h — allocation of large, page-backed buffers (outputs such as a
// C×d gradWeights, the tile cache). On Linux they are mmap'ed with
// MADV_HUGEPAGE: first-touch page faults dominate otherwise (measured on the
// 2-core build VM: 204 MB touched in 515 ms with 4 KiB pages, 21 ms with
// transparent huge pages). Memory comes back zeroed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ms {

constexpr size_t kBigAllocThreshold = size_t(2) << 20;

// A failed big_alloc: a bad_alloc that says how many bytes were asked for,
// so the addon can report them.
struct AllocFailure : std::bad_alloc {
  size_t bytes;
  explicit AllocFailure(size_t b) : bytes(b) {}
  const char* what() const noexcept override { return "big_alloc failed"; }
};

// Bytes currently held by big_alloc (allocated and not yet freed): the addon
// exposes it so tests can check that native buffers are released.
inline std::atomic<int64_t>& big_live_bytes() {
  static std::atomic<int64_t> live{0};
  return live;
}

inline void* big_alloc(size_t bytes) {
  if (bytes == 0) bytes = 1;
#if defined(__linux__)
  if (bytes >= kBigAllocThreshold) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw AllocFailure(bytes);
    madvise(p, bytes, MADV_HUGEPAGE);
    big_live_bytes() += (int64_t)bytes;
    return p;
  }
#endif
  void* p = std::calloc(bytes, 1);
  if (!p) throw AllocFailure(bytes);
  big_live_bytes() += (int64_t)bytes;
  return p;
}

inline void big_free(void* p, size_t bytes) {
  if (!p) return;
  if (bytes == 0) bytes = 1;
  big_live_bytes() -= (int64_t)bytes;
#if defined(__linux__)
  if (bytes >= kBigAllocThreshold) {
    munmap(p, bytes);
    return;
  }
#endif
  std::free(p);
}

// Owning handle for a zeroed array of T.
template <class T>
class BigArray {
 public:
  BigArray() = default;
  explicit BigArray(size_t n) : n_(n), p_(static_cast<T*>(big_alloc(n * sizeof(T)))) {}
  BigArray(BigArray&& o) noexcept : n_(o.n_), p_(o.p_) { o.p_ = nullptr; }
  BigArray& operator=(BigArray&& o) noexcept {
    std::swap(n_, o.n_);
    std::swap(p_, o.p_);
    return *this;
  }
  BigArray(const BigArray&) = delete;
  ~BigArray() { big_free(p_, n_ * sizeof(T)); }
  T* get() const { return p_; }
  T& operator[](size_t i) const { return p_[i]; }
  // Gives up ownership (the caller frees with big_free(p, n·sizeof(T))).
  T* release() {
    T* p = p_;
    p_ = nullptr;
    return p;
  }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace ms
