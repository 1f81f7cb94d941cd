// The CPU kernels built for AVX-512 (F, BW, DQ, VL), selected at run time (never -march=native).
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2,prefer-vector-width=512")
#endif
#define FERRET_ISA avx512
#define FERRET_TABLE kAvx512
#include "cpu/kernel_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
