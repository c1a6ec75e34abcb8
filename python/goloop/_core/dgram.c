/* The datagram transport (UDP, Unix SOCK_DGRAM): a subclass of
 * asyncio.DatagramTransport (and of asyncio.Transport, as asyncio's own
 * selector datagram transport is) whose fd lives in Go.
 *
 * sendto() hands Go a gl_sendto block: the address as a sockaddr, and a
 * pointer into the bytes object, which C keeps referenced until Go reports
 * the datagram sent (zero copy). Each received datagram arrives whole in a
 * buffer of Go's datagram pool, with its source address in front of it; C
 * copies both out, calls datagram_received(data, addr), and gives the
 * buffer back in the next batch. Ownership: docs/datagrams.md. */
#include "core.h"
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

PyTypeObject *DatagramTransport_Type;

#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5

typedef struct {
    PyObject *data;     /* bytes Go reads until the datagram's EvSend */
    gl_sendto *blk;     /* the block Go reads until then */
} dsend;

typedef struct {
    PyObject_HEAD
    PyObject *extra;            /* asyncio.BaseTransport's '_extra' slot: same offset */
    LoopCore *loop;
    PyObject *protocol;
    PyObject *sock;             /* the Python socket: detached when Go closes the fd */
    PyObject *address;          /* the peer create_datagram_endpoint connected to, or NULL */
    PyObject *lost_exc;
    PyObject *high_obj, *low_obj;
    dsend *sendq;               /* datagrams Go is sending, oldest first */
    Py_ssize_t shead, slen, scap;
    Py_ssize_t wsize, high, low;
    int fd;
    int family;
    int conn_lost;
    char connected;             /* extra['peername'] is set: sends name no address */
    char closing;
    char armed;                 /* Go is receiving for us */
    char write_paused;
    char close_sent;            /* OpClose submitted: no more ops for this fd */
    char abort_sent;
    char aborted;
    char go_open;               /* Go owns the fd: from construction until EvClosed */
    char pinned;
    char lost_scheduled;
    char lost_done;             /* connection_lost() was called */
    uint64_t enq_poll;          /* lp->polls when the last datagram was queued */
    Py_ssize_t enq_fresh;       /* datagrams queued since that poll: not yet handed to Go */
    uint64_t token;
    PyObject *weakreflist;
} Dgram;

/* A transport keeps itself alive while Go has work that ends in a callback
 * or reads its memory: receiving, datagrams in flight, a close under way. An
 * open endpoint is always receiving (asyncio's datagram transports cannot
 * pause reading), so, as with asyncio's
 * selector (whose reader holds the transport), a dropped open endpoint
 * lives until it is closed or its loop is. */
static void pin_update(Dgram *t)
{
    int want = t->go_open && (t->armed || t->slen > 0 || t->close_sent);
    if (want && !t->pinned) {
        t->pinned = 1;
        Py_INCREF(t);
    } else if (!want && t->pinned) {
        t->pinned = 0;
        Py_DECREF(t);
    }
}

static PyObject *dg_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"loop", "sock", "protocol", "address", "extra", "family", NULL};
    PyObject *loop, *sock, *protocol, *address = Py_None, *extra = Py_None;
    int family = AF_INET;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OO|OOi", kwlist, LoopCore_Type, &loop, &sock,
                                     &protocol, &address, &extra, &family))
        return NULL;
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
    if (loop_check_alive((LoopCore *)loop) < 0)
        return NULL;
    Dgram *t = (Dgram *)tp->tp_alloc(tp, 0);
    if (t == NULL)
        return NULL;
    t->fd = fd;
    t->family = family;
    Py_INCREF(sock);
    t->sock = sock;
    t->high = FLOW_DEFAULT_HIGH;
    t->low = FLOW_DEFAULT_HIGH / 4;
    Py_INCREF(loop);
    t->loop = (LoopCore *)loop;
    Py_INCREF(protocol);
    t->protocol = protocol;
    if (address != Py_None) {
        Py_INCREF(address);
        t->address = address;
    }
    if (extra == Py_None) {
        t->extra = PyDict_New();
    } else {
        Py_INCREF(extra);
        t->extra = extra;
    }
    if (t->extra == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    PyObject *peer = PyDict_GetItemString(t->extra, "peername");   /* borrowed */
    int c = peer ? PyObject_IsTrue(peer) : 0;
    if (c < 0 || owners_bind(t->loop, (PyObject *)t, TAG_DGRAM, &t->token) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    t->connected = (char)c;
    t->go_open = 1;
    return (PyObject *)t;
}

/* Everything happens in dg_new; asyncio.BaseTransport.__init__ (which
 * would reset _extra) must not run. */
static int dg_init(PyObject *self, PyObject *args, PyObject *kw)
{
    return 0;
}

static int dg_traverse(Dgram *t, visitproc visit, void *arg)
{
    Py_VISIT(t->extra);
    Py_VISIT(t->loop);
    Py_VISIT(t->protocol);
    Py_VISIT(t->sock);
    Py_VISIT(t->address);
    Py_VISIT(t->lost_exc);
    Py_VISIT(t->high_obj);
    Py_VISIT(t->low_obj);
    Py_VISIT(Py_TYPE(t));
    return 0;
}

static int dg_clear(Dgram *t)
{
    Py_CLEAR(t->extra);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->sock);
    Py_CLEAR(t->address);
    Py_CLEAR(t->lost_exc);
    Py_CLEAR(t->high_obj);
    Py_CLEAR(t->low_obj);
    return 0;
}

