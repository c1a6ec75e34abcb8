/* The program's socket object for a transport made over a bare fd (a
 * connection a server accepted in C, create_connection's own socket),
 * made when the program first asks for extra info 'socket'.
 *
 * What asyncio gives there is trsock.TransportSocket over a socket.socket;
 * goloop's is a _GoOwnedSocket (_streams.py: closing it does not close
 * Go's fd). Made in Python that costs a connection three Python frames
 * (loop._lazy_socket, socket.socket.__init__, TransportSocket.__init__)
 * around the one thing that must happen, _socket.socket's own __init__
 * over the fd. Programs that ask at every connection are common (aiohttp
 * sets TCP_NODELAY and SO_KEEPALIVE through it), so it is made here,
 * doing what those frames do: _socket.socket.__init__(family, type, proto,
 * fd), then socket.socket's two attributes (_io_refs = 0, _closed =
 * False), then TransportSocket's one (_sock), and the fd is entered in
 * loop._transports as _lazy_socket enters it.
 *
 * Go's close of the fd detaches the object (sockobj_detach), as
 * socket.socket.detach does, also without its frame.
 *
 * _streams.py hands over the classes (_sockobj_setup) only where
 * socket.socket's and TransportSocket's slots and methods are the ones
 * this file stands in for; elsewhere, and for a transport whose fd Go already closed, the
 * Python path (loop._lazy_socket) runs. */
#include "core.h"

static struct {
    PyTypeObject *owned;       /* _streams._GoOwnedSocket */
    PyTypeObject *base;        /* _socket.socket, whose tp_init takes the fd */
    PyTypeObject *tsock;       /* asyncio.trsock.TransportSocket */
    PyObject *base_detach;     /* _socket.socket.detach */
    PyObject *empty;
    PyObject *s_io_refs, *s_closed, *s_sock, *s_transports;
} SO;

/* _sockobj_setup(owned, base, transport_socket) */
PyObject *sockobj_setup(PyObject *m, PyObject *args)
{
    PyObject *owned, *base, *tsock;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyType_Type, &owned, &PyType_Type, &base,
                          &PyType_Type, &tsock))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)owned, (PyTypeObject *)base)) {
        PyErr_SetString(PyExc_TypeError, "_sockobj_setup: owned must derive from base");
        return NULL;
    }
    if (SO.empty == NULL) {
        SO.empty = PyTuple_New(0);
        SO.s_io_refs = PyUnicode_InternFromString("_io_refs");
        SO.s_closed = PyUnicode_InternFromString("_closed");
        SO.s_sock = PyUnicode_InternFromString("_sock");
        SO.s_transports = PyUnicode_InternFromString("_transports");
        if (SO.empty == NULL || SO.s_io_refs == NULL || SO.s_closed == NULL ||
            SO.s_sock == NULL || SO.s_transports == NULL)
            return NULL;
    }
    PyObject *detach = PyObject_GetAttrString(base, "detach");
    if (detach == NULL)
        return NULL;
    Py_XSETREF(SO.base_detach, detach);
    Py_INCREF(owned); Py_XSETREF(SO.owned, (PyTypeObject *)owned);
    Py_INCREF(base); Py_XSETREF(SO.base, (PyTypeObject *)base);
    Py_INCREF(tsock); Py_XSETREF(SO.tsock, (PyTypeObject *)tsock);
    Py_RETURN_NONE;
}

/* sock.detach(), for a transport's socket object when Go closed its fd.
 * A _GoOwnedSocket's is socket.socket.detach (_closed = True, then
 * _socket.socket's detach), done here without its frame; any other
 * object's detach is called. 0, or -1 with an exception. */
int sockobj_detach(PyObject *sock)
{
    PyObject *r;
    if (SO.owned != NULL && Py_IS_TYPE(sock, SO.owned)) {
        if (PyObject_SetAttr(sock, SO.s_closed, Py_True) < 0)
            return -1;
        r = PyObject_CallOneArg(SO.base_detach, sock);
    } else {
        r = PyObject_CallMethod(sock, "detach", NULL);
    }
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* s lets go of Go's fd and goes: a socket object closes its fd when
 * collected, and this one never became the program's. The pending
 * exception is kept. */
static void drop_socket(PyObject *s)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (sockobj_detach(s) < 0)
        PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    Py_DECREF(s);
}

/* A _GoOwnedSocket over fd, as _GoOwnedSocket(family, type, proto, fileno=fd)
 * makes it (socket.socket.__init__ for a given fileno). */
static PyObject *owned_socket(int family, int type, int proto, int fd)
{
    PyObject *s = SO.owned->tp_new(SO.owned, SO.empty, NULL);
    if (s == NULL)
        return NULL;
    PyObject *a = Py_BuildValue("(iiii)", family, type, proto, fd);
    int r = a == NULL ? -1 : SO.base->tp_init(s, a, NULL);
    Py_XDECREF(a);
    PyObject *zero = r < 0 ? NULL : PyLong_FromLong(0);
    if (zero == NULL || PyObject_SetAttr(s, SO.s_io_refs, zero) < 0 ||
        PyObject_SetAttr(s, SO.s_closed, Py_False) < 0) {
        Py_XDECREF(zero);
        drop_socket(s);
        return NULL;
    }
    Py_DECREF(zero);
    return s;
}

/* 1 with *sock and *tsock set (new references), 0 when the Python path
 * must make them (not set up), -1 with an exception. */
int sockobj_make(PyObject *loop, PyObject *transport, int family, int type, int proto, int fd,
                 PyObject **sock, PyObject **tsock)
{
    if (SO.owned == NULL)
        return 0;
    PyObject *s = owned_socket(family, type, proto, fd);
    if (s == NULL)
        return -1;
    PyObject *ts = SO.tsock->tp_new(SO.tsock, SO.empty, NULL);
    if (ts == NULL || PyObject_SetAttr(ts, SO.s_sock, s) < 0)
        goto fail;
    /* sock_* and add_reader on this fd are refused from here on, as asyncio
     * refuses them for a transport's fd (loop._ensure_fd_no_transport). */
    PyObject *d = PyObject_GetAttr(loop, SO.s_transports);
    PyObject *key = d != NULL ? PyLong_FromLong(fd) : NULL;
    PyObject *ref = key != NULL ? PyWeakref_NewRef(transport, NULL) : NULL;
    int r = ref == NULL ? -1 : PyObject_SetItem(d, key, ref);
    Py_XDECREF(ref);
    Py_XDECREF(key);
    Py_XDECREF(d);
    if (r < 0)
        goto fail;
    *sock = s;
    *tsock = ts;
    return 1;
fail:
    Py_XDECREF(ts);
    drop_socket(s);
    return -1;
}
