// The empty Python module ferret_kernels._C: importing it loads this library, whose static
// initializers define the ops (ops_schema.cpp) and register their CPU / CUDA kernels with the
// dispatcher. Nothing else here: a C++ program can dlopen the same library and call the ops.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "ferret_kernels native kernels (torch.ops.ferret.*)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
