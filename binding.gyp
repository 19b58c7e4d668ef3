{
  "targets": [
    {
      "target_name": "margin_softmax",
      "sources": [
        "native/addon.cc",
        "native/napi/napi_util.cc",
        "native/napi/async_work.cc",
        "native/napi/loss.cc",
        "native/napi/topk.cc",
        "native/napi/arrays.cc",
        "native/napi/device_info.cc",
        "native/napi/hooks.cc",
        "native/napi/collectives.cc",
        "native/napi/margin_kinds.cc",
        "native/cpu/fused_loss_cpu.cc",
        "native/cpu/sgd_cpu.cc",
        "native/cpu/gemm_ceiling.cc",
        "native/cpu/topk_cpu.cc",
        "native/cpu/thread_pool.cc",
        "native/cpu/simd_dispatch.cc",
        "native/cpu/bf16_gemm.cc",
        "native/cpu/peak_cpu.cc",
        "native/cuda/cuda_stub.cc",
        "native/comm/mpi_stub.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "MS_MPI_NODE_GYP"],
      "cflags!": ["-fno-exceptions", "-O2"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-O2"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=fast", "-fexceptions", "-Wno-psabi", "-fno-strict-aliasing"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "OTHER_CPLUSPLUSFLAGS": ["-std=c++17", "-O3"]
      }
    }
  ]
}
