// mpi_comm.cc — the collectives over MPI (compiled where CMake found MPI).
//
// Every collective is posted non-blocking (MPI_Iallgather, …) and then
// polled with MPI_Test until it completes or the timeout passes: a peer that
// died, or that called a different collective, makes this rank fail with a
// timeout instead of waiting forever. Polling backs off to sleeps so that a
// waiting rank leaves the cores to ranks that are still computing.
//
// Collectives are serialised by one mutex: they must be issued in the same
// order on every rank, and MPI is initialised with MPI_THREAD_SERIALIZED
// (calls come from the main thread and from libuv pool threads).
#include <mpi.h>
#include <dlfcn.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <mutex>
#include <thread>

#include "comm.h"

namespace ms::comm {
namespace {

std::mutex g_mu;
bool g_initialized = false;
bool g_finalized = false;
bool g_broken = false;
double g_timeout_s = 600;

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    default: return MPI_INT;
  }
}

size_t type_size(DType t) { return t == DType::F64 ? 8 : 4; }

std::string mpi_message(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, len);
}

void check(int code, const char* what) {
  if (code != MPI_SUCCESS) throw CommError{"mpi", std::string(what) + " failed: " + mpi_message(code)};
}

void ensure_usable(const char* what) {
  if (!g_initialized || g_finalized) {
    throw CommError{"mpi", std::string(what) + ": the communicator is not initialised (or already shut down)"};
  }
  if (g_broken) {
    throw CommError{"broken", std::string(what) + ": an earlier collective timed out, so the ranks are out of step; "
                                                  "the communicator cannot be used again (abort the job)"};
  }
}

// Waits for `req`, polling; throws a timeout CommError (and marks the
// communicator broken: the request can be neither completed nor freed).
void wait(MPI_Request* req, const char* what) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration<double>(g_timeout_s);
  auto pause = std::chrono::microseconds(0);
  for (;;) {
    int done = 0;
    check(MPI_Test(req, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    const auto now = clock::now();
    if (now > deadline) {
      g_broken = true;
      int rank = -1;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", g_timeout_s);
      throw CommError{"timeout", std::string(what) + " on rank " + std::to_string(rank) + " timed out after " + secs +
                                     " s: a peer rank died or did not reach the same collective"};
    }
    // Spin for the first 200 µs (a collective among ranks in step), then
    // sleep with a growing pause up to 1 ms.
    if (now - start > std::chrono::microseconds(200)) {
      pause = std::min(std::chrono::microseconds(1000), pause + std::chrono::microseconds(20));
      std::this_thread::sleep_for(pause);
    }
  }
}

// Open MPI opens its components with dlopen; they resolve symbols of libmpi,
// which Node loaded privately (RTLD_LOCAL) as a dependency of this addon.
// Re-open libmpi with RTLD_GLOBAL so that they find them.
void promote_libmpi() {
  Dl_info di;
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &di) && di.dli_fname) {
    dlopen(di.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  }
}

}  // namespace

EngineInfo engine_info() {
  EngineInfo e;
  e.compiled = true;
  e.engine = "mpi";
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  e.library = std::string(version, len);
  while (!e.library.empty() && (e.library.back() == '\n' || e.library.back() == ' ' || e.library.back() == '\0')) {
    e.library.pop_back();
  }
  std::lock_guard<std::mutex> lock(g_mu);
  e.initialized = g_initialized && !g_finalized;
  return e;
}

void init(double timeout_s, int* rank, int* size) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_finalized) throw CommError{"mpi", "MPI was already shut down in this process; it cannot be initialised again"};
  if (!g_initialized) {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
      promote_libmpi();
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      if (provided < MPI_THREAD_SERIALIZED) {
        throw CommError{"mpi", "the MPI library does not support MPI_THREAD_SERIALIZED (collectives run on pool threads)"};
      }
    }
    // Errors come back as codes (turned into CommError), not as an abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_initialized = true;
  }
  g_timeout_s = timeout_s;
  check(MPI_Comm_rank(MPI_COMM_WORLD, rank), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, size), "MPI_Comm_size");
}

void set_timeout(double timeout_s) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_timeout_s = timeout_s;
}

void all_gather(const void* send, void* recv, size_t count, DType t) {
  std::lock_guard<std::mutex> lock(g_mu);
  ensure_usable("allGather");
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (count * (size_t)size > (size_t)INT_MAX) {
    throw CommError{"mpi", "allGather: " + std::to_string(count) + " elements × " + std::to_string(size) +
                               " ranks exceed MPI's int count (2³¹ − 1)"};
  }
  MPI_Request req;
  check(MPI_Iallgather(send, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD, &req), "MPI_Iallgather");
  wait(&req, "allGather");
}

// All-reduce and broadcast go in pieces of at most 2³⁰ elements (MPI counts are int).
constexpr size_t kPiece = size_t(1) << 30;

// Issues one non-blocking call per piece, issue(piece, n, &req), and waits for each.
template <class Issue>
void in_pieces(void* buf, size_t count, DType t, const char* what, Issue issue) {
  char* p = static_cast<char*>(buf);
  for (size_t done = 0; done < count; done += kPiece) {
    MPI_Request req;
    issue(p + done * type_size(t), (int)std::min(kPiece, count - done), &req);
    wait(&req, what);
  }
}

void all_reduce_sum(void* buf, size_t count, DType t) {
  std::lock_guard<std::mutex> lock(g_mu);
  ensure_usable("allReduce");
  in_pieces(buf, count, t, "allReduce", [&](char* piece, int n, MPI_Request* req) {
    check(MPI_Iallreduce(MPI_IN_PLACE, piece, n, mpi_type(t), MPI_SUM, MPI_COMM_WORLD, req), "MPI_Iallreduce");
  });
}

void broadcast(void* buf, size_t count, DType t, int root) {
  std::lock_guard<std::mutex> lock(g_mu);
  ensure_usable("broadcast");
  in_pieces(buf, count, t, "broadcast", [&](char* piece, int n, MPI_Request* req) {
    check(MPI_Ibcast(piece, n, mpi_type(t), root, MPI_COMM_WORLD, req), "MPI_Ibcast");
  });
}

void barrier() {
  std::lock_guard<std::mutex> lock(g_mu);
  ensure_usable("barrier");
  MPI_Request req;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "MPI_Ibarrier");
  wait(&req, "barrier");
}

void shutdown(int abort_code) {
  // No lock when aborting: a pool thread may hold it inside a stuck collective.
  if (!g_initialized || g_finalized) return;
  if (abort_code != 0 || g_broken) {
    MPI_Abort(MPI_COMM_WORLD, abort_code != 0 ? abort_code : 1);
    return;
  }
  std::lock_guard<std::mutex> lock(g_mu);
  g_finalized = true;
  MPI_Finalize();
}

}  // namespace ms::comm
