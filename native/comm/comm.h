// comm.h — the collectives the sharded head needs (all-gather, all-reduce
// sum, broadcast, barrier), behind one engine interface. mpi_comm.cc
// implements it over MPI where CMake found MPI; mpi_stub.cc otherwise.
// napi/collectives.cc binds it to JavaScript (sync and on the libuv pool).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ms::comm {

enum class DType { F32, F64, I32 };

// Why a collective failed: 'unavailable' (no engine compiled in), 'timeout'
// (a peer did not arrive in time: it died, or called a different collective),
// 'broken' (an earlier timeout left the communicator unusable), 'mpi'.
struct CommError {
  std::string kind;
  std::string message;
};

struct EngineInfo {
  bool compiled = false;
  std::string engine;   // "mpi" or ""
  std::string library;  // the MPI library's version string
  std::string reason;   // why not compiled
  bool initialized = false;
};

EngineInfo engine_info();
// Initialises the engine once (idempotent); rank and size of the world.
void init(double timeout_s, int* rank, int* size);
void set_timeout(double timeout_s);
void all_gather(const void* send, void* recv, size_t count, DType t);
void all_reduce_sum(void* buf, size_t count, DType t);
void broadcast(void* buf, size_t count, DType t, int root);
void barrier();
// Finalises when healthy; aborts the job (every rank) when `abort_code` != 0
// or the communicator is broken, so that no peer waits forever.
void shutdown(int abort_code);

}  // namespace ms::comm
