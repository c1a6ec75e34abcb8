/* The stream transport (TCP and Unix sockets): a real subclass of
 * asyncio.Transport whose fd lives in Go. write() hands Go a pointer into
 * the bytes object and keeps it referenced until the send completes (zero
 * copy); received chunks are copied out of Go's buffers into bytes (or into
 * a BufferedProtocol's buffer) and the buffer is given back in the next batch.
 *
 * The same object, in pipe mode, is the read or the write end of a pipe, a
 * socket or a character device (loop.connect_read_pipe/connect_write_pipe,
 * docs/subprocess.md): two more types over the same struct and the same
 * lifecycle, with asyncio's pipe semantics where they differ from a
 * socket's (EOF, write_eof, errors, the reader of a write pipe going away). */
#include "core.h"
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

/* transport_pack_inet4's layout, network order throughout. */
typedef struct {
    uint32_t l_addr, p_addr;
    uint16_t l_port, p_port;
} inet4_pair;

PyTypeObject *Transport_Type;
PyTypeObject *ReadPipeTransport_Type;
PyTypeObject *WritePipeTransport_Type;

enum { PIPE_NONE, PIPE_READ, PIPE_WRITE };


typedef struct {
    PyObject_HEAD
    PyObject *extra;            /* asyncio.BaseTransport's '_extra' slot: same offset */
    LoopCore *loop;
    PyObject *protocol;
    PyObject *data_received;    /* bound methods, looked up once per protocol */
    PyObject *get_buffer;
    PyObject *buffer_updated;
    PyObject *server;
    PyObject *sock;             /* the Python socket: user-visible, detached when Go closes the fd */
    PyObject *lost_exc;
    PyObject *held;             /* list: chunks (bytes) or None (EOF) that came while paused */
    PyObject *sf_waiter;        /* the future of the OpSendfile in Go's queue (sendfile.md) */
    PyObject *sf_file;          /* the file object whose fd that OpSendfile reads: kept open until EvSendfile */
    PyObject **sendq;           /* bytes objects Go is sending, oldest first */
    Py_ssize_t shead, slen, scap;
    Py_ssize_t wsize, high, low;     /* high/low: the limits as C numbers, saturated */
    PyObject *high_obj, *low_obj;   /* the limits as the program gave them (NULL: defaults) */
    int fd;
    int conn_lost;
    char buffered;
    char closing;
    char paused;
    char armed;                 /* Go is receiving for us */
    char eof_seen;              /* the receive ended with the end of the stream */
    /* The protocol has paused reading: from then on Go receives one chunk
     * per poll (GL_ARG_ONCE), so that a resume does not take all the socket
     * holds into memory, only for the protocol to pause again (arm). */
    char flow_controlled;
    char eof_written;
    char write_paused;
    char close_sent;            /* OpClose submitted: no more ops for this fd */
    char abort_sent;
    char aborted;
    char go_open;               /* Go owns the fd: from construction until EvClosed */
    char pinned;                /* holds a reference to itself (pin_update) */
    char lost_scheduled;        /* _call_connection_lost is on its way */
    char quiet_send_errors;     /* close() found every pending send still unsubmitted */
    char close_pending;         /* close() came with sends pending: OpClose follows the last */
    char sf_active;             /* loop.sendfile is under way (Python sets it): write() refuses */
    uint64_t enq_poll;          /* lp->polls when the last send was queued */
    Py_ssize_t enq_fresh;       /* sends queued since that poll: not yet handed to Go */
    /* The bytes object C made to gather small writes into (coalesce), or
     * NULL; a reference of its own, so that its address names it. */
    PyObject *cbuf;
    Py_ssize_t cbuf_cap;        /* its room (its size is what it holds now) */
    uint64_t token;             /* owner table slot (owners.c) */
    PyObject *weakreflist;
    /* pipe mode: sock is the owner of Go's own duplicate of the pipe's fd;
     * pipe is the program's object, closed by _call_connection_lost (or a
     * finalizer that warns), as asyncio's pipe transports close it. */
    PyObject *pipe;
    int pipe_fd;                /* the program's fd number, for repr */
    char pipe_mode;             /* PIPE_NONE (a stream), PIPE_READ, PIPE_WRITE */
    char hup_watch;             /* write pipe: Go polls the fd for its reader going away */
    char notsock;               /* a pipe or a tty: Go reads and writes it with read/write */
    /* A connection a server accepted in C (transport_accept): no socket
     * object until the program asks for extra info 'socket' (lazy_socket). */
    char sock_lazy;
    int sock_family, sock_type, sock_proto;
    /* Its IPv4 sockname and peername as Go's EvAccept carried them (network
     * order), made into extra's 'sockname' and 'peername' when first asked
     * (addrs_lazy): most servers never ask, and the two tuples with their
     * strings and ints were a fifth of a held connection's memory. */
    char addrs_lazy;
    uint16_t l_port, p_port;
    uint32_t l_addr, p_addr;
    /* Kernel TLS (tls.c, docs/ktls.md): during a handshake that may go to
     * the kernel, reads are one TLS record at a time (records), so nothing
     * past the handshake leaves the socket; then OpKTLS is in Go's hands
     * with ktls_params (ktls_wait: no read is asked until its answer). */
    char records;
    char ever_read;             /* a receive was ever asked for */
    char ktls_wait;
    /* A handshake runs in Go on a duplicate of the fd (goloop.TLSContext,
     * docs/gotls.md): nothing may be read until it ends, or Go's TLS
     * would miss records. */
    char go_hold;
    uint8_t ktls;               /* GL_KTLS_TX | GL_KTLS_RX installed */
    gl_ktls *ktls_params;
} Transport;

#define TOKEN(t) ((t)->token)

/* A transport keeps itself alive while Go has work that ends in a callback
 * or holds its memory: receiving (data_received may follow), sends in
 * flight (Go reads from bytes objects in sendq), or a close under way
 * (connection_lost follows EvClosed). Otherwise only the program holds it,
 * as asyncio's selector holds a transport only while reading or writing,
 * and a transport the program drops is collected: tr_finalize warns and
 * hands the fd to Go to close. Callers hold their own reference, so the
 * unpin's DECREF never frees the object under them. */
static void pin_update(Transport *t)
{
    int want = t->go_open && (t->armed || t->slen > 0 || t->close_sent || t->sf_waiter != NULL ||
                              t->hup_watch || t->ktls_wait);
    if (want && !t->pinned) {
        t->pinned = 1;
        Py_INCREF(t);
    } else if (!want && t->pinned) {
        t->pinned = 0;
        Py_DECREF(t);
    }
}

static int set_protocol(Transport *t, PyObject *protocol)
{
    static PyObject *buffered_cls = NULL;
    if (buffered_cls == NULL) {
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        if (asyncio == NULL)
            return -1;
        buffered_cls = PyObject_GetAttrString(asyncio, "BufferedProtocol");
        Py_DECREF(asyncio);
        if (buffered_cls == NULL)
            return -1;
    }
    int isbuf = PyObject_IsInstance(protocol, buffered_cls);
    if (isbuf < 0)
        return -1;
    PyObject *dr = NULL, *gb = NULL, *bu = NULL;
    if (isbuf) {
        gb = PyObject_GetAttrString(protocol, "get_buffer");
        bu = gb ? PyObject_GetAttrString(protocol, "buffer_updated") : NULL;
        if (bu == NULL) {
            Py_XDECREF(gb);
            return -1;
        }
    } else {
        dr = PyObject_GetAttrString(protocol, "data_received");
        if (dr == NULL) {
            /* asyncio accepts any object as a protocol until data arrives. */
            PyErr_Clear();
        }
    }
    Py_INCREF(protocol);
    Py_XSETREF(t->protocol, protocol);
    Py_XSETREF(t->data_received, dr);
    Py_XSETREF(t->get_buffer, gb);
    Py_XSETREF(t->buffer_updated, bu);
    t->buffered = (char)isbuf;
    return 0;
}

/* The file object of a finished (or never to finish: the loop is gone)
 * sendfile: closing it closes the fd Go read from, which is ours (a dup),
 * so the program's own file may have been closed meanwhile. */
static void sendfile_release(Transport *t)
{
    PyObject *file = t->sf_file;
    t->sf_file = NULL;
    Py_CLEAR(t->sf_waiter);
    if (file == NULL)
        return;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *r = PyObject_CallMethod(file, "close", NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(file);
    Py_XDECREF(r);
    Py_DECREF(file);
    PyErr_Restore(et, ev, etb);
}

/* A stream transport for fd, which Go owns from here on; sock is the
 * program's socket object for it, or NULL (made on demand: sock_lazy). */
static Transport *transport_make(PyTypeObject *tp, LoopCore *loop, int fd, PyObject *sock,
                                 PyObject *protocol, PyObject *extra, PyObject *server)
{
    if (loop_check_alive(loop) < 0)
        return NULL;
    Transport *t = (Transport *)tp->tp_alloc(tp, 0);
    if (t == NULL)
        return NULL;
    t->fd = fd;
    Py_XINCREF(sock);
    t->sock = sock;
    t->high = FLOW_DEFAULT_HIGH;
    t->low = FLOW_DEFAULT_HIGH / 4;
    t->paused = 0;
    Py_INCREF(loop);
    t->loop = loop;
    if (extra == Py_None) {
        t->extra = PyDict_New();
    } else {
        Py_INCREF(extra);
        t->extra = extra;
    }
    if (server != Py_None) {
        Py_INCREF(server);
        t->server = server;
    }
    if (t->extra == NULL || set_protocol(t, protocol) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    if (owners_bind(t->loop, (PyObject *)t, TAG_TRANSPORT, &t->token) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    t->go_open = 1;
    return t;
}

/* t has no socket object until the program asks (get_extra_info
 * 'socket'): loop._lazy_socket makes it for this family, type and proto. */
static void set_sock_lazy(Transport *t, int family, int type, int proto)
{
    t->sock_lazy = 1;
    t->sock_family = family;
    t->sock_type = type;
    t->sock_proto = proto;
}

/* A connection's IPv4 sockname and peername as Go brought them (network
 * order), kept until the program asks for them (materialize_addrs). */
static void set_addrs_lazy(Transport *t, uint32_t l_addr, uint16_t l_port, uint32_t p_addr, uint16_t p_port)
{
    t->addrs_lazy = 1;
    t->l_addr = l_addr;
    t->l_port = l_port;
    t->p_addr = p_addr;
    t->p_port = p_port;
}

/* What connect.c hands create_connection for Transport(kind=...): the
 * same four values, as one bytes object. */
PyObject *transport_pack_inet4(uint32_t l_addr, uint16_t l_port, uint32_t p_addr, uint16_t p_port)
{
    inet4_pair a = {l_addr, p_addr, l_port, p_port};
    return PyBytes_FromStringAndSize((const char *)&a, sizeof a);
}

/* Transport(loop, sock, protocol, extra=None, server=None, kind=None).
 * With kind=(family, type, proto[, packed]), sock is a bare fd number that
 * nothing else holds (create_connection's own socket, detached): the
 * transport makes its socket object when first asked, as transport_accept's
 * do, and with packed (connect.c's connected_addrs) its 'sockname' and
 * 'peername' too. */
static PyObject *tr_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"loop", "sock", "protocol", "extra", "server", "kind", NULL};
    PyObject *loop, *sock, *protocol, *extra = Py_None, *server = Py_None, *kind = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OO|OOO", kwlist, LoopCore_Type, &loop, &sock,
                                     &protocol, &extra, &server, &kind))
        return NULL;
    if (kind != Py_None) {
        int family, type, proto;
        PyObject *packed = NULL;
        int fd = PyLong_Check(sock) ? _PyLong_AsInt(sock) : -1;
        if (fd == -1 && PyErr_Occurred())
            return NULL;
        if (fd < 0 || !PyArg_ParseTuple(kind, "iii|O!", &family, &type, &proto, &PyBytes_Type, &packed)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "kind= takes a bare fd number");
            return NULL;
        }
        if (packed != NULL && (PyBytes_GET_SIZE(packed) != sizeof(inet4_pair) || family != AF_INET)) {
            PyErr_SetString(PyExc_ValueError, "kind=: packed IPv4 addresses are transport_pack_inet4's");
            return NULL;
        }
        Transport *t = transport_make(tp, (LoopCore *)loop, fd, NULL, protocol, extra, server);
        if (t == NULL)
            return NULL;
        set_sock_lazy(t, family, type, proto);
        if (packed != NULL) {
            inet4_pair a;
            memcpy(&a, PyBytes_AS_STRING(packed), sizeof a);
            set_addrs_lazy(t, a.l_addr, a.l_port, a.p_addr, a.p_port);
        }
        return (PyObject *)t;
    }
    PyObject *fdo = PyObject_CallMethod(sock, "fileno", NULL);
    if (fdo == NULL)
        return NULL;
    int fd = PyLong_AsLong(fdo);
    Py_DECREF(fdo);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the socket is closed");
        return NULL;
    }
    return (PyObject *)transport_make(tp, (LoopCore *)loop, fd, sock, protocol, extra, server);
}

