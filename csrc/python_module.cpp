// Makes the library importable as hycon_ext._C; importing it runs the op registrations.
// Python-only: the LibTorch (CMake) build leaves this file out.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // name
      nullptr,  // doc
      -1,       // no per-module state
      nullptr,  // no methods: the ops live in torch.ops.hycon_ext
  };
  return PyModule_Create(&module_def);
}
}
