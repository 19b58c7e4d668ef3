// big_alloc.h — allocation of large, page-backed buffers (outputs such as a
// C×d gradWeights, the tile cache, copies held by async calls).
//
// Two costs dominate such buffers when they are new, and both are the
// kernel's, not the arithmetic's:
//  - first-touch page faults. Large blocks are mmap'ed with MADV_HUGEPAGE,
//    one fault per 2 MiB instead of per 4 KiB (measured on a 2-core build VM:
//    204 MB touched in 515 ms with 4 KiB pages, 21 ms with huge pages).
//  - memory the process gave back. Once unmapped, the pages go back to the
//    kernel (and, in a VM with free page reporting, to the host); getting them
//    again costs a fault each and a zeroing, several times the cost of writing
//    them: 2 GiB of fresh huge pages took 2.1 s of system time per call on an
//    Intel Xeon (Emerald Rapids) KVM guest, against 3.6 s for the whole C = 10⁶
//    loss that wrote them.
// So a freed large block is kept for reuse (the recycle list below): its pages
// stay mapped but are marked MADV_FREE, which lets the kernel take them back
// under memory pressure without a syscall of ours, and the next allocation of
// the same size takes the block back. A training loop that asks for a fresh
// gradient array every step then writes into pages it already has.
// The list holds at most kRecycleBlocks blocks and a quarter of the physical
// memory; release_recycled() empties it (lib's releaseCachedMemory()).
//
// big_alloc(bytes) returns zeroed memory; big_alloc(bytes, Fill::any) may
// return a recycled block's old contents, for buffers that are written in full
// before being read (the loss outputs, the tile cache).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace ms {

constexpr size_t kBigAllocThreshold = size_t(2) << 20;
constexpr size_t kRecycleBlocks = 8;

enum class Fill { zero, any };

// A failed big_alloc: a bad_alloc that says how many bytes were asked for,
// so the addon can report them.
struct AllocFailure : std::bad_alloc {
  size_t bytes;
  explicit AllocFailure(size_t b) : bytes(b) {}
  const char* what() const noexcept override { return "big_alloc failed"; }
};

// Bytes currently held by big_alloc (allocated and not yet freed): the addon
// exposes it so tests can check that native buffers are released. Recycled
// blocks are not counted here (see recycled_bytes()).
inline std::atomic<int64_t>& big_live_bytes() {
  static std::atomic<int64_t> live{0};
  return live;
}

#if defined(__linux__)
namespace detail {

struct RecycleList {
  std::mutex mutex;
  std::deque<std::pair<void*, size_t>> blocks;  // oldest first
  size_t bytes = 0;
  size_t capacity = 0;
  RecycleList() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    capacity = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 4 : size_t(1) << 30;
  }
};

// Never destroyed: a pool thread may free a block while the process exits.
inline RecycleList& recycle_list() {
  static RecycleList* list = new RecycleList();
  return *list;
}

// A recycled block of exactly `bytes`, or null.
inline void* take_recycled(size_t bytes) {
  RecycleList& r = recycle_list();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (auto it = r.blocks.end(); it != r.blocks.begin();) {
    --it;  // newest first: the most likely still resident
    if (it->second == bytes) {
      void* p = it->first;
      r.bytes -= bytes;
      r.blocks.erase(it);
      return p;
    }
  }
  return nullptr;
}

// Keeps a freed block for reuse, or unmaps it when it does not fit.
inline void give_back(void* p, size_t bytes) {
  RecycleList& r = recycle_list();
  std::deque<std::pair<void*, size_t>> evicted;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    if (bytes > r.capacity) {
      evicted.emplace_back(p, bytes);
    } else {
      while (!r.blocks.empty() && (r.blocks.size() >= kRecycleBlocks || r.bytes + bytes > r.capacity)) {
        evicted.push_back(r.blocks.front());
        r.bytes -= r.blocks.front().second;
        r.blocks.pop_front();
      }
      madvise(p, bytes, MADV_FREE);
      r.blocks.emplace_back(p, bytes);
      r.bytes += bytes;
    }
  }
  for (auto& [q, n] : evicted) munmap(q, n);
}

}  // namespace detail
#endif

// Bytes of freed blocks kept for reuse.
inline size_t recycled_bytes() {
#if defined(__linux__)
  detail::RecycleList& r = detail::recycle_list();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.bytes;
#else
  return 0;
#endif
}

// Unmaps every block kept for reuse; returns the bytes given back.
inline size_t release_recycled() {
#if defined(__linux__)
  detail::RecycleList& r = detail::recycle_list();
  std::deque<std::pair<void*, size_t>> blocks;
  size_t bytes;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    blocks.swap(r.blocks);
    bytes = r.bytes;
    r.bytes = 0;
  }
  for (auto& [p, n] : blocks) munmap(p, n);
  return bytes;
#else
  return 0;
#endif
}

inline void* big_alloc(size_t bytes, Fill fill = Fill::zero) {
  if (bytes == 0) bytes = 1;
#if defined(__linux__)
  if (bytes >= kBigAllocThreshold) {
    void* p = detail::take_recycled(bytes);
    if (p) {
      if (fill == Fill::zero) std::memset(p, 0, bytes);
    } else {
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        // The recycled blocks of other sizes may be what stands in the way.
        if (release_recycled() == 0) throw AllocFailure(bytes);
        p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw AllocFailure(bytes);
      }
      madvise(p, bytes, MADV_HUGEPAGE);
    }
    big_live_bytes() += (int64_t)bytes;
    return p;
  }
#endif
  void* p = fill == Fill::zero ? std::calloc(bytes, 1) : std::malloc(bytes);
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
    detail::give_back(p, bytes);
    return;
  }
#endif
  std::free(p);
}

// Owning handle for an array of T, zeroed unless made with Fill::any.
template <class T>
class BigArray {
 public:
  BigArray() = default;
  explicit BigArray(size_t n, Fill fill = Fill::zero) : n_(n), p_(static_cast<T*>(big_alloc(n * sizeof(T), fill))) {}
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