/* Collected before connection_lost: warn as asyncio does. If Go still owns
 * the fd with nothing in flight (an endpoint whose receive failed, dropped by
 * the program), Go closes it; in a forked child the socket object closes its
 * own copy. */
static void dg_finalize(Dgram *t)
{
    if (t->lost_done || t->loop == NULL)
        return;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (PyErr_ResourceWarning((PyObject *)t, 1, "unclosed transport %R", t) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    t->lost_done = 1;
    if (t->go_open && !t->close_sent) {
        t->go_open = 0;
        t->close_sent = t->abort_sent = 1;
        if (go_usable(t->loop)) {
            if (t->sock != NULL) {
                if (sockobj_detach(t->sock) < 0)
                    PyErr_WriteUnraisable(t->sock);
            }
            loop_close_orphan(t->loop, t->fd);
        }
        owners_release(t->loop, t->token);
    }
    PyErr_Restore(et, ev, etb);
}

static void dg_dealloc(Dgram *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
        return;   /* resurrected */
    PyObject_GC_UnTrack(t);
    if (t->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)t);
    dg_clear(t);
    /* Unpinned, so no datagram is in flight: Go no longer reads these. */
    for (Py_ssize_t i = 0; i < t->slen; i++) {
        dsend *s = &t->sendq[(t->shead + i) % t->scap];
        Py_DECREF(s->data);
        PyMem_Free(s->blk);
    }
    PyMem_Free(t->sendq);
    if (t->loop != NULL)
        owners_release(t->loop, t->token);
    Py_CLEAR(t->loop);
    tp->tp_free(t);
    Py_DECREF(tp);
}

/* ---- helpers ---- */

static void fatal_error(Dgram *t, PyObject *exc, const char *msg)
{
    if (HOOKS.fatal_error == NULL)
        return;
    PyObject *r = PyObject_CallFunction(HOOKS.fatal_error, "OOs", t, exc, msg);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r);
}

/* The pending exception as a fatal transport error; -1 only for
 * SystemExit/KeyboardInterrupt, which must leave the loop. */
static int fatal_from_current(Dgram *t, const char *msg)
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

/* A protocol callback that raised: the loop's exception handler, as an
 * exception escaping asyncio's _read_ready callback would reach it. */
static int callback_failed(Dgram *t)
{
    return report_callback_error(t->loop, "Exception in datagram transport callback", NULL, NULL);
}

static int schedule_method(Dgram *t, const char *name, PyObject *arg)
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

static int schedule_lost(Dgram *t)
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

static void arm(Dgram *t)
{
    if (!t->armed && !t->close_sent && t->loop->h != 0) {
        if (loop_submit(t->loop, GL_OP_DGRAM_RECV_START, t->fd, t->token, NULL, 0, 0) == 0)
            t->armed = 1;
        pin_update(t);
    }
}

static void disarm(Dgram *t)
{
    if (t->armed && !t->close_sent) {
        if (loop_submit(t->loop, GL_OP_RECV_STOP, t->fd, t->token, NULL, 0, 0) == 0)
            t->armed = 0;
        pin_update(t);
    }
}

/* As the stream transport's: an abort after a graceful close is an upgrade
 * Go applies only while that close still waits behind datagrams. */
