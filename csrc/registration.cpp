// fused_dsconv._C: defines the native op family torch.ops.fused_dsconv_native.* (CUDA kernels are
// registered in csrc/native_cuda.cpp) and is an importable (empty) Python module, so
// `import fused_dsconv._C` loads the library and registers the ops.
#include <Python.h>
#include <torch/library.h>

#include "binding/schemas.h"

TORCH_LIBRARY(fused_dsconv_native, m) {
  DSC_SCHEMAS(m);
  // (csrc/native_cuda.cpp adds kernel_binary_version(int device) -> int: the SASS/PTX version the fused
  // kernels run as on that device, -1 where the build has no image for its architecture.)
}

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define DSC_PYINIT_(name) PyInit_##name
#define DSC_PYINIT(name) DSC_PYINIT_(name)

extern "C" PyMODINIT_FUNC DSC_PYINIT(TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fused_dsconv native CUDA ops", -1, nullptr};
  return PyModule_Create(&def);
}
