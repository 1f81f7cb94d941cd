// The CPU kernels built for AVX2 + FMA, selected at run time (never -march=native).
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi2"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,bmi2")
#endif
#define FERRET_ISA avx2
#define FERRET_TABLE kAvx2
#include "cpu/kernel_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
