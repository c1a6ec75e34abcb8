/* LoopCore: the ready queue, the timer heap, the submission batch and the run
 * loop. One iteration = one goloop_poll call (GIL released) that carries the
 * batch in and the completions out, then completion dispatch, due timers, and
 * the callbacks that were ready when the iteration began. */
#include "core.h"
#include <unistd.h>
#include <math.h>
#include <time.h>

PyTypeObject *LoopCore_Type;

double loop_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int loop_check_alive(LoopCore *lp)
{
    if (lp->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

/* ---- submissions ---- */

int loop_submit(LoopCore *lp, uint8_t op, int fd, uint64_t token, const void *ptr,
                uint32_t len, uint32_t arg)
{
    if (lp->nsubs == lp->capsubs) {
        int ncap = lp->capsubs ? lp->capsubs * 2 : 256;
        gl_sub *n = PyMem_Realloc(lp->subs, sizeof(gl_sub) * ncap);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        lp->subs = n;
        lp->capsubs = ncap;
    }
    gl_sub *s = &lp->subs[lp->nsubs++];
    memset(s, 0, sizeof(*s));
    s->op = op;
    s->fd = fd;
    s->token = token;
    s->ptr = (uint64_t)(uintptr_t)ptr;
    s->len = len;
    s->arg = arg;
    return 0;
}

/* ---- ready queue ---- */

int loop_push_ready(LoopCore *lp, Handle *h)
{
    if (lp->rlen == lp->rcap) {
        Py_ssize_t ncap = lp->rcap ? lp->rcap * 2 : 256;
        Handle **n = PyMem_Malloc(sizeof(Handle *) * ncap);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < lp->rlen; i++)
            n[i] = lp->ready[(lp->rhead + i) % lp->rcap];
        PyMem_Free(lp->ready);
        lp->ready = n;
        lp->rcap = ncap;
        lp->rhead = 0;
    }
    Py_INCREF(h);
    lp->ready[(lp->rhead + lp->rlen) % lp->rcap] = h;
    lp->rlen++;
    return 0;
}

static Handle *pop_ready(LoopCore *lp)
{
    Handle *h = lp->ready[lp->rhead];
    lp->rhead = (lp->rhead + 1) % lp->rcap;
    lp->rlen--;
    return h;
}

Handle *loop_call_soon(LoopCore *lp, PyObject *cb, PyObject *args, PyObject *context)
{
    Handle *h = handle_new(Handle_Type, lp, cb, args, context, 0);
    if (h == NULL)
        return NULL;
    if (loop_push_ready(lp, h) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

/* ---- timer heap ---- */

static void heap_swap(Handle **a, Py_ssize_t i, Py_ssize_t j)
{
    Handle *t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* When a timer is due, for ordering and waiting: a NaN time compares as
 * "now" (asyncio runs such a timer at once, since no comparison with NaN
 * holds), so it neither breaks the heap's order nor the wait's arithmetic. */
static inline double due(const Handle *h)
{
    return isnan(h->when) ? -INFINITY : h->when;
}

static void heap_up(Handle **a, Py_ssize_t i)
{
    while (i > 0) {
        Py_ssize_t p = (i - 1) / 2;
        if (due(a[p]) <= due(a[i]))
            break;
        heap_swap(a, i, p);
        i = p;
    }
}

static void heap_down(Handle **a, Py_ssize_t n, Py_ssize_t i)
{
    for (;;) {
        Py_ssize_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && due(a[l]) < due(a[m]))
            m = l;
        if (r < n && due(a[r]) < due(a[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(a, i, m);
        i = m;
    }
}

static int heap_push(LoopCore *lp, Handle *h)
{
    if (lp->hlen == lp->hcap) {
        Py_ssize_t ncap = lp->hcap ? lp->hcap * 2 : 64;
        Handle **n = PyMem_Realloc(lp->heap, sizeof(Handle *) * ncap);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        lp->heap = n;
        lp->hcap = ncap;
    }
    Py_INCREF(h);
    h->scheduled = 1;
    lp->heap[lp->hlen] = h;
    heap_up(lp->heap, lp->hlen);
    lp->hlen++;
    return 0;
}

static Handle *heap_pop(LoopCore *lp)
{
    Handle *h = lp->heap[0];
    lp->hlen--;
    if (lp->hlen > 0) {
        lp->heap[0] = lp->heap[lp->hlen];
        heap_down(lp->heap, lp->hlen, 0);
    }
    h->scheduled = 0;
    return h;
}

/* Cancelled timers stay in the heap until they surface, unless they are
 * most of it: then rebuild, so a server that arms and cancels a timeout per
 * request does not grow the heap without bound. */
static void heap_compact(LoopCore *lp)
{
    if (lp->hlen < 100 || lp->hcancelled * 2 < lp->hlen)
        return;
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < lp->hlen; i++) {
        Handle *h = lp->heap[i];
        if (h->cancelled) {
            h->scheduled = 0;
            Py_DECREF(h);
        } else {
            lp->heap[j++] = h;
        }
    }
    lp->hlen = j;
    for (Py_ssize_t i = j / 2; i >= 0; i--)
        heap_down(lp->heap, lp->hlen, i);
    lp->hcancelled = 0;
}

/* ---- exception handler ---- */

int loop_call_exception_handler(LoopCore *lp, PyObject *ctx)
{
    static PyObject *name = NULL;
    if (name == NULL)
        name = PyUnicode_InternFromString("call_exception_handler");
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)lp, name, ctx);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyErr_WriteUnraisable((PyObject *)lp);
    return 0;
}

/* ---- Python methods ---- */

static PyObject *get_context_kw(PyObject *kwnames, PyObject *const *args, Py_ssize_t nargs,
                                int *err)
{
    *err = 0;
    if (kwnames == NULL)
        return NULL;
    PyObject *ctx = NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "context") == 0) {
            ctx = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "unexpected keyword argument '%U'", k);
            *err = 1;
            return NULL;
        }
    }
    return ctx;
}

