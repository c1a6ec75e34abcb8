/* Go calls (DNS lookups and the like) and getaddrinfo's fast path.
 *
 * A Go call is a method of the Go core run in a goroutine; its result
 * arrives as an EvPosted completion with the call's token. The loop keeps
 * token -> future in `calls` and settles the future here, in C, so a
 * lookup costs no Python frame between the request and the awaiting task.
 * The token's low bits say how to read the result:
 *
 *   CALL_RAW       the method's bytes (getnameinfo, query: rare, JSON)
 *   CALL_ADDRINFO  getaddrinfo's binary reply, turned into the list of
 *                  5-tuples socket.getaddrinfo returns
 *
 * A failed call's bytes are Go's error text; the package's error hook
 * (installed by _dns_setup) turns it into the exception to raise. */
#include "core.h"
#include <arpa/inet.h>
#include <string.h>

#define CALL_RAW 0u
#define CALL_ADDRINFO 1u
#define CALL_KIND_BITS 1u

/* Installed once by goloop._dns (_dns_setup). */
static PyObject *valid_args;   /* set of (type(port), port, family, type, proto, flags) */
static PyObject *family_enum;  /* int -> socket.AddressFamily member */
static PyObject *kind_enum;    /* int -> socket.SocketKind member */
static PyObject *error_hook;   /* (kind, text) -> exception instance */
static PyObject *str_done, *str_set_result, *str_set_exception;

static PyObject *take_result(LoopCore *lp, uint64_t token, int known_len);
static PyObject *outcome_of(unsigned kind, int ok, PyObject *data, int *is_result);
static PyObject *settle_later_fn;

static unsigned call_kind(uint64_t token)
{
    return (unsigned)(token >> 3) & ((1u << CALL_KIND_BITS) - 1);
}

/* One goloop_call of method on req under a new token of this kind: 0
 * started (a completion follows), 1 answered, 2 failed at once (*data: the
 * answer or Go's error text), or -1 with an exception set. */
static int call_go(LoopCore *lp, const char *method, const char *req, Py_ssize_t len, unsigned kind,
                   uint64_t *token, PyObject **data)
{
    *data = NULL;
    *token = ((((++lp->next_call) << CALL_KIND_BITS) | kind) << 3) | TAG_CALL;
    char quick[2048];
    int qlen = 0;
    int state = go_call(lp, *token, method, req, (int)len, quick, (int)sizeof quick, &qlen);
    if (state == -3)   /* Go cannot be entered: the exception says why */
        return -1;
    if (state < 0) {
        PyErr_Format(PyExc_ValueError, "goloop: no Go method named %s", method);
        return -1;
    }
    if (state != 0) {
        *data = qlen <= (int)sizeof quick ? PyBytes_FromStringAndSize(quick, qlen)
                                          : take_result(lp, *token, qlen);
        if (*data == NULL)
            return -1;
    }
    return state;
}