static int send_close(Dgram *t, int abort)
{
    if (t->close_sent && (!abort || t->abort_sent))
        return 0;
    uint32_t arg = abort ? GL_CLOSE_ABORT : 0;
    int upgrade = abort && t->close_sent;
    if (upgrade)
        arg |= GL_CLOSE_UPGRADE;
    if (loop_submit(t->loop, GL_OP_CLOSE, t->fd, t->token, NULL, 0, arg) < 0)
        return -1;
    if (!upgrade)
        t->loop->closes_in_flight++;
    t->close_sent = 1;
    t->armed = 0;
    if (abort)
        t->abort_sent = 1;
    pin_update(t);
    return 0;
}

static int call_flow_control(Dgram *t, const char *method)
{
    return flow_call(t->loop, (PyObject *)t, t->protocol, method);
}

static int maybe_pause_protocol(Dgram *t)
{
    if (t->wsize <= t->high || t->write_paused || t->protocol == NULL)
        return 0;
    t->write_paused = 1;
    return call_flow_control(t, "pause_writing");
}

static int maybe_resume_protocol(Dgram *t)
{
    if (!t->write_paused || t->wsize > t->low || t->protocol == NULL)
        return 0;
    t->write_paused = 0;
    return call_flow_control(t, "resume_writing");
}

/* ---- addresses ---- */

/* The sockaddr socket.sendto (or connect) would build for addr, for the
 * common cases: numeric IPv4/IPv6 hosts and Unix paths. 1 done, 0 not
 * handled here (the Python helper _sockaddr does the rest, with socket's
 * errors), -1 error. */
static int fast_sockaddr(int family, PyObject *addr, gl_sendto *blk)
{
    if (family == AF_UNIX) {
        PyObject *path;
        if (PyUnicode_Check(addr)) {
            path = PyUnicode_EncodeFSDefault(addr);
            if (path == NULL)
                return -1;
        } else if (PyBytes_CheckExact(addr)) {
            Py_INCREF(addr);
            path = addr;
        } else {
            return 0;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(path);
        const char *p = PyBytes_AS_STRING(path);
        struct sockaddr_un *sun = (struct sockaddr_un *)blk->name;
        int abstract = n > 0 && p[0] == 0;
        if (n + !abstract > (Py_ssize_t)sizeof(sun->sun_path)) {
            Py_DECREF(path);
            return 0;
        }
        memset(sun, 0, sizeof(*sun));
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, p, n);
        blk->namelen = (uint32_t)(offsetof(struct sockaddr_un, sun_path) + n + !abstract);
        Py_DECREF(path);
        return 1;
    }
    if (!PyTuple_CheckExact(addr))
        return 0;
    Py_ssize_t size = PyTuple_GET_SIZE(addr);
    if (size < 2 || size > (family == AF_INET6 ? 4 : 2))
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0), *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_CheckExact(host) || !PyLong_CheckExact(port))
        return 0;
    long pv = PyLong_AsLong(port);
    if (pv == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (pv < 0 || pv > 65535)
        return 0;
    const char *h = PyUnicode_AsUTF8(host);
    if (h == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)blk->name;
        memset(sin, 0, sizeof(*sin));
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)pv);
        if (inet_pton(AF_INET, h, &sin->sin_addr) != 1)
            return 0;
        blk->namelen = sizeof(*sin);
        return 1;
    }
    if (family == AF_INET6) {
        unsigned long flow = 0, scope = 0;
        for (Py_ssize_t i = 2; i < size; i++) {
            PyObject *v = PyTuple_GET_ITEM(addr, i);
            if (!PyLong_CheckExact(v))
                return 0;
            unsigned long x = PyLong_AsUnsignedLong(v);
            if (x == (unsigned long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            if (i == 2)
                flow = x;
            else
                scope = x;
        }
        if (flow > 0xfffff || scope > 0xffffffffUL)
            return 0;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)blk->name;
        memset(sin6, 0, sizeof(*sin6));
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)pv);
        sin6->sin6_flowinfo = htonl((uint32_t)flow);
        sin6->sin6_scope_id = (uint32_t)scope;
        if (inet_pton(AF_INET6, h, &sin6->sin6_addr) != 1)
            return 0;
        blk->namelen = sizeof(*sin6);
        return 1;
    }
    return 0;
}

/* _core._sockaddr_fast(family, addr) -> bytes, or None when only the
 * Python helper can build it: connects use the same conversion. */
