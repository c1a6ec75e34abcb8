/* Handle and TimerHandle: what call_soon and call_at return, with asyncio's
 * methods. Running one enters its context and calls the callback directly
 * with vectorcall; no Python-level frame of ours sits in between. */
#include "core.h"

PyTypeObject *Handle_Type;
PyTypeObject *TimerHandle_Type;

Handle *handle_new(PyTypeObject *tp, LoopCore *lp, PyObject *cb, PyObject *args,
                   PyObject *context, double when)
{
    Handle *h = PyObject_GC_New(Handle, tp);
    if (h == NULL)
        return NULL;
    Py_INCREF(cb);
    h->callback = cb;
    Py_INCREF(args);
    h->args = args;
    if (context == NULL || context == Py_None) {
        h->context = PyContext_CopyCurrent();
        if (h->context == NULL) {
            h->args = NULL;
            h->callback = NULL;
            h->context = NULL;
            h->loop = NULL;
            h->source_traceback = h->repr_cache = h->weakreflist = NULL;
            Py_DECREF(cb);
            Py_DECREF(args);
            Py_DECREF(h);
            return NULL;
        }
    } else {
        Py_INCREF(context);
        h->context = context;
    }
    Py_XINCREF(lp);
    h->loop = lp;
    h->source_traceback = NULL;
    h->repr_cache = NULL;
    h->weakreflist = NULL;
    h->when = when;
    h->cancelled = 0;
    h->scheduled = 0;
    h->is_timer = (tp == TimerHandle_Type);
    if (lp != NULL && lp->debug && HOOKS.extract_stack != NULL) {
        h->source_traceback = PyObject_CallNoArgs(HOOKS.extract_stack);
        if (h->source_traceback == NULL)
            PyErr_Clear();
    }
    PyObject_GC_Track(h);
    return h;
}

PyObject *take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

int report_callback_error(LoopCore *lp, const char *what, PyObject *obj_key, PyObject *obj)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *value = take_exception();
    PyObject *ctx = PyDict_New();
    PyObject *msg = NULL;
    if (ctx == NULL)
        goto fail;
    if (obj != NULL && Py_TYPE(obj) != NULL &&
        (Py_TYPE(obj) == Handle_Type || Py_TYPE(obj) == TimerHandle_Type) &&
        HOOKS.format_handle != NULL) {
        PyObject *s = PyObject_CallOneArg(HOOKS.format_handle, obj);
        if (s == NULL)
            PyErr_Clear();
        msg = s ? PyUnicode_FromFormat("%s %U", what, s) : PyUnicode_FromString(what);
        Py_XDECREF(s);
    } else {
        msg = PyUnicode_FromString(what);
    }
    if (msg == NULL || PyDict_SetItemString(ctx, "message", msg) < 0 ||
        PyDict_SetItemString(ctx, "exception", value ? value : Py_None) < 0)
        goto fail;
    if (obj_key != NULL && obj != NULL && PyDict_SetItem(ctx, obj_key, obj) < 0)
        goto fail;
    if (obj != NULL && (Py_TYPE(obj) == Handle_Type || Py_TYPE(obj) == TimerHandle_Type)) {
        Handle *h = (Handle *)obj;
        if (h->source_traceback != NULL &&
            PyDict_SetItemString(ctx, "source_traceback", h->source_traceback) < 0)
            goto fail;
    }
    Py_DECREF(msg);
    Py_XDECREF(value);
    int r = loop_call_exception_handler(lp, ctx);
    Py_DECREF(ctx);
    return r;
fail:
    Py_XDECREF(msg);
    Py_XDECREF(ctx);
    Py_XDECREF(value);
    PyErr_WriteUnraisable(obj);
    return 0;
}