static int debug_checks(LoopCore *lp, PyObject *cb, const char *method)
{
    if (!lp->debug || HOOKS.check_call == NULL)
        return 0;
    PyObject *name = PyUnicode_FromString(method);
    if (name == NULL)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(HOOKS.check_call, (PyObject *)lp, cb, name, NULL);
    Py_DECREF(name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The positional arguments after the first `skip` as a tuple. */
static PyObject *rest_tuple(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t skip)
{
    PyObject *a = PyTuple_New(nargs - skip);
    if (a == NULL)
        return NULL;
    for (Py_ssize_t i = skip; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(a, i - skip, args[i]);
    }
    return a;
}

/* call_soon(callback, *args, context=None) and its thread-safe twin. */
static Handle *schedule_call(LoopCore *lp, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames, const char *method)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int err;
    PyObject *ctx = get_context_kw(kwnames, args, nargs, &err);
    if (err)
        return NULL;
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: 'callback'", method);
        return NULL;
    }
    if (loop_check_alive(lp) < 0 || debug_checks(lp, args[0], method) < 0)
        return NULL;
    PyObject *a = rest_tuple(args, nargs, 1);
    if (a == NULL)
        return NULL;
    Handle *h = loop_call_soon(lp, args[0], a, ctx);
    Py_DECREF(a);
    return h;
}

static PyObject *lc_call_soon(LoopCore *lp, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return (PyObject *)schedule_call(lp, args, nargsf, kwnames, "call_soon");
}

/* Other threads hold the GIL while they call this, so the ready ring is
 * safe to touch, and one queue keeps asyncio's global FIFO order. The
 * loop's thread needs waking only while it waits in goloop_poll (waiting,
 * set before it releases the GIL there): at any other time it holds the
 * GIL, or will take it back before it next decides how long to wait, and
 * then it finds this callback in the ready ring. */
static PyObject *lc_call_soon_threadsafe(LoopCore *lp, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Handle *h = schedule_call(lp, args, nargsf, kwnames, "call_soon_threadsafe");
    if (h != NULL && lp->waiting && lp->thread != PyThread_get_thread_ident())
        go_wake_from_thread(lp);   /* ends the wait in progress */
    return (PyObject *)h;
}

static PyObject *lc_call_at(LoopCore *lp, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int err;
    PyObject *ctx = get_context_kw(kwnames, args, nargs, &err);
    if (err)
        return NULL;
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "call_at() missing required positional arguments: 'when' and 'callback'");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "when cannot be None");
        return NULL;
    }
    double when = PyFloat_AsDouble(args[0]);
    if (when == -1.0 && PyErr_Occurred())
        return NULL;
    if (loop_check_alive(lp) < 0 || debug_checks(lp, args[1], "call_at") < 0)
        return NULL;
    PyObject *a = rest_tuple(args, nargs, 2);
    if (a == NULL)
        return NULL;
    Handle *h = handle_new(TimerHandle_Type, lp, args[1], a, ctx, when);
    Py_DECREF(a);
    if (h == NULL)
        return NULL;
    if (heap_push(lp, h) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

static PyObject *lc_call_later(LoopCore *lp, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "call_later() missing required positional arguments: 'delay' and 'callback'");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "delay must not be None");
        return NULL;
    }
    PyObject *when;
    if (PyFloat_Check(args[0]) || PyLong_Check(args[0])) {
        double delay = PyFloat_AsDouble(args[0]);
        if (delay == -1.0 && PyErr_Occurred())
            return NULL;
        when = PyFloat_FromDouble(loop_time() + delay);
    } else {
        /* asyncio computes self.time() + delay: whatever that does with
         * this type (a Decimal: TypeError) is what happens here too. */
        PyObject *now = PyFloat_FromDouble(loop_time());
        when = now ? PyNumber_Add(now, args[0]) : NULL;
        Py_XDECREF(now);
    }
    if (when == NULL)
        return NULL;
    PyObject *stack[64];
    PyObject **v = stack;
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (total > 64) {
        v = PyMem_Malloc(sizeof(PyObject *) * total);
        if (v == NULL) {
            Py_DECREF(when);
            return PyErr_NoMemory();
        }
    }
    v[0] = when;
    for (Py_ssize_t i = 1; i < total; i++)
        v[i] = args[i];
    PyObject *r = lc_call_at(lp, v, nargs, kwnames);
    if (v != stack)
        PyMem_Free(v);
    Py_DECREF(when);
    if (r != NULL && ((Handle *)r)->source_traceback != NULL)
        ; /* source traceback already points at the caller's frame */
    return r;
}