/* Everything happens in tr_new; asyncio.BaseTransport.__init__ (which
 * would reset _extra) must not run. */
static int tr_init(PyObject *self, PyObject *args, PyObject *kw)
{
    return 0;
}

static int tr_traverse(Transport *t, visitproc visit, void *arg)
{
    Py_VISIT(t->extra);
    Py_VISIT(t->loop);
    Py_VISIT(t->protocol);
    Py_VISIT(t->data_received);
    Py_VISIT(t->get_buffer);
    Py_VISIT(t->buffer_updated);
    Py_VISIT(t->server);
    Py_VISIT(t->sock);
    Py_VISIT(t->lost_exc);
    Py_VISIT(t->held);
    Py_VISIT(t->sf_waiter);
    Py_VISIT(t->sf_file);
    Py_VISIT(t->high_obj);
    Py_VISIT(t->low_obj);
    Py_VISIT(t->pipe);
    Py_VISIT(Py_TYPE(t));
    return 0;
}

/* The keys' secrets live in C memory only while Go may read them. */
static void ktls_params_free(Transport *t)
{
    if (t->ktls_params != NULL) {
        memset(t->ktls_params, 0, sizeof *t->ktls_params);
        PyMem_RawFree(t->ktls_params);
        t->ktls_params = NULL;
    }
}

static int tr_clear(Transport *t)
{
    Py_CLEAR(t->extra);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->data_received);
    Py_CLEAR(t->get_buffer);
    Py_CLEAR(t->buffer_updated);
    Py_CLEAR(t->server);
    Py_CLEAR(t->sock);
    Py_CLEAR(t->lost_exc);
    Py_CLEAR(t->held);
    sendfile_release(t);
    Py_CLEAR(t->high_obj);
    Py_CLEAR(t->low_obj);
    Py_CLEAR(t->pipe);
    Py_CLEAR(t->cbuf);
    return 0;
}

/* ---- in a forked child (docs/architecture.md, "Fork") ----
 *
 * Go is not there: nothing the transport handed it will complete, and the
 * child's copy of the fd is the transport's own. It is closed when the
 * program closes or aborts the transport in the child, when the inherited
 * loop is closed there, or when the transport is collected: through the
 * socket object if the program had one made (a _GoOwnedSocket closes its
 * fd in a child), else by number, since a transport over a bare fd has
 * nothing else that would. Until then a worker may still take the
 * connection over (get_extra_info('socket')). */
static void child_close_fd(Transport *t)
{
    if (t->sock != NULL) {
        PyObject *r = PyObject_CallMethod(t->sock, "close", NULL);
        if (r == NULL)
            PyErr_WriteUnraisable(t->sock);
        Py_XDECREF(r);
    } else if (t->fd >= 0) {
        close(t->fd);
    }
}

static void child_close_copy(Transport *t)
{
    if (!t->go_open)
        return;
    t->go_open = 0;
    child_close_fd(t);
}

/* close() or abort() in a child: connection_lost would come from a loop
 * that cannot run there, so only the fd goes. */
static PyObject *child_close(Transport *t)
{
    t->closing = 1;
    Py_CLEAR(t->held);
    Py_INCREF(t);
    child_close_copy(t);
    pin_update(t);
    Py_DECREF(t);
    Py_RETURN_NONE;
}

/* At fork, in the child (loop.c, _after_fork_child): Go's answers will never
 * come, so a transport no longer pins itself; the pin's reference moves to
 * `into`, which the caller drops once every loop is done. An EvClosed the
 * parent's batch had not dispatched yet means Go closed the fd already:
 * the child has no copy of it to close (the number may be another file's). */
int transport_forked(PyObject *obj, int fd_gone, PyObject *into)
{
    Transport *t = (Transport *)obj;
    return owners_unpin_forked(obj, &t->go_open, &t->pinned, fd_gone, into);
}

/* The inherited loop closed in the child: as in the parent, where a loop's
 * close aborts its transports and Go closes their fds. */
void transport_child_loop_closing(PyObject *obj)
{
    Transport *t = (Transport *)obj;
    PyObject *r = child_close(t);
    Py_XDECREF(r);
}

/* Collected while open: only possible when Go has nothing in flight for
 * it (see pin_update). Warn as asyncio does, and hand the fd to Go to close
 * (the socket object must not close it: Go owns it). In a forked child Go
 * is not there; the child's copy of the fd is the socket object's to
 * close. */
static void pipe_close_object(Transport *t);

static void tr_finalize(Transport *t)
{
    /* A pipe transport warns, as asyncio's does, while it still holds the
     * program's pipe object (the loop may have closed Go's fd already). */
    int open_go = t->go_open && !t->close_sent && t->loop != NULL;
    int open_pipe = t->pipe_mode != PIPE_NONE && t->pipe != NULL && t->pipe != Py_None;
    if (!open_go && !open_pipe) {
        if (t->go_open && gl_forked()) {
            /* Closing in the parent when it forked: Go never closed the
             * child's copy. */
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            child_close_copy(t);
            PyErr_Restore(et, ev, etb);
        }
        return;
    }
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    /* (Go's fd of a pipe whose object the program took back, _pipe = None,
     * is closed quietly.) */
    if ((t->pipe_mode != PIPE_NONE ? open_pipe : open_go) &&
        PyErr_ResourceWarning((PyObject *)t, 1, "unclosed transport %R", t) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    if (open_pipe)
        pipe_close_object(t);
    if (!open_go) {
        PyErr_Restore(et, ev, etb);
        return;
    }
    t->go_open = 0;
    t->close_sent = t->abort_sent = 1;
    if (go_usable(t->loop)) {
        if (t->sock != NULL) {
            if (sockobj_detach(t->sock) < 0)
                PyErr_WriteUnraisable(t->sock);
        }
        loop_close_orphan(t->loop, t->fd);
    } else if (gl_forked()) {
        child_close_fd(t);
    }
    owners_release(t->loop, t->token);
    PyErr_Restore(et, ev, etb);
}

static void tr_dealloc(Transport *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
        return;   /* resurrected */
    PyObject_GC_UnTrack(t);
    if (t->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)t);
    tr_clear(t);
    /* Unpinned, so no send is in flight: Go no longer reads these. */
    for (Py_ssize_t i = 0; i < t->slen; i++)
        Py_DECREF(t->sendq[(t->shead + i) % t->scap]);
    PyMem_Free(t->sendq);
    ktls_params_free(t);
    if (t->loop != NULL)
        owners_release(t->loop, t->token);
    Py_CLEAR(t->loop);
    tp->tp_free(t);
    Py_DECREF(tp);
}

/* ---- helpers ---- */

/* A pipe's transport class says which errors asyncio logs (_pipes.py):
 * not the same as for a socket's. */
static void fatal_error(Transport *t, PyObject *exc, const char *msg)
{
    PyObject *r;
    if (t->pipe_mode != PIPE_NONE)
        r = PyObject_CallMethod((PyObject *)t, "_fatal_error", "Os", exc, msg);
    else if (HOOKS.fatal_error == NULL)
        return;
    else
        r = PyObject_CallFunction(HOOKS.fatal_error, "OOs", t, exc, msg);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r);
}

/* Report the pending exception as a fatal transport error; returns -1 only
 * for SystemExit/KeyboardInterrupt, which must leave the loop. */
static int fatal_from_current(Transport *t, const char *msg)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *value = take_exception();
    fatal_error(t, value ? value : Py_None, msg);
    Py_XDECREF(value);
    return 0;
}

static PyObject *oserror(int err)
{
    return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
}

static int schedule_method(Transport *t, const char *name, PyObject *arg)
{
    PyObject *m = PyObject_GetAttrString((PyObject *)t, name);
    if (m == NULL)
        return -1;
    PyObject *args = arg ? PyTuple_Pack(1, arg) : PyTuple_New(0);
    if (args == NULL) {
        Py_DECREF(m);
        return -1;
    }
    Handle *h = loop_call_soon(t->loop, m, args, NULL);
    Py_DECREF(m);
    Py_DECREF(args);
    if (h == NULL)
        return -1;
    Py_DECREF(h);
    return 0;
}

static int has_held(Transport *t)
{
    return t->held != NULL && PyList_GET_SIZE(t->held) > 0;
}

/* Ask Go to receive. Never while chunks that came during a pause are still
 * held (tr_deliver_held arms once it has handed them all over): a protocol
 * that pauses again while they go must find nothing more taken from the
 * socket meanwhile, else every resume would move the kernel's buffers into
 * held memory and the peer would never be held back (asyncio's transport
 * reads nothing while paused, so the kernel's buffers fill and the peer's
 * sends wait). Never after the end of the stream either: there is nothing
 * more to read, and a second receive would report the end again. */
