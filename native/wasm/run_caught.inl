// run_caught.inl — ms::wasm::run_caught (declared in wasm_abi.h): the one
// place where C++ exceptions become the module's status codes.
#pragma once

#include <exception>
#include <new>

#include "../cpu/big_alloc.h"
#include "../loss_problem.h"

namespace ms::wasm {

template <class F>
int run_caught(F&& fn, const std::string& what) {
  try {
    fn();
    return kOk;
  } catch (const InputError& e) {
    last_error() = e.message;
    return kInputError;
  } catch (const AllocFailure& e) {
    last_error() = "Out of memory: could not allocate " + std::to_string(e.bytes) + " bytes for " + what +
                   " in the WebAssembly module's memory (at most 4 GiB)";
    return kOutOfMemory;
  } catch (const std::bad_alloc&) {
    last_error() = "Out of memory: could not allocate " + what + " in the WebAssembly module's memory (at most 4 GiB)";
    return kOutOfMemory;
  } catch (const std::exception& e) {
    last_error() = std::string("Internal error: ") + e.what();
    return kInternal;
  }
}

}  // namespace ms::wasm
