// The torch headers of the C++ sources, parsed once: setup.py and CMakeLists.txt compile this file
// into a precompiled header that every C++ file of the extension includes first. Parsing these
// headers is most of the work of compiling a file of the extension. The sources still include
// what they use, so they compile without it too (as the CUDA files do).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>