static void arm(Transport *t)
{
    if (!t->armed && !t->close_sent && !t->ktls_wait && !t->go_hold && !t->eof_seen && !has_held(t) &&
        t->loop->h != 0) {
        uint32_t arg = (t->notsock ? GL_ARG_NOTSOCK : 0) | (t->flow_controlled ? GL_ARG_ONCE : 0);
        if (loop_submit(t->loop, t->records ? GL_OP_RECV_RECORD : GL_OP_RECV_START, t->fd, TOKEN(t),
                        NULL, 0, arg) == 0)
            t->armed = t->ever_read = 1;
        pin_update(t);
    }
}

static void disarm(Transport *t)
{
    if (t->armed && !t->close_sent) {
        if (loop_submit(t->loop, GL_OP_RECV_STOP, t->fd, TOKEN(t), NULL, 0, 0) == 0)
            t->armed = 0;
        pin_update(t);
    }
}

/* A graceful close may be followed by an abort (abort() after close(), or
 * the loop closing while the peer does not read). The abort is sent as an
 * upgrade: Go applies it only while that graceful close still waits behind
 * sends, so EvClosed comes exactly once and a reused fd number is never
 * touched. */
static int send_close(Transport *t, int abort)
{
    if (t->close_sent && (!abort || t->abort_sent))
        return 0;
    uint32_t arg = abort ? GL_CLOSE_ABORT : 0;
    int upgrade = abort && t->close_sent;
    if (upgrade)
        arg |= GL_CLOSE_UPGRADE;
    if (loop_submit(t->loop, GL_OP_CLOSE, t->fd, TOKEN(t), NULL, 0, arg) < 0)
        return -1;
    if (!upgrade)
        t->loop->closes_in_flight++;   /* an upgrade is answered by the first close's EvClosed */
    t->close_sent = 1;
    t->armed = 0;
    if (abort)
        t->abort_sent = 1;
    pin_update(t);
    return 0;
}

/* A close() that found sends pending leaves the transport open for writes
 * until they are done, as asyncio's does: its write() still buffers after
 * close() while the buffer drains (resume_writing may write the last
 * bytes: SSL's close_notify). So the graceful OpClose goes to Go once the
 * send queue is empty, not at close(). */
static int maybe_finish_close(Transport *t)
{
    if (!t->close_pending || t->slen > 0 || t->close_sent)
        return 0;
    t->close_pending = 0;
    t->conn_lost++;
    return send_close(t, 0);
}

/* pause_writing()/resume_writing() failing goes to the exception handler,
 * as asyncio's _FlowControlMixin does. -1 only for SystemExit and
 * KeyboardInterrupt, left set for the caller. */
static int call_flow_control(Transport *t, const char *method)
{
    return flow_call(t->loop, (PyObject *)t, t->protocol, method);
}

static void maybe_pause_protocol(Transport *t)
{
    if (t->wsize <= t->high || t->write_paused)
        return;
    t->write_paused = 1;
    call_flow_control(t, "pause_writing");
}

static int maybe_resume_protocol(Transport *t)
{
    if (!t->write_paused || t->wsize > t->low)
        return 0;
    t->write_paused = 0;
    return call_flow_control(t, "resume_writing");
}

/* ---- delivery ---- */

static int hold_front(Transport *t, const char *p, Py_ssize_t n);

/* Hand n bytes at p to the protocol. Returns -1 only for exceptions that
 * must leave the loop.
 *
 * Any callback may change what the rest of the bytes are owed to: the
 * protocol may switch (set_protocol), pause reading, or close the
 * transport. So the protocol's methods are looked at again, and held by a
 * reference of our own, for every piece: what asyncio would have read next
 * from the socket goes to whatever protocol is there then, or waits (paused),
 * or is dropped (closed). */
/* protocol.data_received(data), consuming data. */
static int data_received(Transport *t, PyObject *data)
{
    PyObject *dr = t->data_received;
    if (dr == NULL) {
        Py_DECREF(data);
        PyErr_SetString(PyExc_AttributeError, "protocol has no data_received()");
        return fatal_from_current(t, "Fatal error: protocol.data_received() call failed.");
    }
    Py_INCREF(dr);
    PyObject *r = PyObject_CallOneArg(dr, data);
    Py_DECREF(dr);
    Py_DECREF(data);
    if (r == NULL)
        return fatal_from_current(t, "Fatal error: protocol.data_received() call failed.");
    Py_DECREF(r);
    return 0;
}

static int deliver(Transport *t, const char *p, Py_ssize_t n)
{
    while (n > 0) {
        if (t->closing || t->conn_lost)
            return 0;   /* asyncio stops reading at close() */
        if (t->paused)
            return hold_front(t, p, n) < 0 ? fatal_from_current(t, "Fatal error: out of memory") : 0;
        if (!t->buffered) {
            PyObject *data = PyBytes_FromStringAndSize(p, n);
            if (data == NULL)
                return fatal_from_current(t, "Fatal error: out of memory");
            return data_received(t, data);
        }
        PyObject *gb = t->get_buffer, *bu = t->buffer_updated;
        Py_INCREF(gb);
        Py_INCREF(bu);
        PyObject *hint = PyLong_FromSsize_t(n);
        PyObject *buf = hint ? PyObject_CallOneArg(gb, hint) : NULL;
        Py_XDECREF(hint);
        Py_DECREF(gb);
        if (buf == NULL) {
            Py_DECREF(bu);
            return fatal_from_current(t, "Fatal error: protocol.get_buffer() call failed.");
        }
        Py_buffer view;
        if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
            /* What asyncio's sock.recv_into(buf) raises for it. */
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "recv_into() argument 1 must be read-write bytes-like object, not %.200s",
                         Py_TYPE(buf)->tp_name);
            Py_DECREF(buf);
            Py_DECREF(bu);
            return fatal_from_current(t, "Fatal error: protocol.get_buffer() call failed.");
        }
        Py_DECREF(buf);
        if (view.len == 0) {
            PyBuffer_Release(&view);
            Py_DECREF(bu);
            PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
            return fatal_from_current(t, "Fatal error: protocol.get_buffer() call failed.");
        }
        Py_ssize_t k = view.len < n ? view.len : n;
        memcpy(view.buf, p, k);
        PyBuffer_Release(&view);
        p += k;
        n -= k;
        PyObject *kk = PyLong_FromSsize_t(k);
        PyObject *r = kk ? PyObject_CallOneArg(bu, kk) : NULL;
        Py_XDECREF(kk);
        Py_DECREF(bu);
        if (r == NULL)
            return fatal_from_current(t, "Fatal error: protocol.buffer_updated() call failed.");
        Py_DECREF(r);
    }
    return 0;
}

static int pipe_eof(Transport *t);

static int on_eof(Transport *t)
{
    if (t->pipe_mode != PIPE_NONE)
        return pipe_eof(t);
    PyObject *r = PyObject_CallMethod(t->protocol, "eof_received", NULL);
    if (r == NULL)
        return fatal_from_current(t, "Fatal error: protocol.eof_received() call failed.");
    int keep = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (keep < 0)
        return fatal_from_current(t, "Fatal error: protocol.eof_received() call failed.");
    if (!keep) {
        PyObject *c = PyObject_CallMethod((PyObject *)t, "close", NULL);
        if (c == NULL)
            return fatal_from_current(t, "Fatal error: transport.close() failed.");
        Py_DECREF(c);
    }
    return 0;
}

static int hold(Transport *t, PyObject *item)
{
    if (t->held == NULL && (t->held = PyList_New(0)) == NULL)
        return -1;
    return PyList_Append(t->held, item);
}

/* The rest of a piece whose delivery a callback paused: it goes before
 * anything held after it. */
static int hold_front(Transport *t, const char *p, Py_ssize_t n)
{
    if (t->held == NULL && (t->held = PyList_New(0)) == NULL)
        return -1;
    PyObject *b = PyBytes_FromStringAndSize(p, n);
    if (b == NULL)
        return -1;
    int r = PyList_Insert(t->held, 0, b);
    Py_DECREF(b);
    return r;
}

/* Deliver what arrived while reading was paused, oldest first, for as long
 * as the protocol does not pause again. */
static PyObject *tr_deliver_held(Transport *t, PyObject *unused)
{
    while (has_held(t) && !t->paused && !t->closing) {
        PyObject *item = PyList_GET_ITEM(t->held, 0);
        Py_INCREF(item);
        if (PySequence_DelItem(t->held, 0) < 0) {
            Py_DECREF(item);
            return NULL;
        }
        int r;
        if (item == Py_None)
            r = on_eof(t);
        else if (t->conn_lost)
            r = 0;   /* (as deliver: nothing after close) */
        else if (!t->buffered)
            r = data_received(t, Py_NewRef(item));   /* a bytes nobody else holds now */
        else
            r = deliver(t, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item));
        Py_DECREF(item);
        if (r < 0)
            return NULL;
    }
    if (!t->paused && !t->closing)
        arm(t);   /* all delivered: receiving again (arm) */
    Py_RETURN_NONE;
}

static int on_recv(Transport *t, gl_comp *c)
{
    if (c->res > 0) {
        int r = 0;
        if (t->records && !(c->flags & GL_FLAG_MORE)) {
            /* A record read is answered once: the next is asked for below,
             * after the protocol had this one (it may end record mode).
             * Chunks with GL_FLAG_MORE come before the answer: what a
             * receive stopped earlier took in flight (goloop.h); the record
             * read is still pending behind them. */
            t->armed = 0;
            pin_update(t);
        }
        const char *p = (const char *)(uintptr_t)c->ptr;
        if (t->closing || t->conn_lost) {
            /* asyncio stops reading at close(): late chunks are dropped. */
        } else if (t->paused || has_held(t)) {
            PyObject *b = PyBytes_FromStringAndSize(p, c->res);
            if (b == NULL || hold(t, b) < 0)
                r = fatal_from_current(t, "Fatal error: out of memory");
            Py_XDECREF(b);
        } else if (!t->buffered && lend_wants(c)) {
            /* A large chunk: the program gets the bytes object it is in,
             * and the buffer has gone back with fresh memory (recvlend.c). */
            PyObject *data = lend_take(t->loop, c);
            if (data != NULL) {
                r = data_received(t, data);
                goto given_back;
            }
            if (PyErr_Occurred()) {
                /* (The buffer went back already: the chunk is lost.) */
                r = fatal_from_current(t, "Fatal error: out of memory");
                goto given_back;
            }
            r = deliver(t, p, c->res);
        } else {
            r = deliver(t, p, c->res);
        }
        /* The buffer goes back in the next batch, after C copied it out. */
        loop_submit(t->loop, GL_OP_BUF_RETURN, 0, 0, NULL, 0, c->buf);
    given_back:
        if (t->records && !t->paused && !t->closing && !t->conn_lost)
            arm(t);
        return r;
    }
    t->armed = 0;
    if (c->res == 0)
        t->eof_seen = 1;
    pin_update(t);
    if (t->closing || t->conn_lost)
        return 0;
    if (c->res == 0) {
        if (t->paused || has_held(t))
            return hold(t, Py_None) < 0 ? fatal_from_current(t, "Fatal error: out of memory") : 0;
        return on_eof(t);
    }
    const char *msg = t->pipe_mode != PIPE_NONE ? "Fatal read error on pipe transport"
                                                : "Fatal read error on socket transport";
    PyObject *exc;
    if (c->res == -EPROTO && (t->ktls & GL_KTLS_RX) && c->aux != 0) {
        /* A record the kernel handed over that is not data (goloop.h). */
        unsigned type = c->aux >> 8, code = c->aux & 0xff;
        exc = type == 21 ? PyObject_CallFunction(PyExc_ConnectionResetError, "is", EPROTO,
                                                 "the peer sent a fatal TLS alert")
                         : PyObject_CallFunction(PyExc_ConnectionResetError, "is", EPROTO,
                                                 "the peer sent a TLS record kernel TLS cannot follow");
        if (exc != NULL) {
            PyObject *v = PyLong_FromUnsignedLong(type == 21 ? code : c->aux);
            if (v == NULL || PyObject_SetAttrString(exc, type == 21 ? "tls_alert" : "tls_record", v) < 0)
                Py_CLEAR(exc);
            Py_XDECREF(v);
        }
    } else {
        exc = oserror(-c->res);
    }
    if (exc == NULL)
        return fatal_from_current(t, msg);
    fatal_error(t, exc, msg);
    Py_DECREF(exc);
    return 0;
}

