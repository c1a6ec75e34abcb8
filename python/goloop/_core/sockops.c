/* sock_recv, sock_recv_into, sock_sendall, sock_accept, sock_recvfrom*,
 * sock_sendto and sock_sendfile completed in Go (docs/sockops.md).
 *
 * Each call is a SockOp: it takes a slot in the owner table (TAG_SOCKOP),
 * hands Go one GL_OP_SOCK_RECV or GL_OP_SOCK_SEND on the program's fd and
 * applies it at once (loop_apply_now), as asyncio's sock_* call the socket
 * before they return to the loop: when the socket can serve it, the op is
 * answered inside that call and the result goes straight back, no future
 * and no loop iteration. Otherwise Go waits for readiness and does the
 * recv/send itself, inside a later poll; the GL_EV_SOCK settles the
 * future.
 *
 * The invariant that keeps cancellation lossless: a sock op's result
 * reaches its future before any Python code runs after the syscall that
 * produced it. Go makes the syscall only inside goloop_poll, and go_poll
 * (go.c) calls sockops_settle() on every batch it returns, before the run
 * loop runs a callback, checks signals or dispatches anything, and for the
 * polls loop_apply_now makes in the middle of a dispatch too. So when a
 * program's callback cancels the awaiting task, either the future is
 * already done (the result is in it, and the sock_* coroutine returns it
 * instead of losing it: loop.py) or Go has not read: the future's cancel()
 * submits GL_OP_SOCK_STOP and applies it before it returns, and Go never
 * reads or writes for a stopped op (record.go, OpSockStop).
 *
 * Memory: sock_recv's bytes object is made here (n bytes), Go receives
 * straight into it, and it is shrunk to what came; sock_recv_into holds a
 * Py_buffer of the program's buffer, sock_sendall one of its data, until
 * the op's one GL_EV_SOCK (its result, or the -ECANCELED that acknowledges
 * a stop). While Go has the op, the SockOp pins itself (one reference). */
#include "core.h"
#include <errno.h>
#include <string.h>

enum { SK_RECV, SK_RECV_INTO, SK_SEND, SK_ACCEPT, SK_RECVFROM, SK_RECVFROM_INTO, SK_SENDTO, SK_SENDFILE };

#define ACCEPT_NAME_CAP 128   /* a struct sockaddr_storage */

/* The most one op moves: EvSock's Res is an int32. Larger requests take
 * asyncio's path (loop.py). */
#define SOCK_MAX (1u << 30)

typedef struct {
    PyObject_HEAD
    LoopCore *loop;
    PyObject *fut;        /* made only when the op did not complete at once */
    PyObject *data;       /* SK_RECV: the bytes Go fills; SK_ACCEPT: room for the peer's address */
    PyObject *lsock;      /* SK_ACCEPT: the listening socket (the new one's family, type, proto);
                             SK_RECVFROM*: the socket (the address's family) */
    gl_sendto *blk;       /* SK_RECVFROM*, SK_SENDTO: the block Go reads (and fills) */
    Py_buffer view;       /* SK_RECV_INTO, SK_SEND: held while Go has the op */
    uint64_t token;
    int fd;
    int ffd;              /* SK_SENDFILE: the file fd Go reads (the caller's, lent while in flight) */
    uint32_t len;
    uint8_t kind;
    char inflight;        /* Go has it: slot bound, pinned */
    char stopping;        /* GL_OP_SOCK_STOP submitted (cancel, or loop close) */
    char done;            /* GL_EV_SOCK came: res holds it */
    int32_t res;
    uint32_t aux;
} SockOp;

