// The portable build of the CPU kernels: baseline instruction set of the target (SSE2 on
// x86-64, NEON on aarch64). Always present; the fallback when nothing better is supported.
#define FERRET_ISA generic
#define FERRET_TABLE kGeneric
#include "cpu/kernel_impl.h"
