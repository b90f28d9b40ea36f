// Portability macros shared by the CPU, CUDA and emulated builds of every kernel.
#pragma once

// Functions that hold an algorithm are compiled for the host, the device, and the
// emulation harness alike (DESIGN §5): one definition, three targets.
#if defined(__CUDACC__)
#define QN_HOST_DEVICE __host__ __device__
#else
#define QN_HOST_DEVICE
#endif

#define QN_INLINE QN_HOST_DEVICE inline