/* _make_handle(callback, args, context): a Handle not yet scheduled, for
 * readers, writers and signal handlers. */
static PyObject *lc_make_handle(LoopCore *lp, PyObject *args)
{
    PyObject *cb, *a, *ctx = Py_None;
    if (!PyArg_ParseTuple(args, "OO!|O", &cb, &PyTuple_Type, &a, &ctx))
        return NULL;
    return (PyObject *)handle_new(Handle_Type, lp, cb, a, ctx, 0);
}

static PyObject *lc_push_handle(LoopCore *lp, PyObject *h)
{
    if (!PyObject_TypeCheck(h, Handle_Type))
        return PyErr_Format(PyExc_TypeError, "expected a Handle");
    if (loop_push_ready(lp, (Handle *)h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* create_future and create_task: asyncio's C Future and Task, made without
 * a Python frame of ours. Task factories and debug mode take asyncio's own
 * Python path (BaseEventLoop.create_task). */
static PyObject *future_type, *task_type, *base_create_task, *kw_loop, *kw_loop_name_ctx;

static int load_asyncio_types(void)
{
    if (future_type != NULL)
        return 0;
    PyObject *futures = PyImport_ImportModule("asyncio.futures");
    PyObject *tasks = futures ? PyImport_ImportModule("asyncio.tasks") : NULL;
    PyObject *be = tasks ? PyImport_ImportModule("asyncio.base_events") : NULL;
    PyObject *bel = be ? PyObject_GetAttrString(be, "BaseEventLoop") : NULL;
    if (bel != NULL) {
        future_type = PyObject_GetAttrString(futures, "Future");
        task_type = PyObject_GetAttrString(tasks, "Task");
        base_create_task = PyObject_GetAttrString(bel, "create_task");
        kw_loop = Py_BuildValue("(s)", "loop");
        kw_loop_name_ctx = Py_BuildValue("(sss)", "loop", "name", "context");
    }
    Py_XDECREF(futures);
    Py_XDECREF(tasks);
    Py_XDECREF(be);
    Py_XDECREF(bel);
    if (future_type == NULL || task_type == NULL || base_create_task == NULL ||
        kw_loop == NULL || kw_loop_name_ctx == NULL) {
        Py_CLEAR(future_type);
        return -1;
    }
    return 0;
}

static PyObject *lc_create_future(LoopCore *lp, PyObject *unused)
{
    if (load_asyncio_types() < 0)
        return NULL;
    PyObject *args[1] = {(PyObject *)lp};
    return PyObject_Vectorcall(future_type, args, 0, kw_loop);
}

static PyObject *lc_create_task(LoopCore *lp, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (load_asyncio_types() < 0)
        return NULL;
    PyObject *factory = NULL;
    if (!lp->debug) {
        static PyObject *attr = NULL;
        if (attr == NULL)
            attr = PyUnicode_InternFromString("_task_factory");
        factory = PyObject_GetAttr((PyObject *)lp, attr);
        if (factory == NULL)
            return NULL;
    }
    if (lp->debug || factory != Py_None || nargs != 1) {
        Py_XDECREF(factory);
        /* asyncio's path: argument errors, factories, source tracebacks */
        PyObject *stack[16];
        Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
        if (total + 1 > 16) {
            PyErr_SetString(PyExc_TypeError, "create_task() got too many arguments");
            return NULL;
        }
        stack[0] = (PyObject *)lp;
        for (Py_ssize_t i = 0; i < total; i++)
            stack[i + 1] = args[i];
        return PyObject_Vectorcall(base_create_task, stack, nargs + 1, kwnames);
    }
    Py_DECREF(factory);
    PyObject *name = Py_None, *context = Py_None;
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(k, "name") == 0)
                name = args[nargs + i];
            else if (PyUnicode_CompareWithASCIIString(k, "context") == 0)
                context = args[nargs + i];
            else
                return PyErr_Format(PyExc_TypeError,
                                    "create_task() got an unexpected keyword argument '%U'", k);
        }
    }
    if (loop_check_alive(lp) < 0)
        return NULL;
    PyObject *stack[4] = {args[0], (PyObject *)lp, name, context};
    return PyObject_Vectorcall(task_type, stack, 1, kw_loop_name_ctx);
}

static PyObject *lc_time(LoopCore *lp, PyObject *unused)
{
    return PyFloat_FromDouble(loop_time());
}