static int on_send(Transport *t, gl_comp *c)
{
    if (t->slen == 0)
        return 0;
    PyObject *b = t->sendq[t->shead];
    t->shead = (t->shead + 1) % t->scap;
    t->slen--;
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    if (b == t->cbuf)
        Py_CLEAR(t->cbuf);
    Py_DECREF(b);
    pin_update(t);
    if (t->aborted)
        return 0;
    t->wsize -= n;
    if (c->res < 0) {
        if (c->res == -ECANCELED)
            return 0;
        if (t->pipe_mode != PIPE_NONE) {
            /* asyncio's pipe: any write error ends the transport, reported
             * as connection_lost(exc) (a vanished reader: BrokenPipeError),
             * logged only in debug mode; a write_eof() under way too. */
            PyObject *exc = oserror(-c->res);
            if (exc == NULL)
                return fatal_from_current(t, "Fatal write error on pipe transport");
            fatal_error(t, exc, "Fatal write error on pipe transport");
            Py_DECREF(exc);
            return 0;
        }
        if (t->closing && t->quiet_send_errors) {
            /* The program wrote, then closed, before Go had even been handed
             * those bytes. asyncio's write() hands bytes to the kernel at
             * once, so for it the connection ended cleanly at close(), and a
             * peer that resets it afterwards is no error of the program's:
             * connection_lost(None). Go's graceful close still follows the
             * failed sends and ends the connection. Sends that were already
             * with Go for a whole iteration and still unanswered at close()
             * are bytes the kernel would not take: asyncio would still hold
             * them too, and reports their failure. */
            return maybe_finish_close(t);
        }
        PyObject *exc = oserror(-c->res);
        if (exc == NULL)
            return fatal_from_current(t, "Fatal write error on socket transport");
        fatal_error(t, exc, "Fatal write error on socket transport");
        Py_DECREF(exc);
        return 0;
    }
    /* resume_writing may write more (asyncio: "May append to buffer"):
     * a pending close waits for that too. */
    if (maybe_resume_protocol(t) < 0)
        return -1;
    return maybe_finish_close(t);
}

/* connection_lost comes when the transport is done with the connection,
 * as in asyncio: at once for an abort or a close with nothing left to send,
 * after the last send for a graceful close (Go's EvClosed follows that send
 * in the same batch). Go may close the fd a little later; that is its own
 * business, and the fd is its own. */
static int schedule_lost(Transport *t)
{
    if (t->lost_scheduled)
        return 0;
    t->lost_scheduled = 1;
    PyObject *exc = t->lost_exc ? t->lost_exc : Py_None;
    Py_INCREF(exc);
    int r = schedule_method(t, "_call_connection_lost", exc);
    Py_DECREF(exc);
    return r;
}

static int on_closed(Transport *t)
{
    if (!t->go_open)
        return 0;  /* never twice: Go names a transport in one EvClosed */
    t->go_open = 0;
    t->armed = 0;
    if (t->sock != NULL) {
        /* Go closed the fd: the socket object must not close the number again. */
        if (sockobj_detach(t->sock) < 0)
            PyErr_WriteUnraisable(t->sock);
    }
    int r = schedule_lost(t);
    /* Go no longer names this transport: the loop may let it go. */
    pin_update(t);
    if (r < 0)
        PyErr_WriteUnraisable(NULL);
    return 0;
}

/* EvSendfile: the waiter gets (bytes sent, errno or 0); the file is let go.
 * A waiter already done (its coroutine was cancelled) only lets go. */
static int on_sendfile(Transport *t, gl_comp *c)
{
    PyObject *fut = t->sf_waiter;
    t->sf_waiter = NULL;
    int r = 0;
    if (fut != NULL) {
        long sent = c->res >= 0 ? (long)c->res : (long)c->aux;
        int err = c->res >= 0 ? 0 : -c->res;
        PyObject *done = PyObject_CallMethod(fut, "done", NULL);
        int isdone = done ? PyObject_IsTrue(done) : -1;
        Py_XDECREF(done);
        PyObject *res = NULL;
        if (isdone == 0) {
            res = PyObject_CallMethod(fut, "set_result", "((li))", sent, err);
            Py_XDECREF(res);
        }
        if (isdone < 0 || (isdone == 0 && res == NULL))
            r = fatal_from_current(t, "Fatal error: sendfile's waiter failed");
        Py_DECREF(fut);
    }
    sendfile_release(t);
    pin_update(t);
    return r;
}

/* Several chunks for one Protocol in a row (a large message arriving in
 * more than one receive buffer) become one bytes object and one
 * data_received call, as one large read would give them. Everything is
 * copied and every buffer given back before Python runs. */
int transport_recv_run(LoopCore *lp, PyObject *obj, gl_comp *c, int n)
{
    Transport *t = (Transport *)obj;
    int lend = 0;
    for (int i = 0; i < n && !lend; i++)
        lend = lend_wants(&c[i]);
    /* (A run with a large chunk goes chunk by chunk: each large one is
     * handed over without a copy, which beats one call for the run.) */
    if (lend || t->buffered || t->closing || t->conn_lost || t->paused || t->data_received == NULL ||
        has_held(t)) {
        for (int i = 0; i < n; i++) {
            gl_comp ci = c[i];
            if (transport_dispatch(lp, obj, &ci) < 0)
                return -1;
        }
        return 0;
    }
    Py_ssize_t total = 0;
    for (int i = 0; i < n; i++)
        total += c[i].res;
    PyObject *data = PyBytes_FromStringAndSize(NULL, total);
    char *p = data ? PyBytes_AS_STRING(data) : NULL;
    for (int i = 0; i < n; i++) {
        if (p != NULL) {
            memcpy(p, (const char *)(uintptr_t)c[i].ptr, c[i].res);
            p += c[i].res;
        }
        loop_submit(lp, GL_OP_BUF_RETURN, 0, 0, NULL, 0, c[i].buf);
    }
    Py_INCREF(t);
    int r = data == NULL ? fatal_from_current(t, "Fatal error: out of memory") : data_received(t, data);
    Py_DECREF(t);
    return r;
}

static int on_hup(Transport *t, gl_comp *c);

/* EvKTLS: the keys are in (reads start again, now plaintext), or they are
 * not and the connection carries on in user space (reads start again, still
 * records from the wire), or half went in and the protocol ends it. */
static int on_ktls(Transport *t, gl_comp *c)
{
    ktls_params_free(t);
    t->ktls_wait = 0;
    pin_update(t);
    if (c->res == 0)
        t->ktls = (uint8_t)c->aux;
    if (t->closing || t->conn_lost || c->res == -ECANCELED)
        return 0;
    int r = 0;
    if (t->protocol != NULL && Py_IS_TYPE(t->protocol, TLSProtocol_Type))
        r = tls_ktls_done(t->protocol, c->res, c->aux);
    if (!t->paused && !t->closing && !t->conn_lost)
        arm(t);
    return r;
}

int transport_dispatch(LoopCore *lp, PyObject *obj, gl_comp *c)
{
    Transport *t = (Transport *)obj;
    int r = 0;
    Py_INCREF(t);
    switch (c->kind) {
    case GL_EV_RECV:
        r = on_recv(t, c);
        break;
    case GL_EV_SEND:
        r = on_send(t, c);
        break;
    case GL_EV_CLOSED:
        r = on_closed(t);
        break;
    case GL_EV_SENDFILE:
        r = on_sendfile(t, c);
        break;
    case GL_EV_POLL:
        r = on_hup(t, c);
        break;
    case GL_EV_KTLS:
        r = on_ktls(t, c);
        break;
    default:
        break;
    }
    Py_DECREF(t);
    return r;
}

void transport_loop_closing(LoopCore *lp, PyObject *obj)
{
    Transport *t = (Transport *)obj;
    t->aborted = 1;
    t->conn_lost++;
    t->closing = 1;
    if (send_close(t, 1) < 0)
        PyErr_Clear();
}

/* ---- for tls.c: kernel TLS ---- */

static int enqueue_arg(Transport *t, PyObject *b, uint32_t arg);

int transport_is_fresh_socket(PyObject *tr, int tcp_only)
{
    if (!Py_IS_TYPE(tr, Transport_Type))
        return 0;
    Transport *t = (Transport *)tr;
    if (t->pipe_mode != PIPE_NONE || t->notsock || t->ever_read || t->closing || t->conn_lost || !t->go_open ||
        t->close_sent || has_held(t))
        return 0;
    if (!tcp_only)
        return 1;
    int family = t->sock_family;
    if (family == 0 && t->sock != NULL) {
        PyObject *f = PyObject_GetAttrString(t->sock, "family");
        family = f ? (int)PyLong_AsLong(f) : -1;
        Py_XDECREF(f);
        PyErr_Clear();
    }
    return family == AF_INET || family == AF_INET6;   /* kernel TLS is TCP's */
}

/* Record mode on: from the next read on. Off: the read under way (one
 * record at most) still comes, and nothing more is asked until OpKTLS's
 * answer (transport_ktls) or, when the caller gives up on kernel TLS, at
 * once with plain reads. */
void transport_set_records(PyObject *tr, int on)
{
    Transport *t = (Transport *)tr;
    t->records = on ? 1 : 0;
    if (!on && !t->ktls_wait && !t->paused && !t->closing && !t->conn_lost)
        arm(t);
}

/* Held: no receive is asked for (one under way is not stopped: only a
 * transport that never read is held). Let go: reads may start, once
 * OpKTLS's answer lets them (transport_ktls follows at once). */
void transport_hold(PyObject *tr, int on)
{
    ((Transport *)tr)->go_hold = on ? 1 : 0;
}

