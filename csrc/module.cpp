// The Python module quantnoise_kernels._C. Importing it loads this library, whose static
// initialisers register the ops with the dispatcher (ops.cpp, cpu/, cuda/). It is built with the
// limited C API, no pybind11, so one wheel serves every CPython >= 3.9. Its only functions report
// the CPU path the kernels take (quantnoise/cpu_features.h); they are not ops, so they need no
// CUDA or fake kernel.
#include <Python.h>
#include <c10/util/Exception.h>

#include <string>

#include "quantnoise/cpu_features.h"

namespace {

// A ValueError carrying a C++ error's message (no C++ backtrace).
PyObject* value_error(const c10::Error& e) {
  PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  return nullptr;
}

// cpu_isa() -> str: "avx512", "avx2" or "portable", the path under the current QUANTNOISE_CPU_ISA.
PyObject* py_cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(quantnoise::cpu_isa_name(quantnoise::cpu_isa()));
  } catch (const c10::Error& e) {
    return value_error(e);
  }
}

// cpu_isa_missing(isa: str) -> str: the features this CPU lacks for that path, "" if none.
PyObject* py_cpu_isa_missing(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  try {
    const std::string missing = quantnoise::cpu_isa_missing(quantnoise::parse_cpu_isa(name, "isa"));
    return PyUnicode_FromString(missing.c_str());
  } catch (const c10::Error& e) {
    return value_error(e);
  }
}

PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS,
     "cpu_isa() -> str: the CPU path the kernels take now: 'avx512', 'avx2' or 'portable' (the widest the CPU "
     "runs, capped by the environment variable QUANTNOISE_CPU_ISA)."},
    {"cpu_isa_missing", py_cpu_isa_missing, METH_VARARGS,
     "cpu_isa_missing(isa: str) -> str: the CPU features this machine lacks for path `isa`, '' if it has them."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