/* asyncio's get_debug (return self._debug), in C: asyncio's C Future and
 * Task ask it at every construction, two or three times per request of an
 * aiohttp server, and asyncio's is a Python frame. */
static PyObject *lc_get_debug(LoopCore *lp, PyObject *unused)
{
    return PyBool_FromLong(lp->debug);
}

/* Run completions [cpos, ncomps). A completion is consumed before its
 * handler runs, so a KeyboardInterrupt leaves the rest for next time.
 *
 * The batch is dispatched as Go returned it: records never move while it
 * is dispatched (run_once refuses re-entry; loop_apply_now only appends), so
 * the records stay where they are. Each record reaches the owner its token
 * names, if that owner still exists (owners.c); otherwise what it carries
 * is given back. */
static int dispatch(LoopCore *lp)
{
    while (lp->cpos < lp->ncomps) {
        gl_comp c = lp->comps[lp->cpos++];
        unsigned tag = (unsigned)(c.token & TAG_MASK);
        if (c.kind == GL_EV_CLOSED)
            lp->closes_in_flight--;   /* Go answers every OpClose with one EvClosed */
        if (tag == TAG_CALL) {
            if (!lp->draining && (c.kind == GL_EV_CONNECT ? connect_dispatch(lp, &c) : call_dispatch(lp, &c)) < 0)
                return -1;
            continue;
        }
        if (tag == TAG_ORPHAN || tag == 0)
            continue;
        PyObject *obj = owners_get(lp, c.token);
        if (obj == NULL) {
            owners_stale(lp, &c);
            continue;
        }
        int r = 0;
        double t0 = lp->debug ? loop_time() : 0;
        if (lp->debug)
            Py_INCREF(obj);   /* named in the slow-callback warning below */
        switch (tag) {
        case TAG_TRANSPORT:
            if (c.kind == GL_EV_RECV && c.res > 0) {
                int start = lp->cpos - 1, k = 1;
                while (start + k < lp->ncomps) {
                    gl_comp *d = &lp->comps[start + k];
                    if (d->token != c.token || d->kind != GL_EV_RECV || d->res <= 0)
                        break;
                    k++;
                }
                if (k > 1) {
                    lp->cpos = start + k;
                    r = transport_recv_run(lp, obj, &lp->comps[start], k);
                    break;
                }
            }
            r = transport_dispatch(lp, obj, &c);
            break;
        case TAG_WATCHER:
            if (!lp->draining)
                r = watcher_dispatch(lp, obj, &c);
            break;
        case TAG_LISTENER:
            r = listener_dispatch(lp, obj, &c);
            break;
        case TAG_DGRAM:
            r = dgram_dispatch(lp, obj, &c);
            break;
        default:
            break;
        }
        if (lp->debug) {
            /* asyncio warns about a slow _read_ready handle, in which its
             * data_received runs; here protocol callbacks run from the
             * completion itself, so the completion is what is timed. */
            if (r == 0 && HOOKS.slow_callback != NULL) {
                PyObject *what = PyUnicode_FromFormat("<I/O completion for %R>", obj);
                PyObject *res = what ? PyObject_CallFunction(HOOKS.slow_callback, "OOd", lp, what,
                                                             loop_time() - t0) : NULL;
                Py_XDECREF(res);
                Py_XDECREF(what);
                PyErr_Clear();
            }
            Py_DECREF(obj);
        }
        if (r < 0)
            return -1;
    }
    return 0;
}

/* Hand the batch to Go now, for the few operations whose effect asyncio
 * makes visible at once (a server's close must refuse the next connect),
 * not for the hot path. What completes is appended after the batch being
 * dispatched, in the array's free tail: no record already there moves or
 * changes, so a dispatch in progress (and any pointer it holds into the
 * batch) goes on over the same records, then over these. What does not fit
 * stays queued in Go for the next poll. */
int loop_apply_now(LoopCore *lp)
{
    if (lp->nsubs == 0 || !go_usable(lp))
        return 0;
    int nsubs = lp->nsubs;
    lp->nsubs = 0;
    int n = go_poll(lp, lp->subs, nsubs, lp->comps + lp->ncomps, lp->capcomps - lp->ncomps, GL_APPLY_ONLY);
    lp->polls++;
    if (n < 0)
        return -1;
    lp->ncomps += n;
    return 0;
}

/* Close an fd nobody owns any more (Go handed it over, its owner is gone).
 * Only Go closes fds it was handed, so this is a submission like any other. */
void loop_close_orphan(LoopCore *lp, int fd)
{
    if (loop_submit(lp, GL_OP_CLOSE, fd, TAG_ORPHAN, NULL, 0, GL_CLOSE_ABORT) == 0)
        lp->closes_in_flight++;
    else
        PyErr_Clear();
}