int transport_fileno(PyObject *tr)
{
    Transport *t = (Transport *)tr;
    return t->go_open && !t->close_sent ? t->fd : -1;
}

int transport_ktls(PyObject *tr, const gl_ktls *k)
{
    Transport *t = (Transport *)tr;
    if (t->ktls_wait || t->close_sent || !t->go_open) {
        PyErr_SetString(PyExc_RuntimeError, "kernel TLS: the transport cannot take it now");
        return -1;
    }
    gl_ktls *copy = PyMem_RawMalloc(sizeof *copy);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, k, sizeof *copy);
    if (loop_submit(t->loop, GL_OP_KTLS, t->fd, TOKEN(t), copy, sizeof *copy, 0) < 0) {
        memset(copy, 0, sizeof *copy);
        PyMem_RawFree(copy);
        return -1;
    }
    t->records = 0;
    t->ktls_params = copy;
    t->ktls_wait = 1;
    pin_update(t);
    return 0;
}

/* One record of the given type through kernel TLS (a close_notify alert),
 * in order with the writes. */
int transport_send_record(PyObject *tr, int type, const char *p, Py_ssize_t n)
{
    Transport *t = (Transport *)tr;
    if (!(t->ktls & GL_KTLS_TX) || t->close_sent || t->conn_lost)
        return 0;
    PyObject *b = PyBytes_FromStringAndSize(p, n);
    if (b == NULL)
        return -1;
    int r = enqueue_arg(t, b, GL_ARG_RECTYPE(type));
    Py_DECREF(b);
    return r;
}

/* ---- accepted in C ---- */

static PyObject *tr_force_close(Transport *t, PyObject *exc);

/* (host, port) of an IPv4 address and port as they lie in a sockaddr
 * (network order): what socket's getsockname gives for AF_INET. */
PyObject *inet4_address(uint32_t addr, uint16_t port)
{
    char host[INET_ADDRSTRLEN];
    struct in_addr a;
    a.s_addr = addr;   /* as it lay in the sockaddr: network order */
    if (inet_ntop(AF_INET, &a, host, sizeof host) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", host, (int)ntohs(port));
}

/* extra's 'sockname' and 'peername' of a transport_accept transport, from
 * the addresses kept since its EvAccept: as asyncio's transport has them
 * from birth, made when first asked. */
static int materialize_addrs(Transport *t)
{
    PyObject *local = inet4_address(t->l_addr, t->l_port);
    PyObject *peer = local ? inet4_address(t->p_addr, t->p_port) : NULL;
    int r = peer == NULL ? -1 : 0;
    if (r == 0 && (PyDict_SetItemString(t->extra, "sockname", local) < 0 ||
                   PyDict_SetItemString(t->extra, "peername", peer) < 0))
        r = -1;
    Py_XDECREF(local);
    Py_XDECREF(peer);
    if (r == 0)
        t->addrs_lazy = 0;
    return r;
}

/* A server's new IPv4 connection, from Go's EvAccept to a transport with
 * connection_made scheduled, in C: what _streams._accept_connection_fd and
 * _make_socket_transport do in Python for every other connection, in the
 * same order with the same outcomes. The fd is Go's from here on (no socket
 * object until the program asks); the listening socket already had
 * TCP_NODELAY set, which accepted sockets inherit. A failure closes the
 * connection and goes to loop._accept_failed (debug mode reports it). */
int transport_accept(LoopCore *lp, gl_comp *c, PyObject *factory, PyObject *server,
                     int family, int type, int proto)
{
    int fd = c->res;
    Transport *t = NULL;
    PyObject *extra = NULL, *made = NULL, *args = NULL;
    PyObject *protocol = PyObject_CallNoArgs(factory);
    if (protocol == NULL)
        goto fail;
    /* A protocol without connection_made fails here, as asyncio's
     * transport constructor does. */
    made = PyObject_GetAttrString(protocol, "connection_made");
    if (made == NULL || (extra = PyDict_New()) == NULL)
        goto fail;
    t = transport_make(Transport_Type, lp, fd, NULL, protocol, extra, server);
    if (t == NULL)
        goto fail;
    fd = -1;   /* the transport's now: closing it closes the fd */
    set_addrs_lazy(t, c->buf, (uint16_t)(c->aux >> 16), (uint32_t)c->ptr, (uint16_t)(c->ptr >> 32));
    set_sock_lazy(t, family, type, proto);
    if (server != Py_None) {
        PyObject *r = PyObject_CallMethod(server, "_attach", NULL);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    args = PyTuple_Pack(1, (PyObject *)t);
    if (args == NULL)
        goto fail;
    Handle *h = loop_call_soon(lp, made, args, NULL);
    if (h == NULL)
        goto fail;
    Py_DECREF(h);
    if (schedule_method(t, "_start_reading", NULL) < 0)
        goto fail;
    Py_DECREF(args);
    Py_DECREF(made);
    Py_DECREF(extra);
    Py_DECREF(protocol);
    Py_DECREF(t);
    return 0;

fail:;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (fd >= 0)
        loop_close_orphan(lp, fd);
    else if (t != NULL) {
        PyObject *a = tr_force_close(t, Py_None);   /* Go closes the fd */
        if (a == NULL)
            PyErr_Clear();
        Py_XDECREF(a);
    }
    int r = 0;
    if (ev != NULL && (PyErr_GivenExceptionMatches(ev, PyExc_SystemExit) ||
                       PyErr_GivenExceptionMatches(ev, PyExc_KeyboardInterrupt))) {
        PyErr_Restore(et, ev, etb);
        r = -1;
    } else {
        PyObject *res = PyObject_CallMethod((PyObject *)lp, "_accept_failed", "OOO",
                                            ev ? ev : Py_None, protocol ? protocol : Py_None,
                                            t ? (PyObject *)t : Py_None);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        if (res == NULL)
            r = -1;
        Py_XDECREF(res);
    }
    Py_XDECREF(args);
    Py_XDECREF(made);
    Py_XDECREF(extra);
    Py_XDECREF(protocol);
    Py_XDECREF((PyObject *)t);
    return r;
}

/* get_extra_info as asyncio.BaseTransport's, except that a transport made
 * by transport_accept makes its socket object, and its 'sockname' and
 * 'peername', when first asked: most programs never ask, and making the
 * socket object is most of a connection's Python cost.
 * loop._lazy_socket makes it (the fd is Go's: a _GoOwnedSocket; after
 * Go closed the fd, a detached one, as asyncio's closed socket). */
static PyObject *tr_get_extra_info(Transport *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get_extra_info() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *name = args[0], *dflt = nargs > 1 ? args[1] : Py_None;
    if (t->extra == NULL)
        return Py_NewRef(dflt);
    PyObject *v = PyDict_GetItemWithError(t->extra, name);
    if (v != NULL)
        return Py_NewRef(v);
    if (PyErr_Occurred())
        return NULL;
    if (t->addrs_lazy && PyUnicode_Check(name) &&
        (PyUnicode_CompareWithASCIIString(name, "sockname") == 0 ||
         PyUnicode_CompareWithASCIIString(name, "peername") == 0)) {
        if (materialize_addrs(t) < 0)
            return NULL;
        /* (A str subclass with its own hash may still miss.) */
        v = PyDict_GetItemWithError(t->extra, name);
        if (v != NULL)
            return Py_NewRef(v);
        if (PyErr_Occurred())
            return NULL;
        return Py_NewRef(dflt);
    }
    if (t->sock_lazy && t->sock == NULL && t->loop != NULL && PyUnicode_Check(name) &&
        PyUnicode_CompareWithASCIIString(name, "socket") == 0) {
        if (t->go_open) {
            PyObject *sock, *tsock;
            int made = sockobj_make((PyObject *)t->loop, (PyObject *)t, t->sock_family, t->sock_type,
                                    t->sock_proto, t->fd, &sock, &tsock);
            if (made < 0)
                return NULL;
            if (made) {
                t->sock = sock;
                if (PyDict_SetItemString(t->extra, "socket", tsock) < 0) {
                    Py_DECREF(tsock);
                    return NULL;
                }
                return tsock;
            }
        }
        PyObject *pair = PyObject_CallMethod((PyObject *)t->loop, "_lazy_socket", "Oiiiii",
                                             (PyObject *)t, t->sock_family, t->sock_type,
                                             t->sock_proto, t->fd, (int)t->go_open);
        if (pair == NULL)
            return NULL;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "_lazy_socket: (socket, transport socket) expected");
            return NULL;
        }
        t->sock = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        v = PyTuple_GET_ITEM(pair, 1);
        int r = PyDict_SetItemString(t->extra, "socket", v);
        Py_INCREF(v);
        Py_DECREF(pair);
        if (r < 0) {
            Py_DECREF(v);
            return NULL;
        }
        return v;
    }
    return Py_NewRef(dflt);
}

/* ---- Python methods ---- */

static PyObject *tr_start_reading(Transport *t, PyObject *unused)
{
    if (!t->paused && !t->closing)
        arm(t);
    Py_RETURN_NONE;
}

static int enqueue(Transport *t, PyObject *b)
{
    return enqueue_arg(t, b, 0);
}

static int enqueue_arg(Transport *t, PyObject *b, uint32_t arg)
{
    if (t->slen == t->scap) {
        Py_ssize_t ncap = t->scap ? t->scap * 2 : 8;
        PyObject **n = PyMem_Malloc(sizeof(PyObject *) * ncap);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < t->slen; i++)
            n[i] = t->sendq[(t->shead + i) % t->scap];
        PyMem_Free(t->sendq);
        t->sendq = n;
        t->scap = ncap;
        t->shead = 0;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(b);
    if (loop_submit(t->loop, GL_OP_SEND, t->fd, TOKEN(t), PyBytes_AS_STRING(b), (uint32_t)len,
                    (t->notsock ? GL_ARG_NOTSOCK : 0) | arg) < 0)
        return -1;
    Py_INCREF(b);
    t->sendq[(t->shead + t->slen) % t->scap] = b;
    t->slen++;
    t->wsize += len;
    if (t->enq_poll != t->loop->polls) {
        t->enq_poll = t->loop->polls;
        t->enq_fresh = 0;
    }
    t->enq_fresh++;
    pin_update(t);
    return 0;
}

/* asyncio's write() hands the bytes to the kernel at once and counts as
 * buffered only what the kernel did not take. goloop hands Go the
 * iteration's writes in one batch at its end (as uvloop also defers small
 * writes), so until then they count as buffered. Past the high-water mark
 * that lag would pause a writer the kernel would not have paused, and
 * drain() would wait for nothing: so there the batch goes to Go at once,
 * and the sends that completed in it (every byte taken) are accounted for
 * before the caller decides whether to pause. Also when the program asks
 * for the buffer size, so it reads what asyncio would read.
 *
 * Their records, appended after the batch being dispatched, are consumed
 * here (token 0: dispatch skips them). The send queue is in Go's order, so
 * a completion taken here may release a bytes object whose own record is
 * still ahead in the batch: Go completing a later send means the earlier
 * ones were sent. A failed send is left for dispatch to report. */
