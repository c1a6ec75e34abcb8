/* Write flow control, shared by the transports that send through Go
 * (streams in transport.c, datagrams in dgram.c): asyncio's
 * _FlowControlMixin, its limits and its calls into the protocol. */
#include "core.h"

/* A limit as a C number, saturated: asyncio compares Python numbers, so a
 * float limit works and a huge one (2**70) means "never". */
static int limit_value(PyObject *v, Py_ssize_t *out)
{
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    *out = d >= (double)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (d <= 0 ? 0 : (Py_ssize_t)d);
    return 0;
}

/* asyncio's _set_write_buffer_limits(high=None, low=None), on Python
 * objects as asyncio does it (floats and huge ints are accepted and given
 * back as they came): new references in *h and *l, and their C values. */
int flow_parse_limits(PyObject *args, PyObject *kw, PyObject **h_out, PyObject **l_out,
                      Py_ssize_t *hv, Py_ssize_t *lv)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high = Py_None, *low = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:set_write_buffer_limits", kwlist, &high, &low))
        return -1;
    return flow_limits_from(high, low, FLOW_DEFAULT_HIGH, h_out, l_out, hv, lv);
}

/* The same for limits already taken apart (None or NULL: not given), with
 * default_high where asyncio has its own (the TLS protocol's differ). */
int flow_limits_from(PyObject *high, PyObject *low, Py_ssize_t default_high,
                     PyObject **h_out, PyObject **l_out, Py_ssize_t *hv, Py_ssize_t *lv)
{
    if (high == NULL)
        high = Py_None;
    if (low == NULL)
        low = Py_None;
    PyObject *h = NULL, *l = NULL, *four = PyLong_FromLong(4);
    if (four == NULL)
        return -1;
    if (high == Py_None)
        h = low == Py_None ? PyLong_FromSsize_t(default_high) : PyNumber_Multiply(four, low);
    else
        h = (Py_INCREF(high), high);
    if (h != NULL)
        l = low == Py_None ? PyNumber_FloorDivide(h, four) : (Py_INCREF(low), low);
    Py_DECREF(four);
    if (h == NULL || l == NULL)
        goto fail;
    PyObject *zero = PyLong_FromLong(0);
    int ok = zero ? PyObject_RichCompareBool(h, l, Py_GE) : -1;
    if (ok == 1)
        ok = PyObject_RichCompareBool(l, zero, Py_GE);
    Py_XDECREF(zero);
    if (ok < 0)
        goto fail;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "high (%R) must be >= low (%R) must be >= 0", h, l);
        goto fail;
    }
    if (limit_value(h, hv) < 0 || limit_value(l, lv) < 0)
        goto fail;
    *h_out = h;
    *l_out = l;
    return 0;
fail:
    Py_XDECREF(h);
    Py_XDECREF(l);
    return -1;
}

/* get_write_buffer_limits(): (low, high) as the program gave them, or the
 * defaults. */
PyObject *flow_limits(PyObject *high_obj, PyObject *low_obj, Py_ssize_t high, Py_ssize_t low)
{
    if (high_obj != NULL)
        return PyTuple_Pack(2, low_obj, high_obj);
    return Py_BuildValue("(nn)", low, high);
}

/* protocol.pause_writing()/resume_writing(). A failure goes to the
 * exception handler, as asyncio's _FlowControlMixin does; -1 only for
 * SystemExit and KeyboardInterrupt, left set for the caller. */
int flow_call(LoopCore *lp, PyObject *transport, PyObject *protocol, const char *method)
{
    PyObject *r = PyObject_CallMethod(protocol, method, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *value = take_exception();
    PyObject *msg = PyUnicode_FromFormat("protocol.%s() failed", method);
    PyObject *ctx = msg ? Py_BuildValue("{s:O,s:O,s:O,s:O}", "message", msg,
                                        "exception", value ? value : Py_None, "transport", transport,
                                        "protocol", protocol) : NULL;
    Py_XDECREF(msg);
    Py_XDECREF(value);
    int rc = 0;
    if (ctx != NULL) {
        rc = loop_call_exception_handler(lp, ctx);
        Py_DECREF(ctx);
    } else {
        PyErr_WriteUnraisable(transport);
    }
    return rc;
}