PyObject *sockaddr_fast(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[0]))
        return PyErr_Format(PyExc_TypeError, "_sockaddr_fast(family, addr)");
    int family = _PyLong_AsInt(args[0]);
    if (family == -1 && PyErr_Occurred())
        return NULL;
    gl_sendto blk;
    int r = fast_sockaddr(family, args[1], &blk);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)blk.name, blk.namelen);
}

static int to_sockaddr(Dgram *t, PyObject *addr, gl_sendto *blk)
{
    int r = fast_sockaddr(t->family, addr, blk);
    if (r != 0)
        return r < 0 ? -1 : 0;
    PyObject *raw = PyObject_CallMethod((PyObject *)t, "_sockaddr", "iO", t->family, addr);
    if (raw == NULL)
        return -1;
    if (!PyBytes_Check(raw) || PyBytes_GET_SIZE(raw) > GL_DGRAM_NAME_CAP) {
        Py_DECREF(raw);
        PyErr_SetString(PyExc_SystemError, "goloop: _sockaddr() gave no sockaddr");
        return -1;
    }
    memcpy(blk->name, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw));
    blk->namelen = (uint32_t)PyBytes_GET_SIZE(raw);
    Py_DECREF(raw);
    return 0;
}

/* The address object socket.recvfrom gives for a sockaddr of len bytes. */
static PyObject *from_sockaddr(Dgram *t, const uint8_t *name, uint32_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (len == 0)
        Py_RETURN_NONE;
    sa_family_t fam;
    memcpy(&fam, name, sizeof(fam));
    if (fam == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, name, sizeof(sin));
        if (inet_ntop(AF_INET, &sin.sin_addr, host, sizeof(host)) == NULL)
            return oserror(errno);
        return Py_BuildValue("(si)", host, ntohs(sin.sin_port));
    }
    if (fam == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, name, sizeof(sin6));
        if (sin6.sin6_scope_id == 0) {   /* scoped: getnameinfo's "%if" form, in Python */
            if (inet_ntop(AF_INET6, &sin6.sin6_addr, host, sizeof(host)) == NULL)
                return oserror(errno);
            return Py_BuildValue("(siII)", host, ntohs(sin6.sin6_port),
                                 (unsigned int)ntohl(sin6.sin6_flowinfo), (unsigned int)sin6.sin6_scope_id);
        }
    }
    if (fam == AF_UNIX) {
        size_t off = offsetof(struct sockaddr_un, sun_path);
        if (len <= off)
            Py_RETURN_NONE;   /* an unnamed socket */
        const char *path = (const char *)name + off;
        size_t n = len - off;
        if (path[0] == 0)
            return PyBytes_FromStringAndSize(path, n);   /* Linux's abstract namespace */
        return PyUnicode_DecodeFSDefaultAndSize(path, strnlen(path, n));
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)name, len);
    if (raw == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethod((PyObject *)t, "_address_of", "iO", t->family, raw);
    Py_DECREF(raw);
    return r;
}

/* ---- receiving ---- */

static int deliver(Dgram *t, PyObject *data, PyObject *addr)
{
    PyObject *r = PyObject_CallMethod(t->protocol, "datagram_received", "OO", data, addr);
    if (r == NULL)
        return callback_failed(t);
    Py_DECREF(r);
    return 0;
}

static int error_received(Dgram *t, PyObject *exc)
{
    PyObject *r = PyObject_CallMethod(t->protocol, "error_received", "O", exc);
    if (r == NULL)
        return callback_failed(t);
    Py_DECREF(r);
    return 0;
}

static int on_dgram(Dgram *t, gl_comp *c)
{
    if (c->res >= 0) {
        int r = 0;
        const uint8_t *p = (const uint8_t *)(uintptr_t)c->ptr;
        if (!t->closing && !t->conn_lost) {
            /* Copy both out before the buffer goes back in the next batch. */
            PyObject *data = PyBytes_FromStringAndSize((const char *)p, c->res);
            PyObject *addr = data ? from_sockaddr(t, p - GL_DGRAM_NAME_CAP, c->aux) : NULL;
            if (addr == NULL)
                r = fatal_from_current(t, "Fatal read error on datagram transport");
            else
                r = deliver(t, data, addr);
            Py_XDECREF(data);
            Py_XDECREF(addr);
        }
        loop_submit(t->loop, GL_OP_BUF_RETURN, 0, 0, NULL, 0, c->buf);
        return r;
    }
    if (!(c->flags & GL_FLAG_MORE)) {
        t->armed = 0;
        pin_update(t);
    }
    if (t->closing || t->conn_lost)
        return 0;
    PyObject *exc = oserror(-c->res);
    if (exc == NULL)
        return fatal_from_current(t, "Fatal read error on datagram transport");
    int r = 0;
    if (c->flags & GL_FLAG_MORE)
        r = error_received(t, exc);   /* asyncio's recvfrom raised it: error_received, read on */
    else
        fatal_error(t, exc, "Fatal read error on datagram transport");
    Py_DECREF(exc);
    return r;
}