static int flush_now(Transport *t)
{
    LoopCore *lp = t->loop;
    int from = lp->ncomps;
    if (loop_apply_now(lp) < 0)
        return -1;
    for (int i = from; i < lp->ncomps && t->slen > 0; i++) {
        gl_comp *c = &lp->comps[i];
        if (c->token != TOKEN(t) || c->kind != GL_EV_SEND)
            continue;
        if (c->res < 0)
            break;
        c->token = 0;
        PyObject *b = t->sendq[t->shead];
        t->shead = (t->shead + 1) % t->scap;
        t->slen--;
        t->wsize -= PyBytes_GET_SIZE(b);
        if (b == t->cbuf)
            Py_CLEAR(t->cbuf);
        Py_DECREF(b);
    }
    pin_update(t);
    return maybe_finish_close(t);
}

static int unsubmitted(Transport *t)
{
    return t->enq_poll == t->loop->polls && t->enq_fresh > 0;
}

/* Small writes made one after another in an iteration go to Go as one
 * send: the data of each is copied onto the end of the send still waiting
 * at the end of the batch (into a bytes object C makes for it the first
 * time), where each would otherwise cost a submission, an entry in Go's
 * queue and a completion. uvloop likewise copies small writes into one
 * buffer. Only the very last record of the batch is extended, and only
 * while it is this transport's plain send: nothing submitted after it (a
 * shutdown, kernel TLS keys, a record send) can end up after the bytes
 * appended to it, and nothing has been handed to Go yet, so its memory
 * and length are still C's to change. One record stays one entry of
 * sendq, so completions still match entries one to one. */
#define COALESCE_SMALL 1024         /* writes at most this long are copied */
#define COALESCE_MAX (64 * 1024)    /* a gathered send grows to at most this */

static int coalesce(Transport *t, const char *p, Py_ssize_t n)
{
    LoopCore *lp = t->loop;
    if (n > COALESCE_SMALL || t->slen == 0 || t->pipe_mode != PIPE_NONE || lp->nsubs == 0 ||
        t->enq_poll != lp->polls)
        return 0;
    gl_sub *s = &lp->subs[lp->nsubs - 1];
    Py_ssize_t last = (t->shead + t->slen - 1) % t->scap;
    PyObject *tail = t->sendq[last];
    Py_ssize_t used = PyBytes_GET_SIZE(tail);
    if (s->op != GL_OP_SEND || s->token != TOKEN(t) || s->arg != (t->notsock ? GL_ARG_NOTSOCK : 0) ||
        s->ptr != (uint64_t)(uintptr_t)PyBytes_AS_STRING(tail) || s->len != (uint64_t)used)
        return 0;
    if (tail != t->cbuf && used > COALESCE_SMALL)
        return 0;   /* a large write stays the program's object, uncopied */
    if (used + n > COALESCE_MAX)
        return 0;
    PyObject *into = tail;
    if (tail != t->cbuf || t->cbuf_cap < used + n) {
        /* A new gathering object, twice as large as needed: small enough
         * for pymalloc when two short writes are all there is (an HTTP
         * response's head and body), grown (and copied) as a run goes on. */
        Py_ssize_t cap = 2 * (used + n) < 256 ? 256 : 2 * (used + n);
        if (cap > COALESCE_MAX)
            cap = COALESCE_MAX;
        into = PyBytes_FromStringAndSize(NULL, cap);
        if (into == NULL) {
            PyErr_Clear();
            return 0;   /* queued on its own instead */
        }
        memcpy(PyBytes_AS_STRING(into), PyBytes_AS_STRING(tail), used);
        t->sendq[last] = into;          /* sendq's reference, in place of tail's */
        Py_DECREF(tail);
        Py_XSETREF(t->cbuf, Py_NewRef(into));
        t->cbuf_cap = cap;
        s->ptr = (uint64_t)(uintptr_t)PyBytes_AS_STRING(into);
    }
    /* Not seen by any Python code: its size is what Go is to send. */
    memcpy(PyBytes_AS_STRING(into) + used, p, n);
    Py_SET_SIZE(into, used + n);
    PyBytes_AS_STRING(into)[used + n] = '\0';
    s->len = (uint32_t)(used + n);
    t->wsize += n;
    return 1;
}

static int write_one(Transport *t, PyObject *data)
{
    PyObject *b;
    if (PyBytes_CheckExact(data)) {
        Py_INCREF(data);
        b = data;
    } else if (PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data)) {
        if (PyMemoryView_Check(data) && !PyBuffer_IsContiguous(PyMemoryView_GET_BUFFER(data), 'C') &&
            !t->eof_written && !t->conn_lost && !t->close_sent &&
            !(t->pipe_mode != PIPE_NONE && t->closing)) {
            /* asyncio's write() accepts it and its send() then fails: a
             * fatal write error, reported and the connection closed. */
            PyErr_SetString(PyExc_BufferError, "memoryview: underlying buffer is not C-contiguous");
            return fatal_from_current(t, t->pipe_mode != PIPE_NONE ? "Fatal write error on pipe transport"
                                                                   : "Fatal write error on socket transport");
        }
        /* bytearray and memoryview can change under us: copy, as asyncio does. */
        b = PyBytes_FromObject(data);
        if (b == NULL)
            return -1;
    } else if (t->pipe_mode != PIPE_NONE) {
        /* asyncio's pipe transport asserts the type */
        PyObject *rep = PyObject_Repr(data);
        if (rep != NULL) {
            PyErr_SetObject(PyExc_AssertionError, rep);
            Py_DECREF(rep);
        }
        return -1;
    } else {
        PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%s'",
                     Py_TYPE(data)->tp_name);
        return -1;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(b);
    if (t->eof_written && t->pipe_mode == PIPE_NONE) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return -1;
    }
    if (len == 0) {
        Py_DECREF(b);
        return 0;
    }
    /* A pipe after write_eof()/close() counts and drops them, as asyncio's. */
    if (t->conn_lost || t->close_sent || (t->pipe_mode != PIPE_NONE && t->closing)) {
        if (t->conn_lost >= 5) {
            /* asyncio's warning for a program that keeps writing to a dead socket */
            PyObject *log = PyImport_ImportModule("asyncio.log");
            PyObject *lg = log ? PyObject_GetAttrString(log, "logger") : NULL;
            PyObject *r = lg ? PyObject_CallMethod(lg, "warning", "s",
                                                   t->pipe_mode != PIPE_NONE
                                                   ? "pipe closed by peer or os.write(pipe, data) raised exception."
                                                   : "socket.send() raised exception.") : NULL;
            Py_XDECREF(r);
            Py_XDECREF(lg);
            Py_XDECREF(log);
            PyErr_Clear();
        }
        t->conn_lost++;
        Py_DECREF(b);
        return 0;
    }
    /* asyncio's write pipe writes at once when nothing is buffered: the
     * program (or a test) may read the other end before the loop runs
     * again. So an idle write pipe hands the batch to Go now. */
    int write_now = t->pipe_mode == PIPE_WRITE && t->slen == 0;
    /* Go takes lengths as uint32: split anything larger. */
    const Py_ssize_t max = 1 << 30;
    if (len > max) {
        for (Py_ssize_t off = 0; off < len; off += max) {
            Py_ssize_t k = len - off < max ? len - off : max;
            PyObject *part = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b) + off, k);
            if (part == NULL || enqueue(t, part) < 0) {
                Py_XDECREF(part);
                Py_DECREF(b);
                return -1;
            }
            Py_DECREF(part);
        }
    } else if (!write_now && coalesce(t, PyBytes_AS_STRING(b), len)) {
        /* appended to the send before it */
    } else if (enqueue(t, b) < 0) {
        Py_DECREF(b);
        return -1;
    }
    Py_DECREF(b);
    if ((write_now || (t->wsize > t->high && !t->write_paused)) && unsubmitted(t) && flush_now(t) < 0)
        return -1;
    maybe_pause_protocol(t);
    return PyErr_Occurred() ? -1 : 0;
}

/* _sendfile(file, offset, count, waiter): queue OpSendfile behind the
 * writes already made; EvSendfile settles waiter. file is a file object
 * the transport keeps, and closes, once Go is done with its fd. One at a
 * time, as asyncio's transports allow. */
static PyObject *tr_sendfile(Transport *t, PyObject *args)
{
    PyObject *file, *fut;
    unsigned long long offset;
    unsigned int count;
    if (!PyArg_ParseTuple(args, "OKIO:_sendfile", &file, &offset, &count, &fut))
        return NULL;
    if (t->sf_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sendfile is in progress");
        return NULL;
    }
    if (t->closing || t->close_sent || t->conn_lost || !t->go_open) {
        PyErr_SetString(PyExc_RuntimeError, "Transport is closing");
        return NULL;
    }
    if (t->eof_written) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    if (count == 0 || count > GL_SENDFILE_MAX) {
        PyErr_SetString(PyExc_ValueError, "sendfile count out of range");
        return NULL;
    }
    int ffd = PyObject_AsFileDescriptor(file);
    if (ffd < 0)
        return NULL;
    if (loop_submit(t->loop, GL_OP_SENDFILE, t->fd, TOKEN(t), (const void *)(uintptr_t)offset,
                    count, (uint32_t)ffd) < 0)
        return NULL;
    Py_INCREF(fut);
    t->sf_waiter = fut;
    Py_INCREF(file);
    t->sf_file = file;
    pin_update(t);
    Py_RETURN_NONE;
}

/* asyncio's transports refuse a write while loop.sendfile is under way.
 * A sendfile whose coroutine was cancelled goes on in Go: later writes
 * queue behind the rest of the file, in order. */
static int refuse_during_sendfile(Transport *t)
{
    if (!t->sf_active)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
    return -1;
}