static int run_handle(LoopCore *lp, Handle *hd)
{
    if (hd->cancelled)
        return 0;
    if (!lp->debug || HOOKS.slow_callback == NULL)
        return handle_run(hd);
    double t0 = loop_time();
    int e = handle_run(hd);
    double dt = loop_time() - t0;
    if (e == 0) {
        PyObject *r = PyObject_CallFunction(HOOKS.slow_callback, "OOd", lp, hd, dt);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    return e;
}

/* One iteration, in asyncio's order: the callbacks that were ready before
 * the wait run first, then what the wait brought (I/O completions), then the
 * timers that came due. Whatever those schedule runs next iteration. */
static int run_once(LoopCore *lp)
{
    if (lp->cpos < lp->ncomps && dispatch(lp) < 0)
        return -1;

    int64_t timeout = -1;
    if (lp->rlen > 0 || lp->stopping) {
        timeout = 0;
    } else if (lp->hlen > 0) {
        double dt = due(lp->heap[0]) - loop_time();
        /* asyncio waits at most a day at a time (MAXIMUM_SELECT_TIMEOUT);
         * that also keeps an infinite time out of the integer conversion. */
        if (dt > 86400.0)
            dt = 86400.0;
        timeout = dt <= 0 ? 0 : (int64_t)ceil(dt * 1e9);
    }
    Py_ssize_t ntodo = lp->rlen;
    int nsubs = lp->nsubs;
    lp->nsubs = 0;
    int n = go_poll(lp, lp->subs, nsubs, lp->comps, lp->capcomps, timeout);
    lp->polls++;
    if (n < 0)
        return -1;
    lp->ncomps = n;
    lp->cpos = 0;

    if (PyErr_CheckSignals() < 0)
        return -1;

    for (Py_ssize_t i = 0; i < ntodo && lp->rlen > 0; i++) {
        Handle *hd = pop_ready(lp);
        int e = run_handle(lp, hd);
        Py_DECREF(hd);
        if (e < 0)
            return -1;
    }

    if (dispatch(lp) < 0)
        return -1;

    heap_compact(lp);
    double now = loop_time();
    while (lp->hlen > 0) {
        Handle *t = lp->heap[0];
        if (t->cancelled) {
            heap_pop(lp);
            lp->hcancelled--;
            Py_DECREF(t);
            continue;
        }
        if (due(t) > now)
            break;
        heap_pop(lp);
        int e = run_handle(lp, t);
        Py_DECREF(t);
        if (e < 0)
            return -1;
    }
    return 0;
}

/* _run(): iterate until stop() was called, as BaseEventLoop.run_forever's
 * inner loop does; the Python caller sets up and tears down around it. */
static int check_not_iterating(LoopCore *lp)
{
    if (lp->iterating) {
        PyErr_SetString(PyExc_RuntimeError,
                        "goloop: the loop cannot run an iteration from inside one");
        return -1;
    }
    return 0;
}

static PyObject *lc_run(LoopCore *lp, PyObject *unused)
{
    if (loop_check_alive(lp) < 0 || go_enter(lp) < 0 || check_not_iterating(lp) < 0)
        return NULL;
    lp->thread = PyThread_get_thread_ident();
    lp->iterating = 1;
    int r = 0;
    for (;;) {
        if (run_once(lp) < 0) {
            r = -1;
            break;
        }
        if (lp->stopping)
            break;
    }
    lp->iterating = 0;
    lp->stopping = 0;
    lp->thread = 0;
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *lc_run_once(LoopCore *lp, PyObject *unused)
{
    if (loop_check_alive(lp) < 0 || go_enter(lp) < 0 || check_not_iterating(lp) < 0)
        return NULL;
    lp->iterating = 1;
    int r = run_once(lp);
    lp->iterating = 0;
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *lc_backend(LoopCore *lp, PyObject *unused)
{
    return go_backend_name(lp);
}

/* _close_core(): release everything Go holds for this loop. Transports
 * still open are aborted (Go closes their fds after cancelling their sends),
 * listeners stop handing out connections (Go closes any it still accepts),
 * and the batch is driven until every close submitted has been answered;
 * then the Go loop itself (ring or epoll fd, eventfd, buffers) is closed.
 * In a forked child none of this may touch Go: the loop just lets go. */
static PyObject *lc_close_core(LoopCore *lp, PyObject *unused)
{
    if (!go_usable(lp)) {
        if (lp->h != 0 && gl_forked()) {
            /* The inherited loop closed in a child: its transports close
             * their copies of the fds, as Go closes them in the parent. */
            for (uint32_t i = 1; i < lp->nslots; i++) {
                PyObject *obj = lp->slots[i].obj;
                unsigned tag = lp->slots[i].tag;
                if (obj == NULL || (tag != TAG_TRANSPORT && tag != TAG_DGRAM))
                    continue;
                Py_INCREF(obj);
                if (tag == TAG_TRANSPORT)
                    transport_child_loop_closing(obj);
                else
                    dgram_child_loop_closing(obj);
                Py_DECREF(obj);
            }
        }
        lp->h = 0;
        Py_RETURN_NONE;
    }
    for (uint32_t i = 1; i < lp->nslots; i++) {
        owner_slot *s = &lp->slots[i];
        if (s->obj == NULL)
            continue;
        if (s->tag == TAG_TRANSPORT)
            transport_loop_closing(lp, s->obj);
        else if (s->tag == TAG_LISTENER)
            listener_loop_closing(lp, s->obj);
        else if (s->tag == TAG_DGRAM)
            dgram_loop_closing(lp, s->obj);
        else if (s->tag == TAG_SOCKOP)
            sockop_loop_closing(lp, s->obj);
    }
    /* What the last iteration left undispatched comes first: an EvClosed
     * among it would otherwise never be counted. Python callbacks do not
     * run from here: aborted transports and closed listeners only give
     * back what completions carry. */
    lp->draining = 1;
    lp->iterating = 1;
    for (int rounds = 0; rounds < 1000; rounds++) {
        if (lp->cpos < lp->ncomps) {
            if (dispatch(lp) < 0)
                PyErr_WriteUnraisable((PyObject *)lp);
            continue;
        }
        if (lp->closes_in_flight <= 0 && lp->nsubs == 0)
            break;
        int nsubs = lp->nsubs;
        lp->nsubs = 0;
        int n = go_poll(lp, lp->subs, nsubs, lp->comps, lp->capcomps, 10 * 1000 * 1000);
        lp->polls++;   /* the batch is Go's now (coalesce, unsubmitted) */
        if (n < 0) {
            PyErr_WriteUnraisable((PyObject *)lp);
            break;
        }
        lp->ncomps = n;
        lp->cpos = 0;
    }
    lp->iterating = 0;
    lp->draining = 0;
    lp->ncomps = lp->cpos = 0;
    go_close(lp);
    lend_release(lp);
    Py_RETURN_NONE;
}

static void clear_queues(LoopCore *lp)
{
    while (lp->rlen > 0) {
        Handle *h = pop_ready(lp);
        Py_DECREF(h);
    }
    while (lp->hlen > 0) {
        Handle *h = heap_pop(lp);
        Py_DECREF(h);
    }
    lp->hcancelled = 0;
}

static PyObject *lc_clear(LoopCore *lp, PyObject *unused)
{
    clear_queues(lp);
    Py_RETURN_NONE;
}

/* The backend a new loop runs on: the backend= argument, else
 * GOLOOP_BACKEND as os.environ has it now (Go's own copy of the
 * environment is the one it saw when it started), else the best one. */
static PyObject *backend_choice(PyObject *kw)
{
    PyObject *b = kw ? PyDict_GetItemString(kw, "backend") : NULL;
    if (b != NULL && b != Py_None) {
        Py_INCREF(b);
    } else {
        PyObject *os = PyImport_ImportModule("os");
        PyObject *env = os ? PyObject_GetAttrString(os, "environ") : NULL;
        Py_XDECREF(os);
        if (env == NULL)
            return NULL;
        b = PyObject_CallMethod(env, "get", "ss", "GOLOOP_BACKEND", "");
        Py_DECREF(env);
        if (b == NULL)
            return NULL;
    }
    if (!PyUnicode_Check(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "goloop: backend must be a str");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(b);
    if (name == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    if (strcmp(name, "") != 0 && strcmp(name, "io_uring") != 0 && strcmp(name, "epoll") != 0) {
        PyErr_Format(PyExc_ValueError,
                     "goloop: unknown backend %R (GOLOOP_BACKEND or backend= must be "
                     "'io_uring' or 'epoll')", b);
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

/* Every live loop, for the fork hook below. */
static LoopCore *all_loops = NULL;

/* In the child of a fork made after Go started (os.register_at_fork runs
 * this; gl_forked() is already set by the C-level hook): nothing Go was
 * doing will ever answer there, so no transport may stay pinned by it, or
 * a child that drops its loop could never collect them and close its
 * copies of their fds. What the parent's last batch had not dispatched yet
 * says what Go already did: an EvClosed means that fd is gone (its number
 * may be another file's now), an EvAccept's connection is the child's
 * alone, and nobody's: its copy is closed. */
PyObject *loop_after_fork_child(void)
{
    if (!gl_forked())
        Py_RETURN_NONE;
    PyObject *unpinned = PyList_New(0);
    if (unpinned == NULL)
        return NULL;
    for (LoopCore *lp = all_loops; lp != NULL; lp = lp->fork_next) {
        for (int i = lp->cpos; i < lp->ncomps; i++) {
            gl_comp *c = &lp->comps[i];
            if (c->kind == GL_EV_ACCEPT && c->res >= 0) {
                close(c->res);
                continue;
            }
            PyObject *obj = c->kind == GL_EV_CLOSED ? owners_get(lp, c->token) : NULL;
            unsigned tag = (unsigned)(c->token & TAG_MASK);
            if (obj != NULL && ((tag == TAG_TRANSPORT && transport_forked(obj, 1, unpinned) < 0) ||
                                (tag == TAG_DGRAM && dgram_forked(obj, 1, unpinned) < 0)))
                goto fail;
        }
        lp->ncomps = lp->cpos = 0;
        for (uint32_t i = 1; i < lp->nslots; i++) {
            owner_slot *s = &lp->slots[i];
            if (s->obj != NULL && ((s->tag == TAG_TRANSPORT && transport_forked(s->obj, 0, unpinned) < 0) ||
                                   (s->tag == TAG_DGRAM && dgram_forked(s->obj, 0, unpinned) < 0)))
                goto fail;
        }
    }
    Py_DECREF(unpinned);   /* whatever only Go's pins held goes now */
    Py_RETURN_NONE;
fail:
    Py_DECREF(unpinned);
    return NULL;
}

static PyObject *lc_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    if (gl_ensure_loaded() < 0)
        return NULL;
    PyObject *backend = backend_choice(kw);
    if (backend == NULL)
        return NULL;
    LoopCore *lp = (LoopCore *)tp->tp_alloc(tp, 0);
    if (lp == NULL) {
        Py_DECREF(backend);
        return NULL;
    }
    lp->wake_fd = -1;
    lp->calls = PyDict_New();
    lp->connects = PyDict_New();
    lp->capcomps = 1024;
    lp->comps = PyMem_Malloc(sizeof(gl_comp) * lp->capcomps);
    if (lp->calls == NULL || lp->connects == NULL || lp->comps == NULL) {
        Py_DECREF(backend);
        Py_DECREF(lp);
        return PyErr_NoMemory();
    }
    char err[256] = {0};
    const char *name = PyUnicode_AsUTF8(backend);
    lp->h = go_new(name[0] ? name : "auto", err, sizeof err);
    Py_DECREF(backend);
    if (lp->h == 0 && PyErr_Occurred()) {
        Py_DECREF(lp);
        return NULL;
    }
    if (lp->h == 0) {
        PyErr_Format(PyExc_OSError, "goloop: cannot start a loop: %s", err);
        Py_DECREF(lp);
        return NULL;
    }
    PyObject *actual = go_backend_name(lp);
    if (actual == NULL) {
        Py_DECREF(lp);
        return NULL;
    }
    lp->stops_now = PyUnicode_CompareWithASCIIString(actual, "epoll") == 0;
    Py_DECREF(actual);
    lp->wake_fd = go_wake_fd(lp);
    lp->fork_next = all_loops;
    if (all_loops != NULL)
        all_loops->fork_prev = lp;
    all_loops = lp;
    return (PyObject *)lp;
}

static int lc_traverse(LoopCore *lp, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < lp->rlen; i++)
        Py_VISIT(lp->ready[(lp->rhead + i) % lp->rcap]);
    for (Py_ssize_t i = 0; i < lp->hlen; i++)
        Py_VISIT(lp->heap[i]);
    Py_VISIT(lp->calls);
    Py_VISIT(lp->connects);
    Py_VISIT(Py_TYPE(lp));
    return 0;
}

static int lc_clear_gc(LoopCore *lp)
{
    clear_queues(lp);
    Py_CLEAR(lp->calls);
    Py_CLEAR(lp->connects);
    return 0;
}

static void lc_dealloc(LoopCore *lp)
{
    PyTypeObject *tp = Py_TYPE(lp);
    PyObject_GC_UnTrack(lp);
    if (lp->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)lp);
    if (lp->fork_prev != NULL)
        lp->fork_prev->fork_next = lp->fork_next;
    else if (all_loops == lp)
        all_loops = lp->fork_next;
    if (lp->fork_next != NULL)
        lp->fork_next->fork_prev = lp->fork_prev;
    clear_queues(lp);
    /* Never closed: at least give Go's fds and buffers back. */
    go_close(lp);
    lend_release(lp);
    Py_CLEAR(lp->calls);
    Py_CLEAR(lp->connects);  /* sockaddrs Go read: only after go_close */
    PyMem_Free(lp->slots);
    PyMem_Free(lp->ready);
    PyMem_Free(lp->heap);
    PyMem_Free(lp->subs);
    PyMem_Free(lp->comps);
    tp->tp_free(lp);
    Py_DECREF(tp);
}

static PyObject *get_flag(LoopCore *lp, void *off)
{
    return PyBool_FromLong(*((char *)lp + (Py_ssize_t)off));
}

static int set_flag(LoopCore *lp, PyObject *v, void *off)
{
    int b = v ? PyObject_IsTrue(v) : 0;
    if (b < 0)
        return -1;
    *((char *)lp + (Py_ssize_t)off) = (char)b;
    return 0;
}

static PyObject *get_nready(LoopCore *lp, void *c) { return PyLong_FromSsize_t(lp->rlen); }
static PyObject *get_ntimers(LoopCore *lp, void *c) { return PyLong_FromSsize_t(lp->hlen - lp->hcancelled); }

static PyMethodDef lc_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))lc_call_soon, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))lc_call_soon_threadsafe, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_at", (PyCFunction)(void (*)(void))lc_call_at, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_later", (PyCFunction)(void (*)(void))lc_call_later, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"time", (PyCFunction)lc_time, METH_NOARGS, NULL},
    {"get_debug", (PyCFunction)lc_get_debug, METH_NOARGS, NULL},
    {"create_future", (PyCFunction)lc_create_future, METH_NOARGS, NULL},
    {"create_task", (PyCFunction)(void (*)(void))lc_create_task, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_make_handle", (PyCFunction)lc_make_handle, METH_VARARGS, NULL},
    {"_push_handle", (PyCFunction)lc_push_handle, METH_O, NULL},
    {"_run", (PyCFunction)lc_run, METH_NOARGS, NULL},
    {"_run_once", (PyCFunction)lc_run_once, METH_NOARGS, NULL},
    {"_backend_name", (PyCFunction)lc_backend, METH_NOARGS, NULL},
    {"_go_call_start", (PyCFunction)lc_go_call_start, METH_VARARGS, NULL},
    {"_go_call_quick", (PyCFunction)lc_go_call_quick, METH_VARARGS, NULL},
    {"_go_call_cancel", (PyCFunction)lc_go_call_cancel, METH_O, NULL},
    {"_connect_start", (PyCFunction)(void (*)(void))lc_connect_start, METH_FASTCALL, NULL},
    {"_connect_stop", (PyCFunction)(void (*)(void))lc_connect_stop, METH_FASTCALL, NULL},
    {"_sock_recv_go", (PyCFunction)(void (*)(void))lc_sock_recv_go, METH_FASTCALL, NULL},
    {"_sock_recv_into_go", (PyCFunction)(void (*)(void))lc_sock_recv_into_go, METH_FASTCALL, NULL},
    {"_sock_sendall_go", (PyCFunction)(void (*)(void))lc_sock_sendall_go, METH_FASTCALL, NULL},
    {"_sock_accept_go", (PyCFunction)(void (*)(void))lc_sock_accept_go, METH_FASTCALL, NULL},
    {"_sock_recvfrom_go", (PyCFunction)(void (*)(void))lc_sock_recvfrom_go, METH_FASTCALL, NULL},
    {"_sock_recvfrom_into_go", (PyCFunction)(void (*)(void))lc_sock_recvfrom_into_go, METH_FASTCALL, NULL},
    {"_sock_sendto_go", (PyCFunction)(void (*)(void))lc_sock_sendto_go, METH_FASTCALL, NULL},
    {"_sock_stop", (PyCFunction)lc_sock_stop, METH_O, NULL},
    {"_gai_start", (PyCFunction)(void (*)(void))lc_gai_start, METH_FASTCALL, NULL},
    {"_close_core", (PyCFunction)lc_close_core, METH_NOARGS, NULL},
    {"_clear_queues", (PyCFunction)lc_clear, METH_NOARGS, NULL},
    {NULL}
};