/* ---- sending ---- */

static int on_send(Dgram *t, gl_comp *c)
{
    if (t->slen == 0)
        return 0;
    dsend s = t->sendq[t->shead];
    t->shead = (t->shead + 1) % t->scap;
    t->slen--;
    Py_ssize_t n = PyBytes_GET_SIZE(s.data);
    Py_DECREF(s.data);
    PyMem_Free(s.blk);
    pin_update(t);
    if (t->aborted)
        return 0;
    t->wsize -= n;
    if (c->res < 0 && c->res != -ECANCELED && t->protocol != NULL && !t->lost_done) {
        /* The kernel refused this datagram (EACCES, EMSGSIZE, a refused
         * connected peer...): asyncio's sendto gives it to error_received
         * and goes on with the next. */
        PyObject *exc = oserror(-c->res);
        if (exc == NULL)
            return fatal_from_current(t, "Fatal write error on datagram transport");
        int r = error_received(t, exc);
        Py_DECREF(exc);
        if (r < 0)
            return r;
    }
    return maybe_resume_protocol(t);
}

static int on_closed(Dgram *t)
{
    if (!t->go_open)
        return 0;
    t->go_open = 0;
    t->armed = 0;
    if (t->sock != NULL) {
        /* Go closed the fd: the socket object must not close the number again. */
        if (sockobj_detach(t->sock) < 0)
            PyErr_WriteUnraisable(t->sock);
    }
    int r = schedule_lost(t);
    pin_update(t);
    if (r < 0)
        PyErr_WriteUnraisable(NULL);
    return 0;
}

int dgram_dispatch(LoopCore *lp, PyObject *obj, gl_comp *c)
{
    Dgram *t = (Dgram *)obj;
    int r = 0;
    Py_INCREF(t);
    switch (c->kind) {
    case GL_EV_DGRAM:
        if (lp->draining) {
            if (c->res >= 0)
                loop_submit(lp, GL_OP_BUF_RETURN, 0, 0, NULL, 0, c->buf);
            break;
        }
        r = on_dgram(t, c);
        break;
    case GL_EV_SEND:
        if (lp->draining)
            t->aborted = 1;   /* the loop is closing: only give the bytes back */
        r = on_send(t, c);
        break;
    case GL_EV_CLOSED:
        r = on_closed(t);
        break;
    default:
        break;
    }
    Py_DECREF(t);
    return r;
}

void dgram_loop_closing(LoopCore *lp, PyObject *obj)
{
    Dgram *t = (Dgram *)obj;
    t->aborted = 1;
    t->conn_lost++;
    t->closing = 1;
    if (send_close(t, 1) < 0)
        PyErr_Clear();
}

/* ---- Python methods ---- */

static PyObject *dg_start_reading(Dgram *t, PyObject *unused)
{
    if (!t->closing)
        arm(t);
    Py_RETURN_NONE;
}