static PyObject *tr_write(Transport *t, PyObject *data)
{
    if (refuse_during_sendfile(t) < 0)
        return NULL;
    if (write_one(t, data) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tr_writelines(Transport *t, PyObject *seq)
{
    if (refuse_during_sendfile(t) < 0)
        return NULL;
    PyObject *it = PyObject_GetIter(seq);
    if (it == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        int r = write_one(t, item);
        Py_DECREF(item);
        if (r < 0) {
            Py_DECREF(it);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tr_write_eof(Transport *t, PyObject *unused)
{
    if (t->closing || t->eof_written)
        Py_RETURN_NONE;
    t->eof_written = 1;
    if (!t->close_sent && loop_submit(t->loop, GL_OP_SHUTDOWN, t->fd, TOKEN(t), NULL, 0, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tr_can_write_eof(Transport *t, PyObject *unused)
{
    Py_RETURN_TRUE;
}

static PyObject *tr_close(Transport *t, PyObject *unused)
{
    if (gl_forked())
        return child_close(t);
    if (t->closing)
        Py_RETURN_NONE;
    t->closing = 1;
    disarm(t);
    Py_CLEAR(t->held);
    if (!t->conn_lost) {
        Py_ssize_t fresh = t->enq_poll == t->loop->polls ? t->enq_fresh : 0;
        t->quiet_send_errors = t->slen == fresh;
        /* asyncio's close() finds its buffer empty when the kernel took
         * every write: then connection_lost is on its way at once. So the
         * writes still waiting for the batch go to Go now, and what the
         * kernel took at once is accounted for before deciding. */
        if (fresh > 0 && !t->aborted && flush_now(t) < 0)
            return NULL;
        if (t->slen > 0 && t->sf_waiter == NULL) {
            /* Writes are still taken until the queue is empty; then Go
             * closes the fd (maybe_finish_close) and EvClosed brings
             * connection_lost. */
            t->close_pending = 1;
        } else {
            /* Graceful: Go closes the fd after what is queued. A sendfile
             * still in Go's queue is sent first (writes are refused while
             * it runs): connection_lost then follows EvClosed. */
            t->conn_lost++;
            if (send_close(t, 0) < 0)
                return NULL;
            if (t->slen == 0 && t->sf_waiter == NULL && schedule_lost(t) < 0)
                return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *tr_force_close(Transport *t, PyObject *exc)
{
    if (gl_forked())
        return child_close(t);
    if (t->aborted || !t->go_open)
        Py_RETURN_NONE;
    if (exc != Py_None && t->lost_exc == NULL) {
        Py_INCREF(exc);
        t->lost_exc = exc;
    }
    t->closing = 1;
    Py_CLEAR(t->held);
    t->conn_lost++;
    t->aborted = 1;
    t->wsize = 0;
    if (send_close(t, 1) < 0 || schedule_lost(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tr_abort(Transport *t, PyObject *unused)
{
    return tr_force_close(t, Py_None);
}

static PyObject *tr_call_connection_lost(Transport *t, PyObject *exc)
{
    PyObject *r = NULL;
    if (t->protocol != NULL) {
        r = PyObject_CallMethod(t->protocol, "connection_lost", "O", exc);
    } else {
        Py_INCREF(Py_None);
        r = Py_None;
    }
    /* asyncio's finally: the transport lets go of the protocol and the
     * server whether connection_lost() raised or not. */
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->data_received);
    Py_CLEAR(t->get_buffer);
    Py_CLEAR(t->buffer_updated);
    Py_CLEAR(t->lost_exc);
    if (t->pipe_mode != PIPE_NONE)
        pipe_close_object(t);   /* asyncio: self._pipe.close() */
    if (t->server != NULL) {
        PyObject *server = t->server;
        t->server = NULL;
        PyObject *d = PyObject_CallMethod(server, "_detach", NULL);
        Py_DECREF(server);
        if (d == NULL) {
            Py_XDECREF(r);
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
            return NULL;
        }
        Py_DECREF(d);
    }
    PyErr_Restore(et, ev, etb);
    return r;
}

static PyObject *tr_is_closing(Transport *t, PyObject *unused)
{
    return PyBool_FromLong(t->closing);
}

static PyObject *tr_pause_reading(Transport *t, PyObject *unused)
{
    if (t->closing || t->paused)
        Py_RETURN_NONE;
    t->paused = 1;
    t->flow_controlled = 1;
    disarm(t);
    Py_RETURN_NONE;
}

static PyObject *tr_resume_reading(Transport *t, PyObject *unused)
{
    if (t->closing || !t->paused)
        Py_RETURN_NONE;
    t->paused = 0;
    if (has_held(t)) {
        /* Receiving restarts once they are all handed over (arm). */
        if (schedule_method(t, "_deliver_held", NULL) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    arm(t);
    Py_RETURN_NONE;
}

static PyObject *tr_is_reading(Transport *t, PyObject *unused)
{
    return PyBool_FromLong(!t->paused && !t->closing);
}

/* asyncio's _set_write_buffer_limits, on Python objects as asyncio does it
 * (floats and huge ints are accepted and given back as they came). */
static PyObject *tr_set_write_buffer_limits(Transport *t, PyObject *args, PyObject *kw)
{
    PyObject *h, *l;
    Py_ssize_t hv, lv;
    if (flow_parse_limits(args, kw, &h, &l, &hv, &lv) < 0)
        return NULL;
    Py_XSETREF(t->high_obj, h);
    Py_XSETREF(t->low_obj, l);
    t->high = hv;
    t->low = lv;
    maybe_pause_protocol(t);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tr_get_write_buffer_size(Transport *t, PyObject *unused)
{
    if (unsubmitted(t) && !t->aborted && !t->write_paused && flush_now(t) < 0)
        return NULL;
    return PyLong_FromSsize_t(t->wsize);
}

static PyObject *tr_get_write_buffer_limits(Transport *t, PyObject *unused)
{
    return flow_limits(t->high_obj, t->low_obj, t->high, t->low);
}

static PyObject *tr_get_protocol(Transport *t, PyObject *unused)
{
    PyObject *p = t->protocol ? t->protocol : Py_None;
    Py_INCREF(p);
    return p;
}

/* A switch (start_tls puts an SSLProtocol in) keeps every held chunk for
 * the new protocol. A write pause belongs to the protocol it was given to:
 * the old one is resumed now (else a drain() of its would wait forever),
 * and the new one, which never saw pause_writing, is paused at its first
 * write while the buffer is still above the high-water mark. asyncio's
 * SSLProtocol asserts that pause_writing and resume_writing come in pairs. */
static PyObject *tr_set_protocol(Transport *t, PyObject *protocol)
{
    PyObject *old = t->protocol;
    Py_XINCREF(old);
    if (set_protocol(t, protocol) < 0) {
        Py_XDECREF(old);
        return NULL;
    }
    if (t->write_paused && old != NULL && old != protocol) {
        t->write_paused = 0;
        PyObject *r = PyObject_CallMethod(old, "resume_writing", NULL);
        if (r == NULL && (PyErr_ExceptionMatches(PyExc_SystemExit) ||
                          PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))) {
            Py_DECREF(old);
            return NULL;
        }
        if (r == NULL) {
            PyObject *value = take_exception();
            PyObject *ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message",
                                          "protocol.resume_writing() failed", "exception",
                                          value ? value : Py_None, "transport", t, "protocol", old);
            Py_XDECREF(value);
            if (ctx == NULL || loop_call_exception_handler(t->loop, ctx) < 0) {
                Py_XDECREF(ctx);
                Py_DECREF(old);
                return NULL;
            }
            Py_DECREF(ctx);
        }
        Py_XDECREF(r);
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *tr_repr(Transport *t)
{
    const char *state = t->go_open ? (t->closing ? " closing" : "") : " closed";
    return PyUnicode_FromFormat("<goloop.Transport fd=%d%s read=%s bufsize=%zd>", t->fd, state,
                                t->paused ? "paused" : (t->armed ? "polling" : "idle"), t->wsize);
}

static PyObject *get_fd(Transport *t, void *c) { return PyLong_FromLong(t->go_open ? t->fd : -1); }
static PyObject *get_loop(Transport *t, void *c)
{
    PyObject *l = t->loop ? (PyObject *)t->loop : Py_None;
    Py_INCREF(l);
    return l;
}
static PyObject *get_conn_lost(Transport *t, void *c) { return PyLong_FromLong(t->conn_lost); }

static PyMethodDef tr_methods[] = {
    {"write", (PyCFunction)tr_write, METH_O, NULL},
    {"get_extra_info", (PyCFunction)(void (*)(void))tr_get_extra_info, METH_FASTCALL, NULL},
    {"writelines", (PyCFunction)tr_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)tr_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)tr_can_write_eof, METH_NOARGS, NULL},
    {"close", (PyCFunction)tr_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)tr_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)tr_is_closing, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)tr_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)tr_resume_reading, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)tr_is_reading, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))tr_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_size", (PyCFunction)tr_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)tr_get_write_buffer_limits, METH_NOARGS, NULL},
    {"get_protocol", (PyCFunction)tr_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)tr_set_protocol, METH_O, NULL},
    {"_start_reading", (PyCFunction)tr_start_reading, METH_NOARGS, NULL},
    {"_deliver_held", (PyCFunction)tr_deliver_held, METH_NOARGS, NULL},
    {"_sendfile", (PyCFunction)tr_sendfile, METH_VARARGS, NULL},
    {"_force_close", (PyCFunction)tr_force_close, METH_O, NULL},
    {"_call_connection_lost", (PyCFunction)tr_call_connection_lost, METH_O, NULL},
    {NULL}
};

static PyGetSetDef tr_getset[] = {
    {"_sock_fd", (getter)get_fd, NULL, NULL, NULL},
    {"_loop", (getter)get_loop, NULL, NULL, NULL},
    {"_conn_lost", (getter)get_conn_lost, NULL, NULL, NULL},
    {NULL}
};

static PyMemberDef tr_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Transport, weakreflist), READONLY},
    {"_protocol", T_OBJECT, offsetof(Transport, protocol), READONLY},
    {"_sendfile_active", T_BOOL, offsetof(Transport, sf_active), 0},
    {NULL}
};

static PyType_Slot tr_slots[] = {
    {Py_tp_new, tr_new},
    {Py_tp_init, tr_init},
    {Py_tp_dealloc, tr_dealloc},
    {Py_tp_finalize, tr_finalize},
    {Py_tp_traverse, tr_traverse},
    {Py_tp_clear, tr_clear},
    {Py_tp_methods, tr_methods},
    {Py_tp_getset, tr_getset},
    {Py_tp_members, tr_members},
    {Py_tp_repr, tr_repr},
    {0, NULL}
};

static PyType_Spec tr_spec = {
    "goloop._core.Transport", sizeof(Transport), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    tr_slots
};

/* ---- pipe mode: connect_read_pipe / connect_write_pipe ---- */

/* The program's pipe object, closed once (asyncio's _call_connection_lost
 * and __del__ close it). Go's fd is its own duplicate, closed by Go. */
static void pipe_close_object(Transport *t)
{
    PyObject *pipe = t->pipe;
    t->pipe = NULL;
    if (pipe == NULL)
        return;
    if (pipe != Py_None) {
        PyObject *r = PyObject_CallMethod(pipe, "close", NULL);
        if (r == NULL)
            PyErr_WriteUnraisable(pipe);
        Py_XDECREF(r);
    }
    Py_DECREF(pipe);
}

/* (loop, fd_owner, pipe, protocol, extra, is_socket): fd_owner holds Go's duplicate
 * of the pipe's fd (_pipes.py: its close() never closes it while Go owns
 * it), pipe is the program's object. The checks asyncio makes (which kinds
 * of file, non-blocking) are made in Python before. */
static PyObject *pipe_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"loop", "fd_owner", "pipe", "protocol", "extra", "is_socket", NULL};
    PyObject *loop, *owner, *pipe, *protocol, *extra;
    int is_socket = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOOO|p", kwlist, LoopCore_Type, &loop, &owner, &pipe,
                                     &protocol, &extra, &is_socket))
        return NULL;
    int pfd = PyObject_AsFileDescriptor(pipe);
    if (pfd < 0)
        return NULL;
    PyObject *targs = PyTuple_Pack(4, loop, owner, protocol, extra);
    if (targs == NULL)
        return NULL;
    Transport *t = (Transport *)tr_new(tp, targs, NULL);
    Py_DECREF(targs);
    if (t == NULL)
        return NULL;
    t->pipe_mode = PyType_IsSubtype(tp, ReadPipeTransport_Type) ? PIPE_READ : PIPE_WRITE;
    Py_INCREF(pipe);
    t->pipe = pipe;
    t->pipe_fd = pfd;
    t->notsock = !is_socket;
    return (PyObject *)t;
}