static PyGetSetDef lc_getset[] = {
    {"_stopping", (getter)get_flag, (setter)set_flag, NULL, (void *)offsetof(LoopCore, stopping)},
    {"_closed", (getter)get_flag, (setter)set_flag, NULL, (void *)offsetof(LoopCore, closed)},
    {"_debug", (getter)get_flag, (setter)set_flag, NULL, (void *)offsetof(LoopCore, debug)},
    {"_n_ready", (getter)get_nready, NULL, NULL, NULL},
    {"_n_timers", (getter)get_ntimers, NULL, NULL, NULL},
    {NULL}
};

static PyMemberDef lc_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(LoopCore, weakreflist), READONLY},
    {"_calls", T_OBJECT, offsetof(LoopCore, calls), READONLY},
    {"_connects", T_OBJECT, offsetof(LoopCore, connects), READONLY},
    {"_tls_kernel", T_ULONGLONG, offsetof(LoopCore, tls_kernel), READONLY},
    {"_tls_user", T_ULONGLONG, offsetof(LoopCore, tls_user), READONLY},
    {"_tls_go", T_ULONGLONG, offsetof(LoopCore, tls_go), READONLY},
    {NULL}
};

static PyType_Slot lc_slots[] = {
    {Py_tp_new, lc_new},
    {Py_tp_dealloc, lc_dealloc},
    {Py_tp_traverse, lc_traverse},
    {Py_tp_clear, lc_clear_gc},
    {Py_tp_methods, lc_methods},
    {Py_tp_getset, lc_getset},
    {Py_tp_members, lc_members},
    {0, NULL}
};

static PyType_Spec lc_spec = {
    "goloop._core.LoopCore", sizeof(LoopCore), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    lc_slots
};

int init_loop_type(PyObject *m)
{
    LoopCore_Type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &lc_spec, NULL);
    if (LoopCore_Type == NULL)
        return -1;
    return PyModule_AddObjectRef(m, "LoopCore", (PyObject *)LoopCore_Type);
}