static PyTypeObject *SockOp_Type;
static PyObject *SockFuture;   /* loop.py's _SockFuture: asyncio.Future whose cancel() stops the op */
static PyObject *Accepted;     /* loop.py's _sock_accepted(lsock, fd, address bytes) -> (conn, address) */
static PyObject *Address;      /* loop.py's _sock_address(sock, address bytes) -> address */
static PyObject *str_sk;       /* "_sk": the future's token attribute */
static PyObject *kwnames_loop; /* ("loop",) */
static PyObject *str_set_result, *str_set_exception, *str_done;
static PyObject *str_sent;     /* "_sent": how far a stopped sock_sendfile got */

static void op_release_buffers(SockOp *op)
{
    if (op->view.obj != NULL)
        PyBuffer_Release(&op->view);
    Py_CLEAR(op->data);
    Py_CLEAR(op->lsock);
    PyMem_Free(op->blk);
    op->blk = NULL;
}

static void op_dealloc(SockOp *op)
{
    op_release_buffers(op);
    Py_CLEAR(op->fut);
    Py_CLEAR(op->loop);
    PyObject_Free(op);
}

static PyType_Slot op_slots[] = {
    {Py_tp_dealloc, op_dealloc},
    {0, NULL}
};

static PyType_Spec op_spec = {
    "goloop._core.SockOp", sizeof(SockOp), 0, Py_TPFLAGS_DEFAULT, op_slots
};

static SockOp *op_new(LoopCore *lp, int kind, int fd)
{
    SockOp *op = PyObject_New(SockOp, SockOp_Type);
    if (op == NULL)
        return NULL;
    Py_INCREF(lp);
    op->loop = lp;
    op->fut = op->data = op->lsock = NULL;
    op->blk = NULL;
    memset(&op->view, 0, sizeof op->view);
    op->token = 0;
    op->fd = fd;
    op->ffd = -1;
    op->len = 0;
    op->kind = (uint8_t)kind;
    op->inflight = op->stopping = op->done = 0;
    op->res = 0;
    op->aux = 0;
    return op;
}

/* The op's outcome as Python sees it: a new reference to the result, or
 * NULL with the exception set (socket's: OSError(errno, strerror), which
 * Python turns into its subclass, ConnectionResetError and so on). */
