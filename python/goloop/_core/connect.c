/* Connects in Go: sock_connect (and so create_connection) hands Go the fd
 * and the sockaddr (GL_OP_CONNECT) and awaits a future that the EvConnect
 * settles here, in C. Go does the connect(2), the wait for writability and
 * SO_ERROR (epoll), or IORING_OP_CONNECT; Python makes none of those calls.
 *
 * Ownership: the fd stays the Python socket's; Go uses it until its
 * EvConnect. A cancelled connect is given up with GL_OP_CONNECT_STOP
 * before Python may close the socket: Go answers with -ECANCELED at once
 * and does not touch the fd for it again. The sockaddr bytes are C memory
 * Go reads until the EvConnect, so the loop's connects dict holds them
 * with the future: token -> (future, sockaddr bytes, address as given). */
#include "core.h"
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

/* loop._connect_start(fd, sockaddr, address) -> (token, future) */
PyObject *lc_connect_start(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[0]) || !PyBytes_CheckExact(args[1]))
        return PyErr_Format(PyExc_TypeError, "_connect_start(fd, sockaddr: bytes, address)");
    int fd = _PyLong_AsInt(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (loop_check_alive(lp) < 0)
        return NULL;
    PyObject *fut = PyObject_CallMethod((PyObject *)lp, "create_future", NULL);
    if (fut == NULL)
        return NULL;
    uint64_t token = ((++lp->next_call) << 4) | TAG_CALL;  /* kind bit 0: as a raw call's */
    PyObject *key = PyLong_FromUnsignedLongLong(token);
    PyObject *entry = key ? PyTuple_Pack(3, fut, args[1], args[2]) : NULL;
    PyObject *ret = entry ? Py_BuildValue("(OO)", key, fut) : NULL;
    /* asyncio's sock_connect calls connect(2) before it returns to the
     * loop: the SYN is out when the caller's next line runs (a program may
     * accept() on a blocking listener right then). So the connect goes to
     * Go now (loop_apply_now), not with the iteration's batch. */
    if (ret == NULL || PyDict_SetItem(lp->connects, key, entry) < 0 ||
        loop_submit(lp, GL_OP_CONNECT, fd, token, PyBytes_AS_STRING(args[1]),
                    (uint32_t)PyBytes_GET_SIZE(args[1]), 0) < 0) {
        if (key != NULL && entry != NULL && PyDict_GetItem(lp->connects, key) == entry)
            PyDict_DelItem(lp->connects, key);
        Py_XDECREF(ret);
        ret = NULL;
    } else if (loop_apply_now(lp) < 0) {
        /* (Go itself failed: the loop is broken, and says why.) */
        PyDict_DelItem(lp->connects, key);
        Py_CLEAR(ret);
    }
    Py_XDECREF(entry);
    Py_XDECREF(key);
    Py_DECREF(fut);
    return ret;
}

/* loop._connect_stop(fd, token): the caller was cancelled. */
PyObject *lc_connect_stop(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_connect_stop(fd, token)");
    int fd = _PyLong_AsInt(args[0]);
    uint64_t token = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *key = PyLong_FromUnsignedLongLong(token);
    if (key == NULL)
        return NULL;
    int live = PyDict_Contains(lp->connects, key);
    Py_DECREF(key);
    if (live < 0)
        return NULL;
    /* The loop may be closed under the cancelled task: Go is gone, and
     * with it everything it was doing for the fd. */
    if (live && !lp->closed && go_usable(lp) &&
        loop_submit(lp, GL_OP_CONNECT_STOP, fd, token, NULL, 0, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* What a connected IPv4 socket's transport needs for its extra info, with
 * no syscall: its sockname from Go's EvConnect and its peername from the
 * sockaddr the connect was given, packed for Transport(kind=(family, type,
 * proto, packed)), which makes the tuples only when the program asks. None
 * for anything else (the transport then asks the socket). */
static PyObject *connected_addrs(gl_comp *c, PyObject *sockaddr)
{
    struct sockaddr_in sin;
    if ((c->aux & 0xffff) != AF_INET || PyBytes_GET_SIZE(sockaddr) != sizeof sin)
        Py_RETURN_NONE;
    memcpy(&sin, PyBytes_AS_STRING(sockaddr), sizeof sin);
    if (sin.sin_family != AF_INET)
        Py_RETURN_NONE;
    return transport_pack_inet4(c->buf, (uint16_t)(c->aux >> 16), sin.sin_addr.s_addr, sin.sin_port);
}

/* EvConnect: settle the future as asyncio's sock_connect would (its result
 * is connected_addrs' answer, which sock_connect itself drops). */
int connect_dispatch(LoopCore *lp, gl_comp *c)
{
    PyObject *key = PyLong_FromUnsignedLongLong(c->token);
    PyObject *entry = key ? PyDict_GetItemWithError(lp->connects, key) : NULL;
    if (entry == NULL) {
        Py_XDECREF(key);
        return PyErr_Occurred() ? report_callback_error(lp, "Exception in connect completion", NULL, NULL) : 0;
    }
    Py_INCREF(entry);
    int r = PyDict_DelItem(lp->connects, key);
    Py_DECREF(key);
    PyObject *fut = PyTuple_GET_ITEM(entry, 0);
    PyObject *done = r < 0 ? NULL : PyObject_CallMethod(fut, "done", NULL);
    if (done == Py_False) {
        PyObject *res;
        /* A socket already connected there: Python's connect() returns
         * quietly on EISCONN, so asyncio's sock_connect does too. */
        if (c->res == 0 || c->res == -EISCONN) {
            PyObject *addrs = connected_addrs(c, PyTuple_GET_ITEM(entry, 1));
            PyObject *name = addrs ? PyUnicode_FromString("set_result") : NULL;
            res = name ? PyObject_CallMethodOneArg(fut, name, addrs) : NULL;
            Py_XDECREF(name);
            Py_XDECREF(addrs);
        } else {
            /* asyncio's words for a connect that failed after EINPROGRESS */
            PyObject *msg = PyUnicode_FromFormat("Connect call failed %S", PyTuple_GET_ITEM(entry, 2));
            PyObject *exc = msg ? PyObject_CallFunction(PyExc_OSError, "iO", -c->res, msg) : NULL;
            res = exc ? PyObject_CallMethod(fut, "set_exception", "O", exc) : NULL;
            Py_XDECREF(exc);
            Py_XDECREF(msg);
        }
        if (res == NULL)
            r = -1;
        Py_XDECREF(res);
    } else if (done == NULL) {
        r = -1;
    }
    Py_XDECREF(done);
    Py_DECREF(entry);
    if (r < 0)
        return report_callback_error(lp, "Exception in connect completion", NULL, NULL);
    return 0;
}