int handle_run(Handle *h)
{
    PyObject *cb = h->callback, *args = h->args;
    if (cb == NULL)
        return 0;
    Py_INCREF(cb);
    Py_INCREF(args);
    PyObject *res;
    if (PyContext_CheckExact(h->context)) {
        if (PyContext_Enter(h->context) < 0) {
            Py_DECREF(cb);
            Py_DECREF(args);
            return report_callback_error(h->loop, "Exception in callback", NULL, (PyObject *)h);
        }
        res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), NULL);
        PyContext_Exit(h->context);
    } else {
        /* Not a contextvars.Context: do what asyncio's Handle does with any
         * object, context.run(callback, *args), and fail as it fails. */
        PyObject *run = PyObject_GetAttrString(h->context, "run");
        PyObject *full = run ? PyTuple_New(PyTuple_GET_SIZE(args) + 1) : NULL;
        if (full != NULL) {
            Py_INCREF(cb);
            PyTuple_SET_ITEM(full, 0, cb);
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); i++) {
                Py_INCREF(PyTuple_GET_ITEM(args, i));
                PyTuple_SET_ITEM(full, i + 1, PyTuple_GET_ITEM(args, i));
            }
        }
        res = full ? PyObject_Call(run, full, NULL) : NULL;
        Py_XDECREF(full);
        Py_XDECREF(run);
    }
    Py_DECREF(cb);
    Py_DECREF(args);
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }
    static PyObject *key = NULL;
    if (key == NULL)
        key = PyUnicode_InternFromString("handle");
    return report_callback_error(h->loop, "Exception in callback", key, (PyObject *)h);
}

static int handle_traverse(Handle *h, visitproc visit, void *arg)
{
    Py_VISIT(h->callback);
    Py_VISIT(h->args);
    Py_VISIT(h->context);
    Py_VISIT(h->loop);
    Py_VISIT(h->source_traceback);
    Py_VISIT(h->repr_cache);
    Py_VISIT(Py_TYPE(h));
    return 0;
}

static int handle_clear(Handle *h)
{
    Py_CLEAR(h->callback);
    Py_CLEAR(h->args);
    Py_CLEAR(h->context);
    Py_CLEAR(h->loop);
    Py_CLEAR(h->source_traceback);
    Py_CLEAR(h->repr_cache);
    return 0;
}

static void handle_dealloc(Handle *h)
{
    PyTypeObject *tp = Py_TYPE(h);
    PyObject_GC_UnTrack(h);
    if (h->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)h);
    handle_clear(h);
    PyObject_GC_Del(h);
    Py_DECREF(tp);
}

static PyObject *handle_cancel(Handle *h, PyObject *unused)
{
    if (h->cancelled)
        Py_RETURN_NONE;
    h->cancelled = 1;
    if (h->loop != NULL && h->loop->debug && h->repr_cache == NULL && HOOKS.format_handle) {
        /* Keep a repr of the cancelled callback for debugging, as asyncio does. */
        h->repr_cache = PyObject_CallOneArg(HOOKS.format_handle, (PyObject *)h);
        if (h->repr_cache == NULL)
            PyErr_Clear();
    }
    if (h->is_timer && h->scheduled && h->loop != NULL)
        h->loop->hcancelled++;
    /* Drop references early: a cancelled callback may hold a large graph. */
    if (h->loop == NULL || !h->loop->debug) {
        Py_CLEAR(h->callback);
        Py_CLEAR(h->args);
        h->args = PyTuple_New(0);
    }
    Py_RETURN_NONE;
}

static PyObject *handle_cancelled(Handle *h, PyObject *unused)
{
    return PyBool_FromLong(h->cancelled);
}

static PyObject *handle_get_context(Handle *h, PyObject *unused)
{
    Py_INCREF(h->context);
    return h->context;
}

