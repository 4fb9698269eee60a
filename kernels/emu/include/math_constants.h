// Stand-in for CUDA's math_constants.h in the CPU emulator (../emu.h).
#pragma once
#include <cmath>

#define CUDART_INF_F INFINITY
