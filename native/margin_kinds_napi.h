// margin_kinds_napi.h — registers _marginKinds() (margin_kinds_napi.cc).
#pragma once

#include <napi.h>

namespace ms {
void register_margin_kinds(Napi::Env env, Napi::Object exports);
}  // namespace ms