/* End of file on a read pipe, as asyncio has it: the transport is closing
 * at once, and eof_received() (whatever it returns) then
 * connection_lost(None) follow on the next iteration. */
static int pipe_eof(Transport *t)
{
    t->closing = 1;
    Py_CLEAR(t->held);
    if (send_close(t, 0) < 0)
        return fatal_from_current(t, "Fatal error: out of memory");
    PyObject *eof = PyObject_GetAttrString(t->protocol, "eof_received");
    if (eof == NULL)
        return fatal_from_current(t, "Fatal error: protocol.eof_received() call failed.");
    PyObject *noargs = PyTuple_New(0);
    Handle *h = noargs ? loop_call_soon(t->loop, eof, noargs, NULL) : NULL;
    Py_XDECREF(noargs);
    Py_DECREF(eof);
    if (h == NULL)
        return fatal_from_current(t, "Fatal error: out of memory");
    Py_DECREF(h);
    return schedule_lost(t) < 0 ? fatal_from_current(t, "Fatal error: out of memory") : 0;
}

/* _start_hup_watch(): a write pipe (a FIFO or a socket) is watched for
 * readability, as asyncio watches it: on a pipe's write end that is the
 * reader going away (EPOLLERR), on a socket the peer's data or end. */
static PyObject *pipe_start_hup_watch(Transport *t, PyObject *unused)
{
    if (t->hup_watch || t->closing || t->close_sent || !t->go_open || t->loop->h == 0)
        Py_RETURN_NONE;
    if (loop_submit(t->loop, GL_OP_POLL_START, t->fd, TOKEN(t), NULL, 0, GL_POLL_IN) < 0)
        return NULL;
    t->hup_watch = 1;
    pin_update(t);
    Py_RETURN_NONE;
}

/* The write end's watch fired: asyncio's _read_ready. The peer went away:
 * connection_lost(None) with nothing buffered, BrokenPipeError with bytes
 * the kernel has not taken (those are dropped). */
static int on_hup(Transport *t, gl_comp *c)
{
    if (t->pipe_mode != PIPE_WRITE)
        return 0;
    if (c->res < 0 || !(c->flags & GL_FLAG_MORE)) {
        t->hup_watch = 0;
        pin_update(t);
        if (c->res < 0)
            return 0;
    }
    if (t->aborted || t->lost_scheduled || !t->go_open)
        return 0;
    if (unsubmitted(t) && flush_now(t) < 0)
        return fatal_from_current(t, "Fatal error: out of memory");
    PyObject *exc = NULL;
    if (t->wsize > 0 && (exc = PyObject_CallNoArgs(PyExc_BrokenPipeError)) == NULL)
        return fatal_from_current(t, "Fatal error: out of memory");
    PyObject *r = tr_force_close(t, exc ? exc : Py_None);
    Py_XDECREF(exc);
    if (r == NULL)
        return fatal_from_current(t, "Fatal error: transport.abort() failed");
    Py_DECREF(r);
    return 0;
}

/* asyncio's write pipe: write_eof() closes, once what is buffered is
 * written; writes after it are dropped. connection_lost(None) follows at
 * once when the kernel took everything, else after Go's close. */
static PyObject *pipe_write_eof(Transport *t, PyObject *unused)
{
    if (t->closing)
        Py_RETURN_NONE;
    if (t->pipe == NULL || t->pipe == Py_None) {
        PyErr_SetNone(PyExc_AssertionError);   /* asyncio: assert self._pipe */
        return NULL;
    }
    t->closing = 1;
    t->eof_written = 1;
    if (t->close_sent || !t->go_open)
        Py_RETURN_NONE;
    Py_ssize_t fresh = t->enq_poll == t->loop->polls ? t->enq_fresh : 0;
    if (fresh > 0 && !t->aborted && flush_now(t) < 0)
        return NULL;
    if (send_close(t, 0) < 0)
        return NULL;
    if (t->slen == 0 && schedule_lost(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *pipe_write_close(Transport *t, PyObject *unused)
{
    if (t->pipe == NULL || t->pipe == Py_None || t->closing)
        Py_RETURN_NONE;
    return pipe_write_eof(t, NULL);
}

/* asyncio's repr of a pipe transport on a loop without a selector. */
static PyObject *pipe_repr(Transport *t)
{
    int open = t->pipe != NULL && t->pipe != Py_None;
    const char *state = !open ? " closed" : (t->closing ? " closing" : "");
    if (t->pipe_mode == PIPE_WRITE)
        return PyUnicode_FromFormat("<%s%s fd=%d %s bufsize=%zd>", Py_TYPE(t)->tp_name, state,
                                    t->pipe_fd, open ? "open" : "closed", t->wsize);
    return PyUnicode_FromFormat("<%s%s fd=%d %s>", Py_TYPE(t)->tp_name, state, t->pipe_fd,
                                open ? "open" : "closed");
}

static PyMethodDef rpipe_methods[] = {
    {"close", (PyCFunction)tr_close, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)tr_is_closing, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)tr_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)tr_resume_reading, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)tr_is_reading, METH_NOARGS, NULL},
    {"get_protocol", (PyCFunction)tr_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)tr_set_protocol, METH_O, NULL},
    {"_start_reading", (PyCFunction)tr_start_reading, METH_NOARGS, NULL},
    {"_deliver_held", (PyCFunction)tr_deliver_held, METH_NOARGS, NULL},
    {"_force_close", (PyCFunction)tr_force_close, METH_O, NULL},
    {"_call_connection_lost", (PyCFunction)tr_call_connection_lost, METH_O, NULL},
    {NULL}
};

static PyMethodDef wpipe_methods[] = {
    {"write", (PyCFunction)tr_write, METH_O, NULL},
    {"writelines", (PyCFunction)tr_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)pipe_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)tr_can_write_eof, METH_NOARGS, NULL},
    {"close", (PyCFunction)pipe_write_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)tr_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)tr_is_closing, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))tr_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_size", (PyCFunction)tr_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)tr_get_write_buffer_limits, METH_NOARGS, NULL},
    {"get_protocol", (PyCFunction)tr_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)tr_set_protocol, METH_O, NULL},
    {"_start_hup_watch", (PyCFunction)pipe_start_hup_watch, METH_NOARGS, NULL},
    {"_force_close", (PyCFunction)tr_force_close, METH_O, NULL},
    {"_call_connection_lost", (PyCFunction)tr_call_connection_lost, METH_O, NULL},
    {NULL}
};

static PyGetSetDef pipe_getset[] = {
    {"_loop", (getter)get_loop, NULL, NULL, NULL},
    {"_conn_lost", (getter)get_conn_lost, NULL, NULL, NULL},
    {NULL}
};

static PyMemberDef pipe_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Transport, weakreflist), READONLY},
    {"_protocol", T_OBJECT, offsetof(Transport, protocol), READONLY},
    /* asyncio's attribute: a program (CPython's tests) may set it to None
     * to take the pipe object back (no warning, no close at collection). */
    {"_pipe", T_OBJECT, offsetof(Transport, pipe), 0},
    {NULL}
};

#define PIPE_SLOTS(methods)                         \
    {Py_tp_new, pipe_new},                          \
    {Py_tp_init, tr_init},                          \
    {Py_tp_dealloc, tr_dealloc},                    \
    {Py_tp_finalize, tr_finalize},                  \
    {Py_tp_traverse, tr_traverse},                  \
    {Py_tp_clear, tr_clear},                        \
    {Py_tp_methods, methods},                       \
    {Py_tp_getset, pipe_getset},                    \
    {Py_tp_members, pipe_members},                  \
    {Py_tp_repr, pipe_repr},                        \
    {0, NULL}

static PyType_Slot rpipe_slots[] = {PIPE_SLOTS(rpipe_methods)};
static PyType_Slot wpipe_slots[] = {PIPE_SLOTS(wpipe_methods)};

static PyType_Spec rpipe_spec = {
    "goloop._core.ReadPipeTransport", sizeof(Transport), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, rpipe_slots
};
static PyType_Spec wpipe_spec = {
    "goloop._core.WritePipeTransport", sizeof(Transport), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, wpipe_slots
};

/* A type over asyncio's class `name` (its layout is BaseTransport's, as
 * asyncio.Transport's is: PyObject_HEAD plus '_extra'). */
static PyTypeObject *make_type(PyObject *m, PyType_Spec *spec, const char *name)
{
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return NULL;
    PyObject *base = PyObject_GetAttrString(asyncio, name);
    Py_DECREF(asyncio);
    if (base == NULL)
        return NULL;
    if (((PyTypeObject *)base)->tp_basicsize != offsetof(Transport, extra) + sizeof(PyObject *)) {
        Py_DECREF(base);
        PyErr_Format(PyExc_ImportError, "goloop: asyncio.%s has an unexpected layout", name);
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec, base);
    Py_DECREF(base);
    if (tp == NULL)
        return NULL;
    const char *short_name = strrchr(spec->name, '.') + 1;
    if (PyModule_AddObjectRef(m, short_name, (PyObject *)tp) < 0) {
        Py_DECREF(tp);
        return NULL;
    }
    return tp;
}

int init_transport_type(PyObject *m)
{
    if ((ReadPipeTransport_Type = make_type(m, &rpipe_spec, "ReadTransport")) == NULL ||
        (WritePipeTransport_Type = make_type(m, &wpipe_spec, "WriteTransport")) == NULL)
        return -1;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    PyObject *base = PyObject_GetAttrString(asyncio, "Transport");
    Py_DECREF(asyncio);
    if (base == NULL)
        return -1;
    /* The layout of asyncio.Transport is PyObject_HEAD plus the '_extra'
     * slot; ours starts the same way, which is what makes this a real
     * subclass rather than a look-alike. */
    if (((PyTypeObject *)base)->tp_basicsize != offsetof(Transport, extra) + sizeof(PyObject *)) {
        Py_DECREF(base);
        PyErr_SetString(PyExc_ImportError, "goloop: asyncio.Transport has an unexpected layout");
        return -1;
    }
    Transport_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &tr_spec, base);
    Py_DECREF(base);
    if (Transport_Type == NULL)
        return -1;
    return PyModule_AddObjectRef(m, "Transport", (PyObject *)Transport_Type);
}