static PyObject *op_result(SockOp *op)
{
    if (op->kind == SK_SENDFILE) {
        /* (res, aux) as Go said it, never an exception: an error's meaning
         * depends on what the whole call sent before it (loop.py). */
        PyObject *r = PyLong_FromLong(op->res), *a = PyLong_FromUnsignedLong(op->aux);
        PyObject *t = (r && a) ? PyTuple_Pack(2, r, a) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(a);
        return t;
    }
    if (op->res < 0) {
        int e = -op->res;
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", e, strerror(e));
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    switch (op->kind) {
    case SK_RECV: {
        PyObject *b = op->data;
        op->data = NULL;
        if ((Py_ssize_t)op->res != PyBytes_GET_SIZE(b) && _PyBytes_Resize(&b, op->res) < 0)
            return NULL;
        return b;
    }
    case SK_RECV_INTO:
        return PyLong_FromLong(op->res);
    case SK_ACCEPT: {
        /* The socket object owns the fd from here (a socket.socket closes
         * its fd when collected): made before anything else can run. */
        uint32_t alen = op->aux < ACCEPT_NAME_CAP ? op->aux : ACCEPT_NAME_CAP;
        PyObject *name = PyBytes_FromStringAndSize(PyBytes_AS_STRING(op->data), alen);
        PyObject *r = name ? PyObject_CallFunction(Accepted, "OiO", op->lsock, (int)op->res, name) : NULL;
        Py_XDECREF(name);
        if (r == NULL)
            loop_close_orphan(op->loop, op->res);   /* nobody else will */
        op->res = -1;   /* the fd is taken */
        return r;
    }
    case SK_RECVFROM:
    case SK_RECVFROM_INTO: {
        uint32_t alen = op->aux < GL_DGRAM_NAME_CAP ? op->aux : GL_DGRAM_NAME_CAP;
        PyObject *name = PyBytes_FromStringAndSize((const char *)op->blk->name, alen);
        PyObject *addr = name ? PyObject_CallFunctionObjArgs(Address, op->lsock, name, NULL) : NULL;
        Py_XDECREF(name);
        if (addr == NULL)
            return NULL;
        PyObject *first;
        if (op->kind == SK_RECVFROM_INTO) {
            first = PyLong_FromLong(op->res);
        } else {
            first = op->data;
            op->data = NULL;
            if ((Py_ssize_t)op->res != PyBytes_GET_SIZE(first) && _PyBytes_Resize(&first, op->res) < 0)
                first = NULL;
        }
        PyObject *r = first ? PyTuple_Pack(2, first, addr) : NULL;
        Py_XDECREF(first);
        Py_DECREF(addr);
        return r;
    }
    case SK_SENDTO:
        return PyLong_FromLong(op->res);
    default:
        Py_RETURN_NONE;
    }
}

/* Settle the future of an op Go answered. A -ECANCELED the program did not
 * ask for is a receive or send that a later one on the same fd replaced:
 * as with asyncio's replaced reader or writer, its future stays pending. */
static void op_settle_future(LoopCore *lp, SockOp *op)
{
    PyObject *fut = op->fut;
    PyObject *done = PyObject_CallMethodNoArgs(fut, str_done);
    if (done == NULL) {
        report_callback_error(lp, "Exception in sock op completion", NULL, NULL);
        return;
    }
    int pending = done == Py_False;
    Py_DECREF(done);
    if (op->kind == SK_SENDFILE && op->res == -ECANCELED) {
        /* Stopped (its future is being cancelled) or replaced: the bytes it
         * sent, for the file position the coroutine sets (loop.py). */
        PyObject *sent = PyLong_FromUnsignedLong(op->aux);
        if (sent == NULL || PyObject_SetAttr(fut, str_sent, sent) < 0)
            report_callback_error(lp, "Exception in sock op completion", NULL, NULL);
        Py_XDECREF(sent);
    }
    if (!pending || op->res == -ECANCELED) {
        if (op->kind == SK_ACCEPT && op->res >= 0)
            loop_close_orphan(lp, op->res);   /* accepted for nobody */
        return;
    }
    PyObject *r = op_result(op), *ok;
    if (r != NULL) {
        ok = PyObject_CallMethodOneArg(fut, str_set_result, r);   /* r may be a tuple */
        Py_DECREF(r);
    } else {
        PyObject *exc = take_exception();
        ok = exc ? PyObject_CallMethodOneArg(fut, str_set_exception, exc) : NULL;
        Py_XDECREF(exc);
    }
    if (ok == NULL)
        report_callback_error(lp, "Exception in sock op completion", NULL, NULL);
    Py_XDECREF(ok);
}

/* Right after every go_poll (go.c): the GL_EV_SOCK records of the batch
 * reach their ops, and futures, before anything else runs; the records
 * are then blanked (token 0 names nobody), so dispatch passes over them.
 * Records never move. */
void sockops_settle(LoopCore *lp, gl_comp *out, int n)
{
    for (int i = 0; i < n; i++) {
        if (out[i].kind != GL_EV_SOCK)
            continue;
        gl_comp c = out[i];
        out[i].kind = GL_EV_NONE;
        out[i].token = 0;
        if ((c.token & TAG_MASK) != TAG_SOCKOP)
            continue;
        SockOp *op = (SockOp *)owners_get(lp, c.token);
        if (op == NULL)
            continue;   /* carries nothing to give back */
        owners_release(lp, c.token);
        op->inflight = 0;
        op->done = 1;
        op->res = c.res;
        op->aux = c.aux;
        if (op->fut != NULL) {
            /* The exception state of whatever C code polled must survive. */
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            if (!lp->draining)
                op_settle_future(lp, op);
            else if (op->kind == SK_ACCEPT && op->res >= 0)
                loop_close_orphan(lp, op->res);   /* the loop is closing: nobody takes it */
            op_release_buffers(op);
            PyErr_Restore(et, ev, tb);
        }   /* else answered inside its own start: op_start takes the result, then releases */
        Py_DECREF(op);   /* unpin: Go is done with it */
    }
}

/* Go's backend is driven from the loop's thread only: another thread's
 * poll would race the loop's own (asyncio's add_reader is not thread-safe
 * either; this says so instead of corrupting anything). */
static int check_thread(LoopCore *lp)
{
    if (lp->thread != 0 && lp->thread != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Non-thread-safe operation invoked on an event loop other than the current one");
        return -1;
    }
    return 0;
}

/* Hand Go the op and apply it now. Returns the result when the socket
 * served it at once, else a _SockFuture for it. Steals nothing. */
static PyObject *op_start(LoopCore *lp, SockOp *op, uint8_t glop, const void *ptr, uint32_t len)
{
    if (SockFuture == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "goloop: sock ops not set up");
        return NULL;
    }
    if (loop_check_alive(lp) < 0 || go_enter(lp) < 0 || check_thread(lp) < 0)
        return NULL;
    op->len = len;
    if (owners_bind(lp, (PyObject *)op, TAG_SOCKOP, &op->token) < 0)
        return NULL;
    uint32_t arg = op->kind == SK_SENDFILE ? (uint32_t)op->ffd : 0;
    if (loop_submit(lp, glop, op->fd, op->token, ptr, len, arg) < 0) {
        owners_release(lp, op->token);
        return NULL;
    }
    Py_INCREF(op);   /* pinned while Go has it */
    op->inflight = 1;
    if (loop_apply_now(lp) < 0) {
        /* Go itself failed: the loop is broken and says why. */
        if (op->inflight) {
            owners_release(lp, op->token);
            op->inflight = 0;
            Py_DECREF(op);
        }
        return NULL;
    }
    if (op->done) {
        PyObject *r = op_result(op);
        op_release_buffers(op);
        return r;
    }
    PyObject *a[2] = {NULL, (PyObject *)lp};   /* _SockFuture(loop=lp) */
    PyObject *fut = PyObject_Vectorcall(SockFuture, a + 1, 0 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames_loop);
    PyObject *tok = fut ? PyLong_FromUnsignedLongLong(op->token) : NULL;
    if (tok == NULL || PyObject_SetAttr(fut, str_sk, tok) < 0) {
        Py_XDECREF(tok);
        Py_XDECREF(fut);
        /* Give the op up in Go: nothing will await it. */
        if (op->inflight && !op->stopping) {
            op->stopping = 1;
            if (loop_submit(lp, GL_OP_SOCK_STOP, op->fd, op->token, NULL, 0, 0) == 0)
                loop_apply_now(lp);
        }
        return NULL;
    }
    Py_DECREF(tok);
    Py_INCREF(fut);
    op->fut = fut;
    return fut;
}

