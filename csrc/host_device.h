// HYCON_HOST_DEVICE marks functions that nvcc compiles for the host and the device and that a
// plain C++ compiler sees as ordinary inline functions.
#pragma once

#ifdef __CUDACC__
#define HYCON_HOST_DEVICE __host__ __device__
#else
#define HYCON_HOST_DEVICE
#endif
