// The empty Python module ferret_kernels._C: importing it loads this library, whose static
// initializers register the backend kernels with the dispatcher (TORCH_LIBRARY_IMPL).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "ferret_kernels native kernels (registered as torch.ops.ferret._cpu_* etc.)", -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