static int fd_arg(PyObject *o, int *fd)
{
    *fd = _PyLong_AsInt(o);
    return (*fd == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* loop._sock_recv_go(fd, n) -> bytes, a future, or NotImplemented (asyncio's path) */
PyObject *lc_sock_recv_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 2 || fd_arg(args[0], &fd) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "_sock_recv_go(fd, n)");
    if (!PyLong_CheckExact(args[1]))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (fd < 0 || n < 0 || (size_t)n > SOCK_MAX)
        Py_RETURN_NOTIMPLEMENTED;   /* socket's own error, or a size Go does not take */
    if (n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);   /* as socket.recv(0): no call */
    SockOp *op = op_new(lp, SK_RECV, fd);
    if (op == NULL)
        return NULL;
    op->data = PyBytes_FromStringAndSize(NULL, n);
    PyObject *r = op->data ? op_start(lp, op, GL_OP_SOCK_RECV, PyBytes_AS_STRING(op->data), (uint32_t)n) : NULL;
    Py_DECREF(op);
    return r;
}

static PyObject *start_with_buffer(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs,
                                   int kind, int flags, uint8_t glop)
{
    int fd;
    if (nargs != 2 || fd_arg(args[0], &fd) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "expected (fd, buffer)");
    if (fd < 0)
        Py_RETURN_NOTIMPLEMENTED;
    SockOp *op = op_new(lp, kind, fd);
    if (op == NULL)
        return NULL;
    if (PyObject_GetBuffer(args[1], &op->view, flags) < 0) {
        /* Not a (writable, contiguous) buffer: socket's own TypeError. */
        memset(&op->view, 0, sizeof op->view);
        Py_DECREF(op);
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t len = op->view.len;
    if ((size_t)len > SOCK_MAX) {
        if (kind == SK_SEND) {
            Py_DECREF(op);
            Py_RETURN_NOTIMPLEMENTED;
        }
        len = SOCK_MAX;   /* recv_into reads at most that much anyway */
    }
    PyObject *r = op_start(lp, op, glop, op->view.buf, (uint32_t)len);
    Py_DECREF(op);
    return r;
}

/* loop._sock_recv_into_go(fd, buf) -> int, a future, or NotImplemented */
PyObject *lc_sock_recv_into_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    return start_with_buffer(lp, args, nargs, SK_RECV_INTO, PyBUF_WRITABLE, GL_OP_SOCK_RECV);
}

/* loop._sock_sendall_go(fd, data) -> None, a future, or NotImplemented */
PyObject *lc_sock_sendall_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    return start_with_buffer(lp, args, nargs, SK_SEND, PyBUF_SIMPLE, GL_OP_SOCK_SEND);
}