/* Start method on req; returns (token, future) or NULL. */
static PyObject *start_call(LoopCore *lp, const char *method, const char *req, Py_ssize_t len,
                            unsigned kind)
{
    if (loop_check_alive(lp) < 0)
        return NULL;
    PyObject *fut = PyObject_CallMethod((PyObject *)lp, "create_future", NULL);
    if (fut == NULL)
        return NULL;
    uint64_t token;
    PyObject *data;
    int state = call_go(lp, method, req, len, kind, &token, &data);
    if (state < 0) {
        Py_DECREF(fut);
        return NULL;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(token);
    if (key == NULL)
        goto fail;
    if (state == 0) {
        /* Its completion is dispatched on this thread, by a later poll:
         * registering the future now is in time. */
        if (PyDict_SetItem(lp->calls, key, fut) < 0)
            goto fail;
    } else {
        /* Answered inside the call (from the cache, /etc/hosts): no
         * completion will come. The future is settled by a call_soon
         * callback, not now: the awaiting task still yields to the loop
         * once, as it does on asyncio, so a task resolving cached names in
         * a loop cannot starve the others. */
        int is_result = 0;
        PyObject *value = outcome_of(kind, state == 1, data, &is_result);
        Py_CLEAR(data);
        PyObject *args = value ? Py_BuildValue("(OOO)", fut, is_result ? Py_True : Py_False, value) : NULL;
        Py_XDECREF(value);
        Handle *h = args ? loop_call_soon(lp, settle_later_fn, args, NULL) : NULL;
        Py_XDECREF(args);
        if (h == NULL)
            goto fail;
        Py_DECREF(h);
    }
    PyObject *out = PyTuple_Pack(2, key, fut);
    Py_DECREF(key);
    Py_DECREF(fut);
    return out;
fail:
    Py_XDECREF(data);
    Py_XDECREF(key);
    Py_DECREF(fut);
    return NULL;
}

/* _go_call_start(method, req) -> (token, future): the future gets the
 * method's bytes, or GoCallError (the error hook's) when it fails. */
PyObject *lc_go_call_start(LoopCore *lp, PyObject *args)
{
    const char *method;
    Py_buffer req;
    if (!PyArg_ParseTuple(args, "sy*", &method, &req))
        return NULL;
    PyObject *out = start_call(lp, method, req.buf, req.len, CALL_RAW);
    PyBuffer_Release(&req);
    return out;
}

/* _go_call_quick(method, req[, detail]) -> bytes, or None: for a method Go
 * answers at once (a quick method), asked by a caller that cannot wait for
 * a loop iteration (goloop._tls: does the kernel take TLS keys?). None when
 * Go failed it or did not answer at once (its completion then settles a
 * future nobody awaits). With detail true, an answer is (True, bytes) and
 * a failure (False, Go's error text) (goloop.TLSContext's load errors). */
PyObject *lc_go_call_quick(LoopCore *lp, PyObject *args)
{
    const char *method;
    Py_buffer req;
    int detail = 0;
    if (!PyArg_ParseTuple(args, "sy*|p", &method, &req, &detail))
        return NULL;
    PyObject *data = NULL;
    if (loop_check_alive(lp) < 0) {
        PyBuffer_Release(&req);
        return NULL;
    }
    uint64_t token;
    int state = call_go(lp, method, req.buf, req.len, CALL_RAW, &token, &data);
    PyBuffer_Release(&req);
    if (state < 0)
        return NULL;
    if (state == 1 && !detail)
        return data;
    if (detail && (state == 1 || state == 2)) {
        PyObject *t = data ? Py_BuildValue("(ON)", state == 1 ? Py_True : Py_False, data) : NULL;
        return t;
    }
    Py_XDECREF(data);
    if (state == 0) {
        /* Its completion must find a future: one nobody awaits. */
        PyObject *fut = PyObject_CallMethod((PyObject *)lp, "create_future", NULL);
        PyObject *key = fut ? PyLong_FromUnsignedLongLong(token) : NULL;
        int r = key ? PyDict_SetItem(lp->calls, key, fut) : -1;
        Py_XDECREF(key);
        Py_XDECREF(fut);
        if (r < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *lc_go_call_cancel(LoopCore *lp, PyObject *arg)
{
    unsigned long long token = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    go_cancel(lp, token);
    Py_RETURN_NONE;
}

/* What goloop._dns._surely_a_name says for an ASCII str: the C library
 * cannot read it as a numeric address (no colon, and a character none of
 * inet_aton's forms has) and its labels are ones the IDNA codec accepts.
 * NULs are left to the Python path, which cuts the name there. */
static int surely_a_name(const char *s, Py_ssize_t n)
{
    int maybe_numeric = 1;
    Py_ssize_t label = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == ':' || c == '\0')
            return 0;
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
              c == 'x' || c == 'X' || c == '.'))
            maybe_numeric = 0;
        if (c == '.') {
            if (label == 0 || label > 63)
                return 0;
            label = 0;
        } else {
            label++;
        }
    }
    return !maybe_numeric && label < 64;
}