static PyObject *handle_run_py(Handle *h, PyObject *unused)
{
    if (handle_run(h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *handle_when(Handle *h, PyObject *unused)
{
    return PyFloat_FromDouble(h->when);
}

static PyObject *handle_repr(Handle *h)
{
    if (HOOKS.format_handle == NULL)
        return PyUnicode_FromFormat("<%s>", Py_TYPE(h)->tp_name);
    PyObject *s = PyObject_CallOneArg(HOOKS.format_handle, (PyObject *)h);
    if (s == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("<%s %U>", _PyType_Name(Py_TYPE(h)), s);
    Py_DECREF(s);
    return r;
}

static PyObject *get_cancelled(Handle *h, void *c) { return PyBool_FromLong(h->cancelled); }
static PyObject *get_scheduled(Handle *h, void *c) { return PyBool_FromLong(h->scheduled); }
static PyObject *get_when(Handle *h, void *c) { return PyFloat_FromDouble(h->when); }
static PyObject *get_obj(Handle *h, void *c)
{
    PyObject *o = *(PyObject **)((char *)h + (Py_ssize_t)c);
    if (o == NULL)
        o = Py_None;
    Py_INCREF(o);
    return o;
}

static PyObject *timer_richcompare(PyObject *a, PyObject *b, int op)
{
    if (!PyObject_TypeCheck(b, TimerHandle_Type) || !PyObject_TypeCheck(a, TimerHandle_Type))
        Py_RETURN_NOTIMPLEMENTED;
    Handle *x = (Handle *)a, *y = (Handle *)b;
    if (op == Py_EQ || op == Py_NE) {
        int eq = a == b;
        if (!eq && x->when == y->when && x->cancelled == y->cancelled &&
            x->callback == y->callback) {
            eq = PyObject_RichCompareBool(x->args, y->args, Py_EQ);
            if (eq < 0)
                return NULL;
        }
        return PyBool_FromLong(op == Py_EQ ? eq : !eq);
    }
    Py_RETURN_RICHCOMPARE(x->when, y->when, op);
}

static Py_hash_t timer_hash(Handle *h)
{
    Py_hash_t v = _Py_HashDouble((PyObject *)h, h->when);
    return v == -1 ? -2 : v;
}

static PyMethodDef handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS, NULL},
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS, NULL},
    {"get_context", (PyCFunction)handle_get_context, METH_NOARGS, NULL},
    {"_run", (PyCFunction)handle_run_py, METH_NOARGS, NULL},
    {NULL}
};

static PyMethodDef timer_methods[] = {
    {"when", (PyCFunction)handle_when, METH_NOARGS, NULL},
    {NULL}
};

static PyGetSetDef handle_getset[] = {
    {"_cancelled", (getter)get_cancelled, NULL, NULL, NULL},
    {"_scheduled", (getter)get_scheduled, NULL, NULL, NULL},
    {"_when", (getter)get_when, NULL, NULL, NULL},
    {"_callback", (getter)get_obj, NULL, NULL, (void *)offsetof(Handle, callback)},
    {"_args", (getter)get_obj, NULL, NULL, (void *)offsetof(Handle, args)},
    {"_context", (getter)get_obj, NULL, NULL, (void *)offsetof(Handle, context)},
    {"_loop", (getter)get_obj, NULL, NULL, (void *)offsetof(Handle, loop)},
    {"_source_traceback", (getter)get_obj, NULL, NULL, (void *)offsetof(Handle, source_traceback)},
    {"_repr", (getter)get_obj, NULL, NULL, (void *)offsetof(Handle, repr_cache)},
    {NULL}
};

static PyMemberDef handle_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Handle, weakreflist), READONLY},
    {NULL}
};

static PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getset},
    {Py_tp_members, handle_members},
    {Py_tp_repr, handle_repr},
    {0, NULL}
};

static PyType_Spec handle_spec = {
    "goloop._core.Handle", sizeof(Handle), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    handle_slots
};

static PyType_Slot timer_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, timer_methods},
    {Py_tp_richcompare, timer_richcompare},
    {Py_tp_hash, timer_hash},
    {0, NULL}
};

static PyType_Spec timer_spec = {
    "goloop._core.TimerHandle", sizeof(Handle), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    timer_slots
};

int init_handle_types(PyObject *m)
{
    Handle_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &handle_spec, NULL);
    if (Handle_Type == NULL)
        return -1;
    TimerHandle_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &timer_spec, (PyObject *)Handle_Type);
    if (TimerHandle_Type == NULL)
        return -1;
    if (PyModule_AddObjectRef(m, "Handle", (PyObject *)Handle_Type) < 0 ||
        PyModule_AddObjectRef(m, "TimerHandle", (PyObject *)TimerHandle_Type) < 0)
        return -1;
    return 0;
}