/* loop._sock_accept_go(fd, lsock) -> (conn, address), a future, or NotImplemented */
PyObject *lc_sock_accept_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 2 || fd_arg(args[0], &fd) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "_sock_accept_go(fd, sock)");
    if (fd < 0 || Accepted == NULL)
        Py_RETURN_NOTIMPLEMENTED;
    SockOp *op = op_new(lp, SK_ACCEPT, fd);
    if (op == NULL)
        return NULL;
    Py_INCREF(args[1]);
    op->lsock = args[1];
    op->data = PyBytes_FromStringAndSize(NULL, ACCEPT_NAME_CAP);
    PyObject *r = NULL;
    if (op->data != NULL) {
        /* zeroed: an unnamed Unix peer's path reads as '' */
        memset(PyBytes_AS_STRING(op->data), 0, ACCEPT_NAME_CAP);
        r = op_start(lp, op, GL_OP_SOCK_ACCEPT, PyBytes_AS_STRING(op->data), ACCEPT_NAME_CAP);
    }
    Py_DECREF(op);
    return r;
}

static PyObject *start_block(LoopCore *lp, SockOp *op, uint8_t glop, void *data, Py_ssize_t len,
                             const char *name, Py_ssize_t namelen)
{
    op->blk = PyMem_Calloc(1, sizeof(gl_sendto));
    if (op->blk == NULL)
        return PyErr_NoMemory();
    op->blk->data = (uint64_t)(uintptr_t)data;
    op->blk->len = (uint32_t)len;
    if (namelen > 0) {
        memcpy(op->blk->name, name, (size_t)namelen);
        op->blk->namelen = (uint32_t)namelen;
    }
    return op_start(lp, op, glop, op->blk, (uint32_t)len);
}