/* Decimal text of v at w; returns the end. */
static char *put_long(char *w, long v)
{
    char tmp[24];
    int k = 0;
    unsigned long u = v < 0 ? 0UL - (unsigned long)v : (unsigned long)v;
    do {
        tmp[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *w++ = '-';
    while (k > 0)
        *w++ = tmp[--k];
    return w;
}

/* _gai_start(host, port, family, type, proto, flags) -> (token, future),
 * or None when the arguments need the Python path (goloop._dns.getaddrinfo):
 * anything but an ASCII str name, a port that is not None, an int or an
 * ASCII str, numbers that are not ints (or IntEnums), or arguments not yet
 * seen accepted by the C library. The
 * request is the one _dns.getaddrinfo would send. */
PyObject *lc_gai_start(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_gai_start takes 6 arguments");
        return NULL;
    }
    PyObject *host = args[0], *port = args[1];
    if (valid_args == NULL || !PyUnicode_CheckExact(host) || !PyUnicode_IS_ASCII(host))
        Py_RETURN_NONE;
    for (int i = 2; i < 6; i++)
        if (!PyLong_Check(args[i]))  /* ints and IntEnums (socket.SOCK_STREAM) */
            Py_RETURN_NONE;
    const char *hs = (const char *)PyUnicode_DATA(host);
    Py_ssize_t hn = PyUnicode_GET_LENGTH(host);
    if (hn == 0 || hn > 1024 || !surely_a_name(hs, hn))
        Py_RETURN_NONE;
    const char *ps = NULL;
    Py_ssize_t pn = 0;
    long pnum = 0;
    if (port == Py_None) {
    } else if (PyLong_CheckExact(port)) {
        pnum = PyLong_AsLong(port);
        if (pnum == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    } else if (PyUnicode_CheckExact(port) && PyUnicode_IS_ASCII(port)) {
        ps = (const char *)PyUnicode_DATA(port);
        pn = PyUnicode_GET_LENGTH(port);
        if (pn > 256 || memchr(ps, '\0', pn) != NULL)
            Py_RETURN_NONE;
    } else {
        Py_RETURN_NONE;
    }
    PyObject *key = PyTuple_Pack(6, (PyObject *)Py_TYPE(port), port, args[2], args[3], args[4], args[5]);
    if (key == NULL)
        return NULL;
    int ok = PySet_Contains(valid_args, key);
    Py_DECREF(key);
    if (ok <= 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    long nums[4];
    for (int i = 0; i < 4; i++) {
        nums[i] = PyLong_AsLong(args[2 + i]);
        if (nums[i] == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    /* host, service, family, type, proto, flags; see parseAddrinfoRequest
     * (snprintf here cost more than the rest of the function) */
    char buf[1024 + 256 + 128];
    char *w = buf;
    *w++ = 's';
    memcpy(w, hs, hn);
    w += hn;
    *w++ = '\0';
    if (port == Py_None) {
        *w++ = 'n';
    } else {
        *w++ = 's';
        if (ps == NULL) {
            w = put_long(w, pnum);
        } else {
            memcpy(w, ps, pn);
            w += pn;
        }
    }
    for (int i = 0; i < 4; i++) {
        *w++ = '\0';
        w = put_long(w, nums[i]);
    }
    Py_ssize_t n = w - buf;
    return start_call(lp, "dns.getaddrinfo", buf, n, CALL_ADDRINFO);
}

static PyObject *enum_of(PyObject *map, long v)
{
    PyObject *k = PyLong_FromLong(v);
    if (k == NULL)
        return NULL;
    PyObject *e = map ? PyDict_GetItemWithError(map, k) : NULL;
    if (e != NULL) {
        Py_DECREF(k);
        return Py_NewRef(e);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(k);
        return NULL;
    }
    return k;  /* no member has that number: the plain int, as the socket module gives */
}

static uint32_t rd32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Build socket.getaddrinfo's list from the Go reply (see
 * appendAddrinfoReply in goloop/dns/methods.go). */
static PyObject *decode_addrinfo(const unsigned char *p, Py_ssize_t n)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    while (i < n) {
        if (n - i < 18)
            goto bad;
        int fam = p[i], alen = p[i + 1];
        long socktype = (int32_t)rd32(p + i + 2), proto = (int32_t)rd32(p + i + 6);
        long port = rd16(p + i + 10);
        unsigned long scope = rd32(p + i + 12);
        Py_ssize_t clen = rd16(p + i + 16);
        i += 18;
        if ((alen != 4 && alen != 16) || n - i < clen + alen)
            goto bad;
        const unsigned char *canon = p + i, *addr = p + i + clen;
        i += clen + alen;
        char text[INET6_ADDRSTRLEN];
        if (inet_ntop(alen == 4 ? AF_INET : AF_INET6, addr, text, sizeof text) == NULL)
            goto bad;
        PyObject *sa = alen == 4 ? Py_BuildValue("(sl)", text, port)
                                 : Py_BuildValue("(slik)", text, port, 0, scope);
        PyObject *f = sa ? enum_of(family_enum, fam) : NULL;
        PyObject *k = f ? enum_of(kind_enum, socktype) : NULL;
        PyObject *c = k ? PyUnicode_DecodeUTF8((const char *)canon, clen, "replace") : NULL;
        PyObject *t = c ? Py_BuildValue("(NNlNN)", f, k, proto, c, sa) : NULL;
        if (t == NULL) {
            if (c == NULL) {
                Py_XDECREF(sa);
                Py_XDECREF(f);
                Py_XDECREF(k);
            }
            Py_DECREF(out);
            return NULL;
        }
        int r = PyList_Append(out, t);
        Py_DECREF(t);
        if (r < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
bad:
    Py_DECREF(out);
    PyErr_SetString(PyExc_OSError, "goloop: malformed getaddrinfo reply from the Go resolver");
    return NULL;
}

/* addrinfo_decode(data) -> list, for the Python path of getaddrinfo. */
static PyObject *mod_addrinfo_decode(PyObject *m, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = decode_addrinfo(b.buf, b.len);
    PyBuffer_Release(&b);
    return out;
}

/* _dns_setup(valid_args, family_enum, kind_enum, error_hook) */
static PyObject *mod_dns_setup(PyObject *m, PyObject *args)
{
    PyObject *va, *fe, *ke, *eh;
    if (!PyArg_ParseTuple(args, "O!O!O!O", &PySet_Type, &va, &PyDict_Type, &fe, &PyDict_Type, &ke, &eh))
        return NULL;
    Py_XSETREF(valid_args, Py_NewRef(va));
    Py_XSETREF(family_enum, Py_NewRef(fe));
    Py_XSETREF(kind_enum, Py_NewRef(ke));
    Py_XSETREF(error_hook, Py_NewRef(eh));
    Py_RETURN_NONE;
}

/* Take a finished call's result (its bytes, or Go's error text) from Go. */
static PyObject *take_result(LoopCore *lp, uint64_t token, int known_len)
{
    int n = known_len >= 0 ? known_len : go_result(lp, token, NULL, 0);
    if (n < 0)
        n = 0;
    PyObject *data = PyBytes_FromStringAndSize(NULL, n);
    if (data == NULL)
        return NULL;
    int got = go_result(lp, token, PyBytes_AS_STRING(data), n);
    if (got > n) {  /* cannot happen: results do not change once done */
        Py_DECREF(data);
        PyErr_SetString(PyExc_RuntimeError, "goloop: a Go call's result changed size");
        return NULL;
    }
    return data;
}

/* What a call's outcome sets on its future: for ok, its bytes (decoded
 * for kind) and *is_result 1; for a failure, the error hook's exception
 * for Go's text and *is_result 0. A reply that cannot be decoded becomes
 * its exception. NULL only if even that failed. */
static PyObject *outcome_of(unsigned kind, int ok, PyObject *data, int *is_result)
{
    const char *p = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *v = NULL;
    *is_result = 0;
    if (ok) {
        v = kind == CALL_ADDRINFO ? decode_addrinfo((const unsigned char *)p, n) : Py_NewRef(data);
        if (v != NULL) {
            *is_result = 1;
            return v;
        }
    } else {
        PyObject *text = PyUnicode_DecodeUTF8(p, n, "replace");
        if (text != NULL)
            v = error_hook ? PyObject_CallFunction(error_hook, "IO", kind, text)
                           : PyObject_CallOneArg(PyExc_OSError, text);
        Py_XDECREF(text);
        if (v != NULL)
            return v;
    }
    return take_exception();
}

/* Set value on fut as its result or its exception, unless fut is done
 * already (cancelled: nobody waits). 0, or -1 with an exception set. */
static int apply(PyObject *fut, int is_result, PyObject *value)
{
    PyObject *done = PyObject_CallMethodNoArgs(fut, str_done);
    if (done == NULL)
        return -1;
    int skip = done != Py_False;
    Py_DECREF(done);
    if (skip)
        return 0;
    PyObject *res = PyObject_CallMethodOneArg(fut, is_result ? str_set_result : str_set_exception, value);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int settle(PyObject *fut, unsigned kind, int ok, PyObject *data)
{
    int is_result;
    PyObject *value = outcome_of(kind, ok, data, &is_result);
    if (value == NULL)
        return -1;
    int r = apply(fut, is_result, value);
    Py_DECREF(value);
    return r;
}

/* The callback that settles a quickly answered call's future one
 * iteration later: (future, is_result, value). */
static PyObject *settle_later(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "_settle_later takes 3 arguments");
    if (apply(args[0], PyObject_IsTrue(args[1]), args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef settle_later_def = {"_settle_later", (PyCFunction)(void (*)(void))settle_later, METH_FASTCALL, NULL};

/* Settle the future of a finished Go call. Returns -1 only for what must
 * leave the loop (the error hook raising SystemExit, say). */
int call_dispatch(LoopCore *lp, gl_comp *c)
{
    PyObject *data = take_result(lp, c->token, c->res >= 0 ? c->res : -1);
    if (data == NULL)
        return report_callback_error(lp, "Exception in Go call completion", NULL, NULL);
    PyObject *key = PyLong_FromUnsignedLongLong(c->token);
    PyObject *fut = key ? PyDict_GetItemWithError(lp->calls, key) : NULL;
    if (fut == NULL) {
        Py_XDECREF(key);
        Py_DECREF(data);
        return PyErr_Occurred() ? report_callback_error(lp, "Exception in Go call completion", NULL, NULL) : 0;
    }
    Py_INCREF(fut);
    PyDict_DelItem(lp->calls, key);
    Py_DECREF(key);
    int r = settle(fut, call_kind(c->token), c->res >= 0, data);
    Py_DECREF(fut);
    Py_DECREF(data);
    if (r < 0)
        return report_callback_error(lp, "Exception in Go call completion", NULL, NULL);
    return 0;
}

static PyMethodDef calls_functions[] = {
    {"addrinfo_decode", mod_addrinfo_decode, METH_O, NULL},
    {"_dns_setup", mod_dns_setup, METH_VARARGS, NULL},
    {NULL}
};

int init_calls(PyObject *m)
{
    str_done = PyUnicode_InternFromString("done");
    str_set_result = PyUnicode_InternFromString("set_result");
    str_set_exception = PyUnicode_InternFromString("set_exception");
    settle_later_fn = PyCFunction_New(&settle_later_def, NULL);
    if (str_done == NULL || str_set_result == NULL || str_set_exception == NULL || settle_later_fn == NULL)
        return -1;
    return PyModule_AddFunctions(m, calls_functions);
}
