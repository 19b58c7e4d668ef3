// wasm_abi.h — the calling convention between the WebAssembly module
// (native/wasm/*.cc) and its TypeScript loader (lib/wasm/abi.ts).
//
// Why a slot array: a call takes ~30 scalars and pointers; passing them as
// one array of doubles in the module's memory keeps the exported signatures
// short and the layout obvious (a pointer below 4 GiB and every count here
// is an exact double). lib/wasm/abi.ts holds the same slot numbers; the
// module exports ms_wasm_abi() (kAbiVersion, kLossSlots) and the loader
// refuses a module whose numbers differ from its own.
#pragma once

#include <cstdint>
#include <string>

namespace ms::wasm {

constexpr int kAbiVersion = 1;

// ms_wasm_loss(args): args[k] for the slots below. Pointers are byte offsets
// in the module's memory (0 = none). Slots marked "out" are written.
enum LossSlot : int {
  kX = 0,          // N×d fp32 embeddings
  kW,              // C_rows×d fp32 centres (or 0 with kWBf16)
  kWBf16,          // C_rows×d bf16 centres (uint16), or 0
  kLabels,         // N int32
  kRowMargins,     // N fp32 (elastic kinds) or 0
  kClassIndex,     // C int32 (class j of the problem = row class_index[j]) or 0
  kN,
  kC,              // classes of the problem (class_index's length when given)
  kD,
  kKind,           // ms::MarginKind code
  kScale,
  kM1,
  kM2,
  kM3,
  kFallback,       // 0 / 1
  kGradFilter,
  kWeightsBf16,    // 0 / 1: round the centres to bf16 as they are read
  kWorkspaceBytes,
  kWithGrad,       // 0: forward only
  kPerSample,      // N fp32 (written)
  kTargetCos,      // N fp32 (written)
  kGradX,          // N×d fp32 (written, with kWithGrad)
  kGradW,          // C×d fp32 (written, with kWithGrad and no SGD)
  kSgdOn,          // 1: fused SGD update of the centres in place instead of kGradW
  kSgdLr,
  kSgdMomentum,
  kSgdWeightDecay,
  kSgdBuf,         // C_rows×d fp32 momentum buffer, or 0 (momentum 0)
  kSgdRoundSeed,   // bf16 centres: the stochastic rounding's (seed, step)
  kSgdRoundStep,
  kRowMax,         // N fp32 (written) or 0: the per-row online-LSE state and target
  kRowSumExp,      //   logit (LossOutputs::row_*), which MarginHead reads for its
  kRowSumExpOther, //   accuracy
  kRowTarget,
  kOutLoss,        // out: mean loss
  kOutValidRows,   // out
  kOutSkipped,     // out: blocks skipped by gradient filtering
  kOutTotal,       // out: class blocks
  kLossSlots
};

// ms_wasm_topk(args): the top-k classes by cosine (MarginHead.predict).
enum TopkSlot : int {
  kTopkX = 0,   // N×d fp32
  kTopkW,       // C×d fp32, or 0 with kTopkWBf16
  kTopkWBf16,   // C×d bf16, or 0
  kTopkN,
  kTopkC,
  kTopkD,
  kTopkK,
  kTopkClasses, // N×k int32 (written)
  kTopkScores,  // N×k fp32 (written)
  kTopkSlots
};

// Status codes of the calls; the message is read with ms_wasm_error().
enum Status : int {
  kOk = 0,
  kInputError = 1,  // the caller can fix it ("Expected … for … but received …")
  kOutOfMemory = 2, // an allocation inside the module failed (the 4 GiB address space)
  kInternal = 3,
};

// The message of the last failed call on this module instance.
std::string& last_error();

// Runs fn, turning every C++ exception into a status and last_error().
// `what` names what the call was allocating for (in the out-of-memory message).
template <class F>
int run_caught(F&& fn, const std::string& what);

}  // namespace ms::wasm

#include "run_caught.inl"
