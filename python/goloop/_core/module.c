/* Module setup and the Go library's lifecycle. libgoloop.so is loaded on the
 * first loop, not at import: a process that imports goloop and then forks
 * must leave healthy children, and a Go runtime cannot survive a fork. */
#include "core.h"
#include <dlfcn.h>
#include <unistd.h>
#include <string.h>
#include <pthread.h>
#include <malloc.h>
#include <stdlib.h>

gl_api GL;
hooks_t HOOKS;
static void *gl_dl = NULL;
static pid_t gl_pid = 0;
static PyObject *lib_path = NULL;
static volatile int gl_in_child = 0;

/* Runs in the child of every fork (the design's at-fork hook, at C level so
 * it also covers forks made outside Python): once Go has started, a child
 * must never call into it. */
static void gl_atfork_child(void)
{
    if (gl_dl != NULL)
        gl_in_child = 1;
}

int gl_forked(void)
{
    return gl_in_child;
}

int gl_check_fork(void)
{
    if (gl_in_child) {
        PyErr_Format(PyExc_RuntimeError,
            "goloop: this process was forked from process %d after goloop had started "
            "the Go runtime there, and a Go runtime does not survive fork(). Run goloop "
            "loops only in the parent, fork before the first goloop loop is created, or "
            "use multiprocessing's 'spawn' or 'forkserver' start method.", (int)gl_pid);
        return -1;
    }
    return 0;
}

/* Received data lives in bytes objects until Go reports the echo or reply
 * sent, one loop iteration later, so a server holds more large buffers at
 * once than a loop that writes synchronously. With glibc's defaults each
 * iteration then gives heap pages back to the kernel (trim) and faults them
 * in again, and 128 KiB+ chunks are fresh mmaps: that doubled the kernel
 * time per request for 100 KiB messages (docs/benchmarks.md). So the first
 * loop raises the trim and mmap thresholds, unless the user tuned malloc
 * already or sets GOLOOP_MALLOC_TUNING=0. The trim threshold is 32 MiB: at
 * 8 MiB, 100 connections echoing 100 KiB (10 MiB in flight) still had the
 * heap's top given back by brk and faulted in again, a third of the
 * server's time (bench/ab.py: 65 -> 46 us per request). glibc's own dynamic
 * thresholds go as high (mmap 32 MiB, trim twice that) once a program has
 * freed large blocks; fixed here, they start there. */
static void tune_malloc(void)
{
    const char *off = getenv("GOLOOP_MALLOC_TUNING");
    if ((off != NULL && strcmp(off, "0") == 0) || getenv("MALLOC_TRIM_THRESHOLD_") ||
        getenv("MALLOC_MMAP_THRESHOLD_") || getenv("GLIBC_TUNABLES"))
        return;
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
}

int gl_ensure_loaded(void)
{
    if (gl_dl != NULL)
        return gl_check_fork();
    if (lib_path == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "goloop: the Go library path is not set");
        return -1;
    }
    const char *path = PyUnicode_AsUTF8(lib_path);
    if (path == NULL)
        return -1;
    void *dl;
    Py_BEGIN_ALLOW_THREADS
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    Py_END_ALLOW_THREADS
    if (dl == NULL) {
        PyErr_Format(PyExc_ImportError, "goloop: cannot load %s: %s", path, dlerror());
        return -1;
    }
#define SYM(field, name) \
    if ((*(void **)&GL.field = dlsym(dl, name)) == NULL) { \
        PyErr_Format(PyExc_ImportError, "goloop: %s lacks %s", path, name); \
        return -1; \
    }
    SYM(new_, "goloop_new");
    SYM(poll, "goloop_poll");
    SYM(wake, "goloop_wake");
    SYM(wake_fd, "goloop_wake_fd");
    SYM(close, "goloop_close");
    SYM(backend, "goloop_backend_name");
    SYM(call, "goloop_call");
    SYM(result, "goloop_result");
    SYM(cancel, "goloop_cancel");
#undef SYM
    gl_dl = dl;
    gl_pid = getpid();
    tune_malloc();
    return 0;
}

static PyObject *set_library(PyObject *m, PyObject *path)
{
    if (!PyUnicode_Check(path))
        return PyErr_Format(PyExc_TypeError, "path must be str");
    Py_INCREF(path);
    Py_XSETREF(lib_path, path);
    Py_RETURN_NONE;
}

static PyObject *runtime_started(PyObject *m, PyObject *unused)
{
    return PyBool_FromLong(gl_dl != NULL);
}

static PyObject *after_fork_child(PyObject *m, PyObject *unused)
{
    return loop_after_fork_child();
}

static PyObject *forked(PyObject *m, PyObject *unused)
{
    return PyBool_FromLong(gl_forked());
}

static PyObject *runtime_pid(PyObject *m, PyObject *unused)
{
    return PyLong_FromLong(gl_dl ? (long)gl_pid : 0);
}

static PyObject *set_hooks(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"format_handle", "fatal_error", "slow_callback", "extract_stack", "check_call", NULL};
    PyObject *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOOOO", kwlist, &a, &b, &c, &d, &e))
        return NULL;
    Py_XINCREF(a); Py_XSETREF(HOOKS.format_handle, a);
    Py_XINCREF(b); Py_XSETREF(HOOKS.fatal_error, b);
    Py_XINCREF(c); Py_XSETREF(HOOKS.slow_callback, c);
    Py_XINCREF(d); Py_XSETREF(HOOKS.extract_stack, d);
    Py_XINCREF(e); Py_XSETREF(HOOKS.check_call, e);
    Py_RETURN_NONE;
}

/* getenv(name) -> str or None: the process environment as os.environ
 * keeps it (its every change goes through putenv/unsetenv), read without
 * os.environ's Python-level mapping: settings read once per connection
 * (GOLOOP_TLS, GOLOOP_KTLS) cost a microsecond or two each that way. */
static PyObject *getenv_(PyObject *m, PyObject *name)
{
    const char *k = PyUnicode_AsUTF8(name);
    if (k == NULL)
        return NULL;
    const char *v = getenv(k);
    if (v == NULL)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(v);
}

static PyMethodDef module_methods[] = {
    {"getenv", getenv_, METH_O, NULL},
    {"_set_library", set_library, METH_O, NULL},
    {"_runtime_started", runtime_started, METH_NOARGS, NULL},
    {"_runtime_pid", runtime_pid, METH_NOARGS, NULL},
    {"_forked", forked, METH_NOARGS, NULL},
    {"_after_fork_child", after_fork_child, METH_NOARGS, NULL},
    {"_sockaddr_fast", (PyCFunction)(void (*)(void))sockaddr_fast, METH_FASTCALL, NULL},
    {"_sockops_setup", sockops_setup, METH_VARARGS, NULL},
    {"_sockobj_setup", sockobj_setup, METH_VARARGS, NULL},
    {"_sock_sendfile_go", (PyCFunction)(void (*)(void))sock_sendfile_go, METH_FASTCALL, NULL},
    {"_set_hooks", (PyCFunction)(void (*)(void))set_hooks, METH_VARARGS | METH_KEYWORDS, NULL},
    {NULL}
};

static int module_exec(PyObject *m)
{
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, gl_atfork_child);
        atfork_done = 1;
    }
    if (init_handle_types(m) < 0 || init_loop_type(m) < 0 || init_transport_type(m) < 0 ||
        init_watch_types(m) < 0 || init_calls(m) < 0 || init_dgram_type(m) < 0 ||
        init_sockops(m) < 0 || init_tls(m) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "goloop._core", NULL, 0, module_methods, module_slots,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&module_def);
}
