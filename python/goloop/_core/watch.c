/* Watchers (add_reader/add_writer on any fd) and listeners (a server
 * socket accepting through Go). Each is named in Go by its owner-table
 * token (owners.c), so one that is freed while a completion for it is
 * still on its way is simply not found: an EvPoll for it is dropped, an
 * EvAccept's fd is closed. */
#include "core.h"
#include <sys/socket.h>

PyTypeObject *Watcher_Type;
PyTypeObject *Listener_Type;

typedef struct {
    PyObject_HEAD
    LoopCore *loop;
    Handle *reader;
    Handle *writer;
    int fd;
    uint32_t mask;          /* what Go watches now */
    uint64_t token;
} Watcher;

typedef struct {
    PyObject_HEAD
    LoopCore *loop;
    PyObject *callback;     /* callback(fd) for a new connection, callback(-errno) for an error */
    /* serve(): plain connections whose EvAccept carries their addresses
     * become transports in C (transport_accept); callback gets the rest. */
    PyObject *factory;
    PyObject *server;
    int family, type, proto;
    int fd;
    char armed;
    char closed;            /* close() ran: connections still arriving are closed, not handed on */
    uint64_t token;
} Listener;

/* ---- Watcher ---- */

#define WTOKEN(w) ((w)->token)

static PyObject *w_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *loop;
    int fd;
    if (!PyArg_ParseTuple(args, "O!i", LoopCore_Type, &loop, &fd))
        return NULL;
    Watcher *w = (Watcher *)tp->tp_alloc(tp, 0);
    if (w == NULL)
        return NULL;
    Py_INCREF(loop);
    w->loop = (LoopCore *)loop;
    w->fd = fd;
    if (owners_bind(w->loop, (PyObject *)w, TAG_WATCHER, &w->token) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static int w_update(Watcher *w)
{
    uint32_t want = 0;
    if (w->reader != NULL)
        want |= GL_POLL_IN;
    if (w->writer != NULL)
        want |= GL_POLL_OUT;
    if (want == w->mask)
        return 0;
    int r = loop_submit(w->loop, want ? GL_OP_POLL_START : GL_OP_POLL_STOP, w->fd, WTOKEN(w), NULL, 0, want);
    if (r == 0)
        w->mask = want;
    /* epoll keys a watch by the open file, not the number: once the program
     * closes the fd (remove_reader, then close(), in one callback, as
     * asyncio allows) the watch can no longer be removed, and while a dup or
     * a forked child keeps the file open it fires for ever. asyncio's
     * selector removes the watch inside remove_reader; so does this. */
    if (r == 0 && want == 0 && w->loop->stops_now)
        r = loop_apply_now(w->loop);
    return r;
}

/* set(reader, writer): each a Handle or None; Ellipsis leaves it as it is. */
static PyObject *w_set(Watcher *w, PyObject *args)
{
    PyObject *r, *wr;
    if (!PyArg_ParseTuple(args, "OO", &r, &wr))
        return NULL;
    if (loop_check_alive(w->loop) < 0)
        return NULL;
    if (r != Py_Ellipsis) {
        if (r != Py_None && !PyObject_TypeCheck(r, Handle_Type))
            return PyErr_Format(PyExc_TypeError, "reader must be a Handle");
        Py_XINCREF(r == Py_None ? NULL : r);
        Py_XSETREF(w->reader, r == Py_None ? NULL : (Handle *)r);
    }
    if (wr != Py_Ellipsis) {
        if (wr != Py_None && !PyObject_TypeCheck(wr, Handle_Type))
            return PyErr_Format(PyExc_TypeError, "writer must be a Handle");
        Py_XINCREF(wr == Py_None ? NULL : wr);
        Py_XSETREF(w->writer, wr == Py_None ? NULL : (Handle *)wr);
    }
    if (w_update(w) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *w_get(Watcher *w, void *which)
{
    Handle *h = which ? w->writer : w->reader;
    PyObject *o = h ? (PyObject *)h : Py_None;
    Py_INCREF(o);
    return o;
}

int watcher_dispatch(LoopCore *lp, PyObject *obj, gl_comp *c)
{
    Watcher *w = (Watcher *)obj;
    if (c->kind != GL_EV_POLL)
        return 0;
    uint32_t ev = c->res < 0 ? (GL_POLL_IN | GL_POLL_OUT) : c->aux;
    if (c->res < 0)
        w->mask = 0; /* Go refused the fd; the callbacks find out from their own calls */
    int changed = 0;
    if (w->reader != NULL && (ev & (GL_POLL_IN | GL_POLL_ERR | GL_POLL_HUP))) {
        if (w->reader->cancelled) {
            Py_CLEAR(w->reader);
            changed = 1;
        } else if (loop_push_ready(lp, w->reader) < 0) {
            return -1;
        }
    }
    if (w->writer != NULL && (ev & (GL_POLL_OUT | GL_POLL_ERR | GL_POLL_HUP))) {
        if (w->writer->cancelled) {
            Py_CLEAR(w->writer);
            changed = 1;
        } else if (loop_push_ready(lp, w->writer) < 0) {
            return -1;
        }
    }
    if (changed && c->res >= 0 && w_update(w) < 0)
        return -1;
    return 0;
}

static int w_traverse(Watcher *w, visitproc visit, void *arg)
{
    Py_VISIT(w->loop);
    Py_VISIT(w->reader);
    Py_VISIT(w->writer);
    Py_VISIT(Py_TYPE(w));
    return 0;
}

static int w_clear(Watcher *w)
{
    Py_CLEAR(w->reader);
    Py_CLEAR(w->writer);
    if (w->loop != NULL)
        owners_release(w->loop, w->token);   /* before the loop may go */
    Py_CLEAR(w->loop);
    return 0;
}

static void w_dealloc(Watcher *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    /* Stop Go's watch; a poll completion already on its way finds no owner
     * (w_clear gives the token back). */
    if (w->loop != NULL && w->mask != 0 && go_usable(w->loop))
        loop_submit(w->loop, GL_OP_POLL_STOP, w->fd, w->token, NULL, 0, 0);
    w_clear(w);
    tp->tp_free(w);
    Py_DECREF(tp);
}

static PyMethodDef w_methods[] = {
    {"set", (PyCFunction)w_set, METH_VARARGS, NULL},
    {NULL}
};

static PyGetSetDef w_getset[] = {
    {"reader", (getter)w_get, NULL, NULL, NULL},
    {"writer", (getter)w_get, NULL, NULL, (void *)1},
    {NULL}
};

static PyType_Slot w_slots[] = {
    {Py_tp_new, w_new},
    {Py_tp_dealloc, w_dealloc},
    {Py_tp_traverse, w_traverse},
    {Py_tp_clear, w_clear},
    {Py_tp_methods, w_methods},
    {Py_tp_getset, w_getset},
    {0, NULL}
};

static PyType_Spec w_spec = {
    "goloop._core.Watcher", sizeof(Watcher), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, w_slots
};

/* ---- Listener ---- */

#define LTOKEN(l) ((l)->token)

static PyObject *l_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *loop, *cb;
    int fd;
    if (!PyArg_ParseTuple(args, "O!iO", LoopCore_Type, &loop, &fd, &cb))
        return NULL;
    Listener *l = (Listener *)tp->tp_alloc(tp, 0);
    if (l == NULL)
        return NULL;
    Py_INCREF(loop);
    l->loop = (LoopCore *)loop;
    Py_INCREF(cb);
    l->callback = cb;
    l->fd = fd;
    if (owners_bind(l->loop, (PyObject *)l, TAG_LISTENER, &l->token) < 0) {
        Py_DECREF(l);
        return NULL;
    }
    return (PyObject *)l;
}

static PyObject *l_start(Listener *l, PyObject *unused)
{
    if (loop_check_alive(l->loop) < 0)
        return NULL;
    if (l->armed || l->closed)
        Py_RETURN_NONE;
    if (loop_submit(l->loop, GL_OP_ACCEPT_START, l->fd, LTOKEN(l), NULL, 0, 0) < 0)
        return NULL;
    l->armed = 1;
    Py_RETURN_NONE;
}

/* serve(protocol_factory, server, family, type, proto): what a plain
 * (no TLS) server makes of each connection, for transport_accept. */
static PyObject *l_serve(Listener *l, PyObject *args)
{
    PyObject *factory, *server;
    int family, type, proto;
    if (!PyArg_ParseTuple(args, "OOiii", &factory, &server, &family, &type, &proto))
        return NULL;
    Py_INCREF(factory);
    Py_INCREF(server);
    Py_XSETREF(l->factory, factory);
    Py_XSETREF(l->server, server);
    l->family = family;
    l->type = type;
    l->proto = proto;
    Py_RETURN_NONE;
}

static PyObject *l_stop(Listener *l, PyObject *unused)
{
    if (!l->armed || l->loop->h == 0)
        Py_RETURN_NONE;
    if (loop_submit(l->loop, GL_OP_ACCEPT_STOP, l->fd, LTOKEN(l), NULL, 0, 0) < 0)
        return NULL;
    l->armed = 0;
    Py_RETURN_NONE;
}

/* close(): the server is done with this socket. From here on Go owns the
 * listening fd: it stops accepting and closes it after the stop, in order
 * (a connection the kernel queued meanwhile is reset by that close).
 * Connections Go accepted before the stop but not yet handed over are
 * closed by listener_dispatch.
 * Returns True when Go took the fd (the caller detaches its socket object),
 * False when Go is not there to take it (a closed loop, a forked child) and
 * the socket object must close it itself. */
static PyObject *l_close(Listener *l, PyObject *unused)
{
    if (l->closed)
        Py_RETURN_FALSE;
    l->closed = 1;
    Py_CLEAR(l->callback);
    Py_CLEAR(l->factory);
    Py_CLEAR(l->server);
    if (!go_usable(l->loop))
        Py_RETURN_FALSE;
    if (l->armed && loop_submit(l->loop, GL_OP_ACCEPT_STOP, l->fd, LTOKEN(l), NULL, 0, 0) < 0)
        return NULL;
    l->armed = 0;
    if (loop_submit(l->loop, GL_OP_CLOSE, l->fd, LTOKEN(l), NULL, 0, GL_CLOSE_ABORT) < 0)
        return NULL;
    l->loop->closes_in_flight++;
    /* asyncio closes a server's socket at once: a connect right after
     * server.close() is refused. So the stop and the close go to Go now;
     * their completions wait in Go for the iteration's own poll. */
    if (loop_apply_now(l->loop) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* The loop is closing with this listener still serving: no more callbacks;
 * the socket stays the server's (asyncio leaves closing it to server.close()). */
void listener_loop_closing(LoopCore *lp, PyObject *obj)
{
    Listener *l = (Listener *)obj;
    if (l->armed && !l->closed)
        loop_submit(lp, GL_OP_ACCEPT_STOP, l->fd, LTOKEN(l), NULL, 0, 0);
    l->armed = 0;
    l->closed = 1;
    Py_CLEAR(l->callback);
    Py_CLEAR(l->factory);
    Py_CLEAR(l->server);
}

int listener_dispatch(LoopCore *lp, PyObject *obj, gl_comp *c)
{
    Listener *l = (Listener *)obj;
    if (c->kind != GL_EV_ACCEPT)
        return 0;
    if (!(c->flags & GL_FLAG_MORE))
        l->armed = 0;
    if (l->closed || l->callback == NULL || lp->draining) {
        /* Accepted before the stop reached Go, for a server that is gone:
         * nobody else may have it, and its client must not wait. */
        if (c->res >= 0)
            loop_close_orphan(lp, c->res);
        return 0;
    }
    if (l->factory != NULL && c->res >= 0 && (c->aux & 0xffff) == AF_INET) {
        /* The listener may be closed from a callback this runs: keep what
         * the call needs. */
        PyObject *factory = Py_NewRef(l->factory), *server = Py_NewRef(l->server);
        int r = transport_accept(lp, c, factory, server, l->family, l->type, l->proto);
        Py_DECREF(factory);
        Py_DECREF(server);
        if (r < 0)
            return report_callback_error(lp, "Exception in accept callback", NULL, NULL);
        return 0;
    }
    PyObject *arg = PyLong_FromLong(c->res);
    if (arg == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(l->callback, arg);
    Py_DECREF(arg);
    if (r == NULL)
        return report_callback_error(lp, "Exception in accept callback", NULL, NULL);
    Py_DECREF(r);
    return 0;
}

static int l_traverse(Listener *l, visitproc visit, void *arg)
{
    Py_VISIT(l->loop);
    Py_VISIT(l->callback);
    Py_VISIT(l->factory);
    Py_VISIT(l->server);
    Py_VISIT(Py_TYPE(l));
    return 0;
}

static int l_clear(Listener *l)
{
    Py_CLEAR(l->callback);
    Py_CLEAR(l->factory);
    Py_CLEAR(l->server);
    if (l->loop != NULL)
        owners_release(l->loop, l->token);   /* before the loop may go */
    Py_CLEAR(l->loop);
    return 0;
}

static void l_dealloc(Listener *l)
{
    PyTypeObject *tp = Py_TYPE(l);
    PyObject_GC_UnTrack(l);
    l_clear(l);   /* gives the token back */
    tp->tp_free(l);
    Py_DECREF(tp);
}

static PyObject *l_armed(Listener *l, void *c) { return PyBool_FromLong(l->armed); }
static PyObject *l_closed(Listener *l, void *c) { return PyBool_FromLong(l->closed); }

static PyMethodDef l_methods[] = {
    {"start", (PyCFunction)l_start, METH_NOARGS, NULL},
    {"serve", (PyCFunction)l_serve, METH_VARARGS, NULL},
    {"stop", (PyCFunction)l_stop, METH_NOARGS, NULL},
    {"close", (PyCFunction)l_close, METH_NOARGS, NULL},
    {NULL}
};

static PyGetSetDef l_getset[] = {
    {"armed", (getter)l_armed, NULL, NULL, NULL},
    {"closed", (getter)l_closed, NULL, NULL, NULL},
    {NULL}
};

static PyType_Slot l_slots[] = {
    {Py_tp_new, l_new},
    {Py_tp_dealloc, l_dealloc},
    {Py_tp_traverse, l_traverse},
    {Py_tp_clear, l_clear},
    {Py_tp_methods, l_methods},
    {Py_tp_getset, l_getset},
    {0, NULL}
};

static PyType_Spec l_spec = {
    "goloop._core.Listener", sizeof(Listener), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, l_slots
};

int init_watch_types(PyObject *m)
{
    Watcher_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &w_spec, NULL);
    if (Watcher_Type == NULL || PyModule_AddObjectRef(m, "Watcher", (PyObject *)Watcher_Type) < 0)
        return -1;
    Listener_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &l_spec, NULL);
    if (Listener_Type == NULL || PyModule_AddObjectRef(m, "Listener", (PyObject *)Listener_Type) < 0)
        return -1;
    return 0;
}