/* loop._sock_recvfrom_go(fd, sock, bufsize) -> (bytes, address), a future, or NotImplemented */
PyObject *lc_sock_recvfrom_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 3 || fd_arg(args[0], &fd) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "_sock_recvfrom_go(fd, sock, n)");
    if (fd < 0 || Address == NULL || !PyLong_CheckExact(args[2]))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (n < 0 || (size_t)n > SOCK_MAX)
        Py_RETURN_NOTIMPLEMENTED;
    SockOp *op = op_new(lp, SK_RECVFROM, fd);
    if (op == NULL)
        return NULL;
    Py_INCREF(args[1]);
    op->lsock = args[1];
    op->data = PyBytes_FromStringAndSize(NULL, n);
    PyObject *r = op->data ? start_block(lp, op, GL_OP_SOCK_RECVFROM, PyBytes_AS_STRING(op->data), n, NULL, 0) : NULL;
    Py_DECREF(op);
    return r;
}

/* loop._sock_recvfrom_into_go(fd, sock, buf, nbytes) -> (n, address), a future, or NotImplemented */
PyObject *lc_sock_recvfrom_into_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 4 || fd_arg(args[0], &fd) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "_sock_recvfrom_into_go(fd, sock, buf, nbytes)");
    if (fd < 0 || Address == NULL || !PyLong_CheckExact(args[3]))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PyLong_AsSsize_t(args[3]);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    SockOp *op = op_new(lp, SK_RECVFROM_INTO, fd);
    if (op == NULL)
        return NULL;
    if (PyObject_GetBuffer(args[2], &op->view, PyBUF_WRITABLE) < 0) {
        memset(&op->view, 0, sizeof op->view);
        Py_DECREF(op);
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;   /* socket's own TypeError */
    }
    if (n == 0)
        n = op->view.len;
    if (n < 0 || n > op->view.len || (size_t)n > SOCK_MAX) {
        Py_DECREF(op);
        Py_RETURN_NOTIMPLEMENTED;   /* socket's own ValueError */
    }
    Py_INCREF(args[1]);
    op->lsock = args[1];
    PyObject *r = start_block(lp, op, GL_OP_SOCK_RECVFROM, op->view.buf, n, NULL, 0);
    Py_DECREF(op);
    return r;
}