static int enqueue(Dgram *t, PyObject *b, gl_sendto *blk)
{
    if (t->slen == t->scap) {
        Py_ssize_t ncap = t->scap ? t->scap * 2 : 8;
        dsend *n = PyMem_Malloc(sizeof(dsend) * ncap);
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
    blk->data = (uint64_t)(uintptr_t)PyBytes_AS_STRING(b);
    blk->len = (uint32_t)len;
    if (loop_submit(t->loop, GL_OP_SENDTO, t->fd, t->token, blk, (uint32_t)len, blk->namelen) < 0)
        return -1;
    Py_INCREF(b);
    dsend *s = &t->sendq[(t->shead + t->slen) % t->scap];
    s->data = b;
    s->blk = blk;
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

/* asyncio's sendto() hands the datagram to the kernel at once and counts as
 * buffered only what the socket refused for now. goloop hands Go the
 * iteration's datagrams in one batch at its end, so until then they count
 * as buffered. Past the high-water mark that lag would pause a writer the
 * kernel would not have paused: so there the batch goes to Go at once, and
 * the datagrams that left in it are accounted for before the caller decides
 * whether to pause; also when the program asks for the buffer size. As the
 * stream transport's flush_now (transport.c): their records, appended after
 * the batch being dispatched, are consumed here (token 0: dispatch skips
 * them); a refused datagram's record is left for dispatch to report. */
static int flush_now(Dgram *t)
{
    LoopCore *lp = t->loop;
    int from = lp->ncomps;
    if (loop_apply_now(lp) < 0)
        return -1;
    for (int i = from; i < lp->ncomps && t->slen > 0; i++) {
        gl_comp *c = &lp->comps[i];
        if (c->token != t->token || c->kind != GL_EV_SEND)
            continue;
        if (c->res < 0)
            break;
        c->token = 0;
        dsend s = t->sendq[t->shead];
        t->shead = (t->shead + 1) % t->scap;
        t->slen--;
        t->wsize -= PyBytes_GET_SIZE(s.data);
        Py_DECREF(s.data);
        PyMem_Free(s.blk);
    }
    pin_update(t);
    return 0;
}

static int unsubmitted(Dgram *t)
{
    return t->enq_poll == t->loop->polls && t->enq_fresh > 0;
}

/* asyncio's DatagramTransport.sendto: the same checks and errors, in the
 * same order. What the kernel says about the datagram comes later, from
 * Go, to error_received (asyncio calls it from inside sendto when the
 * socket answers at once). */
static PyObject *dg_sendto(Dgram *t, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "addr", NULL};
    PyObject *data, *addr = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:sendto", kwlist, &data, &addr))
        return NULL;
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%s'",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    int nonempty = PyObject_IsTrue(data);
    if (nonempty <= 0)
        return nonempty < 0 ? NULL : (Py_INCREF(Py_None), Py_None);
    if (t->address != NULL) {
        if (addr != Py_None) {
            int same = PyObject_RichCompareBool(addr, t->address, Py_EQ);
            if (same < 0)
                return NULL;
            if (!same)
                return PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S", t->address);
        }
        addr = t->address;
    }
    if (t->conn_lost || t->close_sent || !t->go_open) {
        /* Closed: nothing more may be handed to Go for this fd. asyncio
         * also drops (and counts) datagrams for a closed connected socket. */
        if (t->address != NULL && t->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
            PyObject *log = PyImport_ImportModule("asyncio.log");
            PyObject *lg = log ? PyObject_GetAttrString(log, "logger") : NULL;
            PyObject *r = lg ? PyObject_CallMethod(lg, "warning", "s", "socket.send() raised exception.") : NULL;
            Py_XDECREF(r);
            Py_XDECREF(lg);
            Py_XDECREF(log);
            PyErr_Clear();
        }
        t->conn_lost++;
        Py_RETURN_NONE;
    }
    gl_sendto *blk = PyMem_Malloc(sizeof(gl_sendto));
    if (blk == NULL)
        return PyErr_NoMemory();
    blk->namelen = 0;
    if (!t->connected && to_sockaddr(t, addr, blk) < 0) {
        PyMem_Free(blk);
        /* What socket.sendto raises for a bad address: an OSError (a name
         * that does not resolve) goes to error_received; anything else is
         * a fatal write error, as in asyncio. */
        if (PyErr_ExceptionMatches(PyExc_OSError)) {
            PyObject *exc = take_exception();
            PyObject *r = exc ? PyObject_CallMethod(t->protocol, "error_received", "O", exc) : NULL;
            Py_XDECREF(exc);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            Py_RETURN_NONE;
        }
        if (fatal_from_current(t, "Fatal write error on datagram transport") < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *b;
    if (PyBytes_CheckExact(data)) {
        Py_INCREF(data);
        b = data;
    } else {
        /* bytearray and memoryview can change under us: copy, as asyncio does. */
        b = PyBytes_FromObject(data);
        if (b == NULL) {
            PyMem_Free(blk);
            return NULL;
        }
    }
    if (PyBytes_GET_SIZE(b) > UINT32_MAX / 2) {
        Py_DECREF(b);
        PyMem_Free(blk);
        PyObject *exc = oserror(EMSGSIZE);
        PyObject *r = exc ? PyObject_CallMethod(t->protocol, "error_received", "O", exc) : NULL;
        Py_XDECREF(exc);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    int e = enqueue(t, b, blk);
    Py_DECREF(b);
    if (e < 0) {
        PyMem_Free(blk);
        return NULL;
    }
    if (t->wsize > t->high && !t->write_paused && unsubmitted(t) && flush_now(t) < 0)
        return NULL;
    if (maybe_pause_protocol(t) < 0 || PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

/* In a forked child (docs/architecture.md, "Fork"), as transport.c's:
 * nothing Go was doing will answer, and the child's copy of the fd is the
 * socket object's to close, when the program closes the endpoint there,
 * when the inherited loop is closed there, or when it is collected. */
static PyObject *child_close(Dgram *t)
{
    t->closing = 1;
    Py_INCREF(t);
    if (t->go_open) {
        t->go_open = 0;
        PyObject *r = t->sock != NULL ? PyObject_CallMethod(t->sock, "close", NULL) : Py_NewRef(Py_None);
        if (r == NULL)
            PyErr_WriteUnraisable(t->sock);
        Py_XDECREF(r);
    }
    pin_update(t);
    Py_DECREF(t);
    Py_RETURN_NONE;
}

int dgram_forked(PyObject *obj, int fd_gone, PyObject *into)
{
    Dgram *t = (Dgram *)obj;
    return owners_unpin_forked(obj, &t->go_open, &t->pinned, fd_gone, into);
}

void dgram_child_loop_closing(PyObject *obj)
{
    PyObject *r = child_close((Dgram *)obj);
    Py_XDECREF(r);
}

static PyObject *dg_close(Dgram *t, PyObject *unused)
{
    if (gl_forked())
        return child_close(t);
    if (t->closing)
        Py_RETURN_NONE;
    t->closing = 1;
    disarm(t);
    if (!t->conn_lost) {
        t->conn_lost++;
        /* Graceful: Go closes the fd after the datagrams already queued. */
        if (send_close(t, 0) < 0)
            return NULL;
        if (t->slen == 0 && schedule_lost(t) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *dg_force_close(Dgram *t, PyObject *exc)
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
    t->conn_lost++;
    t->aborted = 1;
    if (send_close(t, 1) < 0 || schedule_lost(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *dg_abort(Dgram *t, PyObject *unused)
{
    return dg_force_close(t, Py_None);
}

static PyObject *dg_call_connection_lost(Dgram *t, PyObject *exc)
{
    PyObject *r;
    t->lost_done = 1;
    if (t->protocol != NULL) {
        r = PyObject_CallMethod(t->protocol, "connection_lost", "O", exc);
    } else {
        Py_INCREF(Py_None);
        r = Py_None;
    }
    /* asyncio's finally: the transport lets go of the protocol. */
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->lost_exc);
    PyErr_Restore(et, ev, etb);
    return r;
}

static PyObject *dg_is_closing(Dgram *t, PyObject *unused)
{
    return PyBool_FromLong(t->closing);
}

/* asyncio's _set_write_buffer_limits, as the stream transport has it. */
static PyObject *dg_set_write_buffer_limits(Dgram *t, PyObject *args, PyObject *kw)
{
    PyObject *h, *l;
    Py_ssize_t hv, lv;
    if (flow_parse_limits(args, kw, &h, &l, &hv, &lv) < 0)
        return NULL;
    Py_XSETREF(t->high_obj, h);
    Py_XSETREF(t->low_obj, l);
    t->high = hv;
    t->low = lv;
    if (maybe_pause_protocol(t) < 0 || PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *dg_get_write_buffer_size(Dgram *t, PyObject *unused)
{
    if (unsubmitted(t) && !t->aborted && !t->write_paused && flush_now(t) < 0)
        return NULL;
    return PyLong_FromSsize_t(t->wsize);
}

static PyObject *dg_get_write_buffer_limits(Dgram *t, PyObject *unused)
{
    return flow_limits(t->high_obj, t->low_obj, t->high, t->low);
}

static PyObject *dg_get_protocol(Dgram *t, PyObject *unused)
{
    PyObject *p = t->protocol ? t->protocol : Py_None;
    Py_INCREF(p);
    return p;
}

static PyObject *dg_set_protocol(Dgram *t, PyObject *protocol)
{
    Py_INCREF(protocol);
    Py_XSETREF(t->protocol, protocol);
    Py_RETURN_NONE;
}

static PyObject *dg_repr(Dgram *t)
{
    const char *state = t->go_open ? (t->closing ? " closing" : "") : " closed";
    return PyUnicode_FromFormat("<goloop.DatagramTransport fd=%d%s read=%s bufsize=%zd>", t->fd, state,
                                t->armed ? "polling" : "idle", t->wsize);
}

static PyObject *get_fd(Dgram *t, void *c) { return PyLong_FromLong(t->go_open ? t->fd : -1); }
static PyObject *get_loop(Dgram *t, void *c)
{
    PyObject *l = t->loop ? (PyObject *)t->loop : Py_None;
    Py_INCREF(l);
    return l;
}
static PyObject *get_conn_lost(Dgram *t, void *c) { return PyLong_FromLong(t->conn_lost); }
static PyObject *get_address(Dgram *t, void *c)
{
    PyObject *a = t->address ? t->address : Py_None;
    Py_INCREF(a);
    return a;
}

static PyMethodDef dg_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))dg_sendto, METH_VARARGS | METH_KEYWORDS, NULL},
    {"close", (PyCFunction)dg_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)dg_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)dg_is_closing, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))dg_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_size", (PyCFunction)dg_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)dg_get_write_buffer_limits, METH_NOARGS, NULL},
    {"get_protocol", (PyCFunction)dg_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)dg_set_protocol, METH_O, NULL},
    {"_start_reading", (PyCFunction)dg_start_reading, METH_NOARGS, NULL},
    {"_force_close", (PyCFunction)dg_force_close, METH_O, NULL},
    {"_call_connection_lost", (PyCFunction)dg_call_connection_lost, METH_O, NULL},
    {NULL}
};

static PyGetSetDef dg_getset[] = {
    {"_sock_fd", (getter)get_fd, NULL, NULL, NULL},
    {"_loop", (getter)get_loop, NULL, NULL, NULL},
    {"_conn_lost", (getter)get_conn_lost, NULL, NULL, NULL},
    {"_address", (getter)get_address, NULL, NULL, NULL},
    {NULL}
};

static PyMemberDef dg_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Dgram, weakreflist), READONLY},
    {"_protocol", T_OBJECT, offsetof(Dgram, protocol), READONLY},
    {NULL}
};

static PyType_Slot dg_slots[] = {
    {Py_tp_new, dg_new},
    {Py_tp_init, dg_init},
    {Py_tp_dealloc, dg_dealloc},
    {Py_tp_finalize, dg_finalize},
    {Py_tp_traverse, dg_traverse},
    {Py_tp_clear, dg_clear},
    {Py_tp_methods, dg_methods},
    {Py_tp_getset, dg_getset},
    {Py_tp_members, dg_members},
    {Py_tp_repr, dg_repr},
    {0, NULL}
};

static PyType_Spec dg_spec = {
    "goloop._core.DatagramTransport", sizeof(Dgram), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    dg_slots
};

int init_dgram_type(PyObject *m)
{
    /* The base: asyncio.DatagramTransport and asyncio.Transport (asyncio's
     * selector datagram transport is both, and CPython's tests check for
     * Transport), whose layout is PyObject_HEAD plus the '_extra' slot. */
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    PyObject *dt = PyObject_GetAttrString(asyncio, "DatagramTransport");
    PyObject *tr = dt ? PyObject_GetAttrString(asyncio, "Transport") : NULL;
    Py_DECREF(asyncio);
    PyObject *base = tr ? PyObject_CallFunction((PyObject *)&PyType_Type, "s(OO){s:()s:s}",
                                                "DatagramTransportBase", dt, tr, "__slots__",
                                                "__module__", "goloop._core") : NULL;
    Py_XDECREF(dt);
    Py_XDECREF(tr);
    if (base == NULL)
        return -1;
    if (((PyTypeObject *)base)->tp_basicsize != offsetof(Dgram, extra) + sizeof(PyObject *)) {
        Py_DECREF(base);
        PyErr_SetString(PyExc_ImportError, "goloop: asyncio.DatagramTransport has an unexpected layout");
        return -1;
    }
    DatagramTransport_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &dg_spec, base);
    Py_DECREF(base);
    if (DatagramTransport_Type == NULL)
        return -1;
    return PyModule_AddObjectRef(m, "DatagramTransport", (PyObject *)DatagramTransport_Type);
}
