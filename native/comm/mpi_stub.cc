// mpi_stub.cc — the collectives for a build without MPI: the addon links and
// loads, deviceInfo() says why there is no engine, every collective throws.
#include "comm.h"

namespace ms::comm {

#if defined(MS_MPI_DISABLED)
static const char* kWhy = "margin-softmax was built without MPI (build from source with MARGIN_SOFTMAX_MPI=1, or cmake-js --CDMS_WITH_MPI=ON)";
#elif defined(MS_MPI_NODE_GYP)
static const char* kWhy = "margin-softmax was built with node-gyp, which builds without MPI "
                          "(build with cmake-js where Open MPI is installed for the collectives)";
#else
static const char* kWhy = "margin-softmax was built without MPI (CMake's find_package(MPI) found no MPI at build time; "
                          "install Open MPI, e.g. libopenmpi-dev, and rebuild)";
#endif

EngineInfo engine_info() {
  EngineInfo e;
  e.reason = kWhy;
  return e;
}

[[noreturn]] static void unavailable() { throw CommError{"unavailable", kWhy}; }

void init(double, int*, int*) { unavailable(); }
void set_timeout(double) { unavailable(); }
void all_gather(const void*, void*, size_t, DType) { unavailable(); }
void all_reduce_sum(void*, size_t, DType) { unavailable(); }
void broadcast(void*, size_t, DType, int) { unavailable(); }
void barrier() { unavailable(); }
void shutdown(int) {}

}  // namespace ms::comm