/* loop._sock_sendto_go(fd, data, sockaddr bytes) -> int, a future, or NotImplemented */
PyObject *lc_sock_sendto_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 3 || fd_arg(args[0], &fd) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "_sock_sendto_go(fd, data, sockaddr)");
    if (fd < 0 || !PyBytes_CheckExact(args[2]) || PyBytes_GET_SIZE(args[2]) > GL_DGRAM_NAME_CAP)
        Py_RETURN_NOTIMPLEMENTED;
    SockOp *op = op_new(lp, SK_SENDTO, fd);
    if (op == NULL)
        return NULL;
    if (PyObject_GetBuffer(args[1], &op->view, PyBUF_SIMPLE) < 0) {
        memset(&op->view, 0, sizeof op->view);
        Py_DECREF(op);
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if ((size_t)op->view.len > SOCK_MAX) {
        Py_DECREF(op);
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *r = start_block(lp, op, GL_OP_SOCK_SENDTO, op->view.buf, op->view.len,
                              PyBytes_AS_STRING(args[2]), PyBytes_GET_SIZE(args[2]));
    Py_DECREF(op);
    return r;
}

/* _core._sock_sendfile_go(loop, fd, file_fd, offset, count) -> (res, aux),
 * a future (whose result is that pair), or NotImplemented (asyncio's path).
 * One GL_OP_SOCK_SENDFILE of at most GL_SENDFILE_MAX bytes: res is the
 * bytes sent (fewer than count only at the end of the file) or -errno, aux
 * the bytes sent before an error. file_fd is the caller's (loop.py's
 * duplicate): Go uses it only while the op is live, and the caller closes
 * it only after the op is answered. A module function, not a LoopCore
 * method: loop.c's method table is left alone. */
PyObject *sock_sendfile_go(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    (void)m;
    int fd, ffd;
    if (nargs != 5 || !PyObject_TypeCheck(args[0], LoopCore_Type) ||
        fd_arg(args[1], &fd) < 0 || fd_arg(args[2], &ffd) < 0)
        return PyErr_Occurred() ? NULL
            : PyErr_Format(PyExc_TypeError, "_sock_sendfile_go(loop, fd, file_fd, offset, count)");
    unsigned long long off = PyLong_AsUnsignedLongLong(args[3]);
    if (off == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(args[4]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || ffd < 0 || count <= 0 || (size_t)count > GL_SENDFILE_MAX || off > (unsigned long long)INT64_MAX)
        Py_RETURN_NOTIMPLEMENTED;
    LoopCore *lp = (LoopCore *)args[0];
    SockOp *op = op_new(lp, SK_SENDFILE, fd);
    if (op == NULL)
        return NULL;
    op->ffd = ffd;
    PyObject *r = op_start(lp, op, GL_OP_SOCK_SENDFILE, (const void *)(uintptr_t)off, (uint32_t)count);
    Py_DECREF(op);
    return r;
}

/* loop._sock_stop(token): the op's future is being cancelled. The stop is
 * applied now, before cancel() returns: Go reads or writes nothing more for
 * the op, and the program may close the socket right after. Its
 * acknowledgement (settled inside this call) releases the buffers. */
PyObject *lc_sock_stop(LoopCore *lp, PyObject *arg)
{
    uint64_t token = PyLong_AsUnsignedLongLong(arg);
    if (token == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    SockOp *op = (SockOp *)owners_get(lp, token);
    if (op == NULL || !op->inflight || op->stopping || lp->closed || !go_usable(lp))
        Py_RETURN_NONE;
    if (check_thread(lp) < 0)
        return NULL;
    op->stopping = 1;
    if (loop_submit(lp, GL_OP_SOCK_STOP, op->fd, token, NULL, 0, 0) < 0 || loop_apply_now(lp) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* loop.close(): the ops still in Go are stopped (their acknowledgements,
 * taken by the close's drain, release the buffers) and their futures
 * cancelled, as loop.close() cancels connects. */
void sockop_loop_closing(LoopCore *lp, PyObject *o)
{
    SockOp *op = (SockOp *)o;
    if (!op->inflight)
        return;
    Py_INCREF(op);
    if (!op->stopping) {
        op->stopping = 1;
        if (loop_submit(lp, GL_OP_SOCK_STOP, op->fd, op->token, NULL, 0, 0) < 0)
            PyErr_WriteUnraisable((PyObject *)lp);
    }
    if (op->fut != NULL) {
        PyObject *r = PyObject_CallMethod(op->fut, "cancel", NULL);
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)lp);
        Py_XDECREF(r);
    }
    Py_DECREF(op);
}

/* _core._sockops_setup(future_class, accepted, address) */
PyObject *sockops_setup(PyObject *m, PyObject *args)
{
    PyObject *cls, *acc, *addr;
    if (!PyArg_ParseTuple(args, "OOO", &cls, &acc, &addr))
        return NULL;
    Py_INCREF(addr);
    Py_XSETREF(Address, addr);
    Py_INCREF(cls);
    Py_XSETREF(SockFuture, cls);
    Py_INCREF(acc);
    Py_XSETREF(Accepted, acc);
    Py_RETURN_NONE;
}

int init_sockops(PyObject *m)
{
    str_sk = PyUnicode_InternFromString("_sk");
    kwnames_loop = Py_BuildValue("(s)", "loop");
    str_set_result = PyUnicode_InternFromString("set_result");
    str_set_exception = PyUnicode_InternFromString("set_exception");
    str_done = PyUnicode_InternFromString("done");
    str_sent = PyUnicode_InternFromString("_sent");
    SockOp_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &op_spec, NULL);
    return (str_sk == NULL || kwnames_loop == NULL || str_set_result == NULL ||
            str_set_exception == NULL || str_done == NULL || str_sent == NULL || SockOp_Type == NULL) ? -1 : 0;
}
