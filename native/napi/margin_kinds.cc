// margin_kinds.cc — _marginKinds(): margin_math.h's MS_MARGIN_KINDS table
// as [{ name, code, angular, rowMargins, slots: { m1, m2, m3 }, typical: { m1, m2, m3 } }]
// (slots: the TypeScript parameter each MarginParams field carries, "" where
// unused; typical: the typical parameters in those fields). Internal: the test
// that lib/margins.ts's table agrees with the native one reads it.
#include "../margin_math.h"
#include "exports.h"

namespace ms::napi {
namespace {

struct Slots {
  const char* m1;
  const char* m2;
  const char* m3;
};

Napi::Object slot_object(Napi::Env env, Napi::Value m1, Napi::Value m2, Napi::Value m3) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("m1", m1);
  o.Set("m2", m2);
  o.Set("m3", m3);
  return o;
}

Napi::Object kind_row(Napi::Env env, const char* name, MarginKind kind, bool angular, bool row_margin, Slots slots,
                      MarginParams typical) {
  Napi::Object row = Napi::Object::New(env);
  row.Set("name", name);
  row.Set("code", (int32_t)kind);
  row.Set("angular", angular);
  row.Set("rowMargins", row_margin);
  row.Set("slots", slot_object(env, Napi::String::New(env, slots.m1), Napi::String::New(env, slots.m2),
                               Napi::String::New(env, slots.m3)));
  row.Set("typical", slot_object(env, Napi::Number::New(env, typical.m1), Napi::Number::New(env, typical.m2),
                                 Napi::Number::New(env, typical.m3)));
  return row;
}

}  // namespace

Napi::Value MarginKinds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array rows = Napi::Array::New(env);
  uint32_t i = 0;
#define MS_KIND_ROW(E, code, js, angular, row_margin, p1, p2, p3, m1, m2, m3) \
  rows.Set(i++, kind_row(env, js, MarginKind::E, angular, row_margin, {p1, p2, p3}, {MarginKind::E, 0.0f, m1, m2, m3, true}));
  MS_MARGIN_KINDS(MS_KIND_ROW)
#undef MS_KIND_ROW
  return rows;
}

}  // namespace ms::napi
