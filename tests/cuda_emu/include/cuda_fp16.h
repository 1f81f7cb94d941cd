// stand-in for the CUDA header in the host emulation (tests/cuda_emu)
#pragma once
#include "cuda_emu.h"
