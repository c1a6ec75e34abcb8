/* TLS over any ssl.SSLContext, in C: asyncio 3.11's memory-BIO SSL protocol
 * (asyncio/sslproto.py is the specification: its states, timeouts, flow
 * control, errors and callback order) driving OpenSSL through CPython's own
 * _ssl objects. Every call per record is a C method of _ssl (_SSLSocket's
 * do_handshake/read/write/shutdown, MemoryBIO's write/read/pending) made from
 * C, so no Python frame runs between the bytes Go received and the
 * application protocol's data_received, nor between the application's
 * write() and the transport's. _ssl releases the GIL around OpenSSL's work.
 *
 * TLSProtocol is the protocol of goloop's stream transport (or of any
 * transport start_tls accepts): a BufferedProtocol, so a received chunk is
 * copied once from Go's buffer into our buffer and from there into the
 * incoming BIO. TLSTransport is what the application sees: asyncio's
 * _SSLProtocolTransport API. The Python part (goloop/_tls.py) checks the
 * arguments and builds the BIOs and the ssl.SSLObject the public way
 * (context.wrap_bio), once per connection. */
#include "core.h"

PyTypeObject *TLSProtocol_Type;
PyTypeObject *TLSTransport_Type;

enum { ST_UNWRAPPED, ST_DO_HANDSHAKE, ST_WRAPPED, ST_FLUSHING, ST_SHUTDOWN };
static const char *STATE_NAMES[] = {"UNWRAPPED", "DO_HANDSHAKE", "WRAPPED", "FLUSHING", "SHUTDOWN"};
enum { APP_INIT, APP_CON_MADE, APP_EOF, APP_CON_LOST };

#define MAX_SIZE (256 * 1024)          /* SSLProtocol.max_size: the buffer read() fills */
#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5

/* What _tls.py hands over once (_tls_setup): the ssl module's exception
 * classes and asyncio's logger and BufferedProtocol. */
static struct {
    PyObject *want_read, *syscall_error, *ssl_error, *cert_error;
    PyObject *cancelled, *logger, *ssl_socket_type;
    PyObject *go_start;   /* _tls.go_start(proto, fd) -> the Go call's future */
} TLS;


static PyObject *S_do_handshake, *S_read, *S_write, *S_shutdown, *S_pending, *S_getpeercert,
    *S_cipher, *S_compression, *S_call_soon, *S_call_later, *S_cancel, *S_close, *S_abort,
    *S_force_close, *S_pause_reading, *S_resume_reading, *S_get_extra_info, *S_data_received,
    *S_eof_received, *S_connection_made, *S_connection_lost, *S_pause_writing,
    *S_resume_writing, *S_cancelled, *S_set_result, *S_set_exception, *S_debug, *S_warning,
    *S_call_exception_handler, *S_get_buffer, *S_buffer_updated, *S_time, *S_unwrap, *S_loop_debug;

typedef struct TLSProtocol TLSProtocol;

typedef struct {
    PyObject_HEAD
    PyObject *extra_slot;      /* asyncio.BaseTransport's '_extra' slot: same offset, unused */
    PyObject *fc_slots[4];     /* asyncio's _FlowControlMixin's slots, shadowed by ours below */
    PyObject *loop;
    TLSProtocol *proto;        /* NULL after a second close(), as asyncio drops it */
    char closed;
    PyObject *weakreflist;
} TLSTransport;

struct TLSProtocol {
    PyObject_HEAD
    PyObject *loop;
    PyObject *app_protocol;
    PyObject *app_get_buffer, *app_buffer_updated;   /* bound, when the app protocol is buffered */
    PyObject *sslcontext;
    PyObject *extra;           /* dict: sslcontext, then peercert/cipher/compression/ssl_object */
    PyObject *waiter;
    TLSTransport *app_transport;   /* NULL after connection_lost */
    PyObject *transport;       /* the stream transport; NULL before connection_made and after connection_lost */
    PyObject *hs_timeout, *sd_timeout;   /* as given (their str() is in asyncio's messages) */
    double hs_timeout_s, sd_timeout_s;
    PyObject *incoming, *outgoing;       /* ssl.MemoryBIO (_ssl.MemoryBIO: C) */
    PyObject *sslobject;       /* ssl.SSLObject: get_extra_info('ssl_object') */
    PyObject *sslobj;          /* what the calls go to: its _sslobj (_ssl._SSLSocket), or itself */
    PyObject *shutdown_name;   /* S_shutdown, or S_unwrap when sslobj is the SSLObject */
    PyObject *backlog;         /* list of app data not yet given to OpenSSL */
    Py_ssize_t write_buffer_size;
    PyObject *hs_handle, *sd_handle;    /* timer handles */
    double hs_start;
    PyObject *rbuf;            /* bytearray of MAX_SIZE: get_buffer's memory, then read()'s */
    PyObject *rbuf_view;       /* memoryview over it, given to the transport */
    PyObject *out_high_obj, *out_low_obj, *in_high_obj, *in_low_obj;
    Py_ssize_t out_high, out_low, in_high, in_low;
    int state, app_state;
    Py_ssize_t conn_lost;
    char server_side;
    char app_is_buffer;
    char ssl_writing_paused, app_reading_paused, ssl_reading_paused, app_writing_paused;
    char eof_received;
    PyObject *weakreflist;
    /* Kernel TLS (docs/ktls.md): during the handshake the transport reads
     * one record at a time and we count records both ways; once it is done
     * the secrets go to Go (KT_PENDING: app writes wait in the backlog), and
     * from its answer on either the kernel does the records (KT_ON: data
     * passes through in plaintext) or OpenSSL goes on as if nothing had
     * happened (KT_OFF). */
    char ktls_want;
    char ktls_state;
    char ktls_notify_sent;     /* our close_notify went to the kernel */
    char ktls_fwd;             /* get_buffer handed out the app's own buffer */
    uint8_t ktls_dirs;
    void *ssl;                 /* sslobj's SSL*, while KT_RECORDS */
    uint64_t tx_before_step;   /* records OpenSSL had written before the handshake's last step */
    /* goloop.TLSContext (docs/gotls.md): Go's crypto/tls does the handshake
     * on a duplicate of the fd while the transport reads nothing (go_fut:
     * that call, cancelled if the connection ends first), then the kernel
     * or Go's record layer does the records: there is no OpenSSL to fall
     * back to. */
    char go_mode;
    char go_soft_only;         /* GOLOOP_KTLS=0: Go's record layer, not the kernel's */
    PyObject *go_fut;
    ktls_stream ktx, krx;
    ktls_secrets ksec;
};
enum { KT_OFF, KT_RECORDS, KT_PENDING, KT_ON };

/* ---- small helpers ---- */

static PyObject *call0(PyObject *obj, PyObject *name)
{
    PyObject *a[1] = {obj};
    return PyObject_VectorcallMethod(name, a, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *call1(PyObject *obj, PyObject *name, PyObject *arg)
{
    PyObject *a[2] = {obj, arg};
    return PyObject_VectorcallMethod(name, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *call2(PyObject *obj, PyObject *name, PyObject *x, PyObject *y)
{
    PyObject *a[3] = {obj, x, y};
    return PyObject_VectorcallMethod(name, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static int discard(PyObject *r)
{
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* An "SSLAgainErrors" exception (SSLWantReadError, SSLSyscallError) is
 * pending: clear it and say 1. */
static int clear_again(void)
{
    if (PyErr_ExceptionMatches(TLS.want_read) || PyErr_ExceptionMatches(TLS.syscall_error)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* The pending exception when it is one `except Exception` catches (else
 * NULL, the error left set). */
static PyObject *take_if_exception(void)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
    return take_exception();
}

/* The same for `except BaseException` behind `except (KeyboardInterrupt, SystemExit): raise`. */
static PyObject *take_if_not_exit(void)
{
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) || PyErr_ExceptionMatches(PyExc_SystemExit))
        return NULL;
    return take_exception();
}

static int loop_debug(TLSProtocol *p)
{
    PyObject *d = PyObject_GetAttr(p->loop, S_loop_debug);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    int r = PyObject_IsTrue(d);
    Py_DECREF(d);
    if (r < 0)
        PyErr_Clear();
    return r > 0;
}

static double loop_now(TLSProtocol *p)
{
    PyObject *t = call0(p->loop, S_time);
    double v = t ? PyFloat_AsDouble(t) : 0;
    Py_XDECREF(t);
    if (PyErr_Occurred())
        PyErr_Clear();
    return v;
}

/* logger.<level>(fmt, *args, exc_info=exc) ; errors of logging are unraisable. */
static void log_msg(PyObject *level, PyObject *exc, const char *fmt, PyObject *args)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *meth = PyObject_GetAttr(TLS.logger, level);
    PyObject *f = PyUnicode_FromString(fmt);
    PyObject *full = NULL, *kw = NULL, *r = NULL;
    if (meth && f) {
        Py_ssize_t n = args ? PyTuple_GET_SIZE(args) : 0;
        full = PyTuple_New(n + 1);
        if (full) {
            Py_INCREF(f);
            PyTuple_SET_ITEM(full, 0, f);
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *x = PyTuple_GET_ITEM(args, i);
                Py_INCREF(x);
                PyTuple_SET_ITEM(full, i + 1, x);
            }
            kw = exc ? Py_BuildValue("{s:O}", "exc_info", exc) : NULL;
            if (!exc || kw)
                r = PyObject_Call(meth, full, kw);
        }
    }
    if (r == NULL && PyErr_Occurred())
        PyErr_WriteUnraisable(TLS.logger);
    Py_XDECREF(r);
    Py_XDECREF(kw);
    Py_XDECREF(full);
    Py_XDECREF(f);
    Py_XDECREF(meth);
    PyErr_Restore(et, ev, etb);
}

static int call_soon(TLSProtocol *p, PyObject *cb, PyObject *arg)
{
    PyObject *r = arg ? call2(p->loop, S_call_soon, cb, arg) : call1(p->loop, S_call_soon, cb);
    return discard(r);
}

static int call_soon_method(TLSProtocol *p, PyObject *obj, const char *name, PyObject *arg)
{
    PyObject *m = PyObject_GetAttrString(obj, name);
    if (m == NULL)
        return -1;
    int r = call_soon(p, m, arg);
    Py_DECREF(m);
    return r;
}

static void cancel_handle(PyObject **h)
{
    PyObject *x = *h;
    if (x == NULL)
        return;
    *h = NULL;
    PyObject *r = call0(x, S_cancel);
    if (r == NULL)
        PyErr_WriteUnraisable(x);
    Py_XDECREF(r);
    Py_DECREF(x);
}

static Py_ssize_t bio_pending(PyObject *bio)
{
    PyObject *v = PyObject_GetAttr(bio, S_pending);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return n;
}

/* After a read that returned data: 1 when another read could return more
 * (OpenSSL holds decrypted bytes, or the incoming BIO holds records), 0 when
 * it could only raise SSLWantReadError. asyncio makes that read and catches
 * the exception; an exception per record is most of what a small record
 * costs, so it is skipped when the answer is known. -1 on error. */
static int more_to_read(TLSProtocol *p)
{
    Py_ssize_t n = bio_pending(p->incoming);
    if (n != 0)
        return n < 0 ? -1 : 1;
    PyObject *r = call0(p->sslobj, S_pending);
    if (r == NULL)
        return -1;
    n = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (n < 0)
        return PyErr_Occurred() ? -1 : 0;
    return n > 0;
}

static int set_state(TLSProtocol *p, int new_state)
{
    int s = p->state;
    int ok = new_state == ST_UNWRAPPED || (s == ST_UNWRAPPED && new_state == ST_DO_HANDSHAKE) ||
             (s == ST_DO_HANDSHAKE && new_state == ST_WRAPPED) ||
             (s == ST_WRAPPED && new_state == ST_FLUSHING) ||
             (s == ST_FLUSHING && new_state == ST_SHUTDOWN);
    if (!ok) {
        PyErr_Format(PyExc_RuntimeError, "cannot switch state from SSLProtocolState.%s to SSLProtocolState.%s",
                     STATE_NAMES[s], STATE_NAMES[new_state]);
        return -1;
    }
    p->state = new_state;
    return 0;
}

/* ---- forward declarations: the state machine ---- */

static int do_handshake(TLSProtocol *p);
static int go_handshake_start(TLSProtocol *p);
static int on_handshake_complete(TLSProtocol *p, PyObject *exc);
static int ktls_begin(TLSProtocol *p);
static int handshake_finish(TLSProtocol *p);
static int dispatch_state(TLSProtocol *p);
static int start_shutdown(TLSProtocol *p);
static int do_flush(TLSProtocol *p);
static int do_shutdown(TLSProtocol *p);
static int do_read(TLSProtocol *p);
static int do_write(TLSProtocol *p);
static int process_outgoing(TLSProtocol *p);
static int control_app_writing(TLSProtocol *p);
static int control_ssl_reading(TLSProtocol *p);
static int call_eof_received(TLSProtocol *p);
static int abort_(TLSProtocol *p);
static void fatal_error(TLSProtocol *p, PyObject *exc, const char *message);

static int set_app_protocol(TLSProtocol *p, PyObject *app)
{
    PyObject *gb = NULL, *bu = NULL;
    int isbuf = 0;
    /* asyncio: hasattr(app, 'get_buffer') and isinstance(app, BufferedProtocol) */
    if (PyObject_HasAttr(app, S_get_buffer)) {
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        PyObject *cls = asyncio ? PyObject_GetAttrString(asyncio, "BufferedProtocol") : NULL;
        Py_XDECREF(asyncio);
        if (cls == NULL)
            return -1;
        isbuf = PyObject_IsInstance(app, cls);
        Py_DECREF(cls);
        if (isbuf < 0)
            return -1;
        if (isbuf) {
            gb = PyObject_GetAttr(app, S_get_buffer);
            bu = gb ? PyObject_GetAttr(app, S_buffer_updated) : NULL;
            if (bu == NULL) {
                Py_XDECREF(gb);
                return -1;
            }
        }
    }
    Py_INCREF(app);
    Py_XSETREF(p->app_protocol, app);
    Py_XSETREF(p->app_get_buffer, gb);
    Py_XSETREF(p->app_buffer_updated, bu);
    p->app_is_buffer = (char)isbuf;
    return 0;
}

static void wakeup_waiter(TLSProtocol *p, PyObject *exc)
{
    PyObject *w = p->waiter;
    if (w == NULL)
        return;
    p->waiter = NULL;
    PyObject *c = call0(w, S_cancelled);
    int cancelled = c ? PyObject_IsTrue(c) : -1;
    Py_XDECREF(c);
    if (cancelled == 0) {
        PyObject *r = exc ? call1(w, S_set_exception, exc) : call1(w, S_set_result, Py_None);
        if (r == NULL)
            cancelled = -1;
        Py_XDECREF(r);
    }
    if (cancelled < 0)
        PyErr_WriteUnraisable(w);
    Py_DECREF(w);
}

/* asyncio's _fatal_error: the transport is force-closed; the error goes to
 * the exception handler unless it is an OSError (logged in debug mode) or
 * a cancellation. Never raises. */
static void fatal_error(TLSProtocol *p, PyObject *exc, const char *message)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (p->transport != NULL) {
        PyObject *tr = p->transport;
        Py_INCREF(tr);
        PyObject *r = call1(tr, S_force_close, exc);
        if (r == NULL)
            PyErr_WriteUnraisable(tr);
        Py_XDECREF(r);
        Py_DECREF(tr);
    }
    if (PyObject_IsInstance(exc, PyExc_OSError) > 0) {
        if (loop_debug(p)) {
            PyObject *a = Py_BuildValue("(Os)", (PyObject *)p, message);
            log_msg(S_debug, exc, "%r: %s", a);
            Py_XDECREF(a);
        }
    } else if (PyObject_IsInstance(exc, TLS.cancelled) <= 0) {
        PyObject *ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception", exc,
                                      "transport", p->transport ? p->transport : Py_None,
                                      "protocol", (PyObject *)p);
        PyObject *r = ctx ? call1(p->loop, S_call_exception_handler, ctx) : NULL;
        if (r == NULL)
            PyErr_WriteUnraisable((PyObject *)p);
        Py_XDECREF(r);
        Py_XDECREF(ctx);
    }
    if (PyErr_Occurred())
        PyErr_Clear();
    PyErr_Restore(et, ev, etb);
}

/* Run a step that asyncio wraps in `except Exception as ex: self._fatal_error(ex, msg)`. */
static int guarded(TLSProtocol *p, int rc, const char *msg)
{
    if (rc == 0)
        return 0;
    PyObject *exc = take_if_exception();
    if (exc == NULL)
        return -1;
    fatal_error(p, exc, msg);
    Py_DECREF(exc);
    return 0;
}

/* ---- handshake ---- */

static PyObject *proto_check_handshake_timeout(TLSProtocol *p, PyObject *unused)
{
    if (p->state == ST_DO_HANDSHAKE) {
        PyObject *msg = PyUnicode_FromFormat(
            "SSL handshake is taking longer than %S seconds: aborting the connection", p->hs_timeout);
        PyObject *exc = msg ? PyObject_CallOneArg(PyExc_ConnectionAbortedError, msg) : NULL;
        Py_XDECREF(msg);
        if (exc == NULL)
            return NULL;
        fatal_error(p, exc, "Fatal error on transport");
        Py_DECREF(exc);
    }
    Py_RETURN_NONE;
}

static int start_handshake(TLSProtocol *p)
{
    if (loop_debug(p)) {
        PyObject *a = PyTuple_Pack(1, (PyObject *)p);
        log_msg(S_debug, NULL, "%r starts SSL handshake", a);
        Py_XDECREF(a);
        p->hs_start = loop_now(p);
    } else {
        p->hs_start = -1;
    }
    if (set_state(p, ST_DO_HANDSHAKE) < 0)
        return -1;
    PyObject *cb = PyObject_GetAttrString((PyObject *)p, "_check_handshake_timeout");
    PyObject *h = cb ? call2(p->loop, S_call_later, p->hs_timeout, cb) : NULL;
    Py_XDECREF(cb);
    if (h == NULL)
        return -1;
    Py_XSETREF(p->hs_handle, h);
    return p->go_mode ? go_handshake_start(p) : do_handshake(p);
}

static int do_handshake(TLSProtocol *p)
{
    p->tx_before_step = p->ktx.records;
    PyObject *r = call0(p->sslobj, S_do_handshake);
    if (r != NULL) {
        Py_DECREF(r);
        return on_handshake_complete(p, NULL);
    }
    if (clear_again())
        return process_outgoing(p);
    if (PyErr_ExceptionMatches(TLS.ssl_error)) {
        PyObject *exc = take_exception();
        int rc = on_handshake_complete(p, exc);
        Py_XDECREF(exc);
        return rc;
    }
    return -1;
}

static int on_handshake_complete(TLSProtocol *p, PyObject *hs_exc)
{
    cancel_handle(&p->hs_handle);
    PyObject *peercert = NULL, *exc = NULL;
    if (hs_exc == NULL) {
        if (set_state(p, ST_WRAPPED) == 0)
            peercert = call0(p->sslobj, S_getpeercert);
        if (peercert == NULL) {
            exc = take_if_exception();
            if (exc == NULL)
                return -1;
        }
    } else {
        Py_INCREF(hs_exc);
        exc = hs_exc;
    }
    if (p->ktls_state == KT_RECORDS && (exc != NULL || ktls_begin(p) < 0)) {
        ktls_detach(p->ssl);
        p->ssl = NULL;
        p->ktls_state = KT_OFF;
        if (exc == NULL) {
            exc = take_if_exception();
            if (exc == NULL)
                return -1;
        }
    }
    if (exc != NULL) {
        p->state = ST_UNWRAPPED;
        const char *msg = PyObject_IsInstance(exc, TLS.cert_error) > 0
                              ? "SSL handshake failed on verifying the certificate"
                              : "SSL handshake failed";
        fatal_error(p, exc, msg);
        wakeup_waiter(p, exc);
        Py_DECREF(exc);
        return 0;
    }
    if (p->hs_start >= 0 && loop_debug(p)) {
        PyObject *a = Py_BuildValue("(Od)", (PyObject *)p, (loop_now(p) - p->hs_start) * 1e3);
        log_msg(S_debug, NULL, "%r: SSL handshake took %.1f ms", a);
        Py_XDECREF(a);
    }
    PyObject *cipher = call0(p->sslobj, S_cipher);
    PyObject *comp = cipher ? call0(p->sslobj, S_compression) : NULL;
    int rc = -1;
    if (comp != NULL && PyDict_SetItemString(p->extra, "peercert", peercert) == 0 &&
        PyDict_SetItemString(p->extra, "cipher", cipher) == 0 &&
        PyDict_SetItemString(p->extra, "compression", comp) == 0 &&
        PyDict_SetItemString(p->extra, "ssl_object", p->sslobject) == 0)
        rc = 0;
    Py_DECREF(peercert);
    Py_XDECREF(cipher);
    Py_XDECREF(comp);
    if (rc < 0)
        return -1;
    /* With kernel TLS on its way, the app hears of the connection once the
     * path is settled: its first write goes the right way, and
     * get_extra_info('ktls') is final from connection_made on. */
    if (p->ktls_state == KT_PENDING)
        return 0;
    return handshake_finish(p);
}

static int handshake_finish(TLSProtocol *p)
{
    if (PyObject_TypeCheck(p->loop, LoopCore_Type)) {
        LoopCore *lp = (LoopCore *)p->loop;
        if (p->ktls_state != KT_ON)
            lp->tls_user++;
        else if (p->ktls_dirs & GL_KTLS_SOFTWARE)
            lp->tls_go++;
        else
            lp->tls_kernel++;
    }
    if (p->app_state == APP_INIT) {
        p->app_state = APP_CON_MADE;
        PyObject *app = p->app_protocol;
        Py_INCREF(app);
        PyObject *r = call1(app, S_connection_made, (PyObject *)p->app_transport);
        Py_DECREF(app);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    wakeup_waiter(p, NULL);
    return do_read(p);
}

/* ---- shutdown ---- */

static int start_shutdown(TLSProtocol *p)
{
    if (p->state == ST_FLUSHING || p->state == ST_SHUTDOWN || p->state == ST_UNWRAPPED)
        return 0;
    if (p->app_transport != NULL)
        p->app_transport->closed = 1;
    if (p->state == ST_DO_HANDSHAKE)
        return abort_(p);
    if (set_state(p, ST_FLUSHING) < 0)
        return -1;
    PyObject *cb = PyObject_GetAttrString((PyObject *)p, "_check_shutdown_timeout");
    PyObject *h = cb ? call2(p->loop, S_call_later, p->sd_timeout, cb) : NULL;
    Py_XDECREF(cb);
    if (h == NULL)
        return -1;
    Py_XSETREF(p->sd_handle, h);
    return do_flush(p);
}

static PyObject *proto_check_shutdown_timeout(TLSProtocol *p, PyObject *unused)
{
    if ((p->state == ST_FLUSHING || p->state == ST_SHUTDOWN) && p->transport != NULL) {
        PyObject *exc = PyObject_CallFunction(PyExc_TimeoutError, "s", "SSL shutdown timed out");
        if (exc == NULL)
            return NULL;
        PyObject *tr = p->transport;
        Py_INCREF(tr);
        PyObject *r = call1(tr, S_force_close, exc);
        Py_DECREF(tr);
        Py_DECREF(exc);
        return r;
    }
    Py_RETURN_NONE;
}

static int do_flush(TLSProtocol *p)
{
    if (do_read(p) < 0 || set_state(p, ST_SHUTDOWN) < 0)
        return -1;
    return do_shutdown(p);
}

static int on_shutdown_complete(TLSProtocol *p, PyObject *exc)
{
    cancel_handle(&p->sd_handle);
    if (exc != NULL) {
        fatal_error(p, exc, "Fatal error on transport");
        return 0;
    }
    if (p->transport == NULL) {
        PyErr_SetString(PyExc_AttributeError, "'NoneType' object has no attribute 'close'");
        return -1;
    }
    return call_soon_method(p, p->transport, "close", NULL);
}

static int do_shutdown(TLSProtocol *p)
{
    if (p->ktls_state == KT_PENDING)
        return 0;   /* tls_ktls_done goes on from here */
    if (p->ktls_state == KT_ON) {
        /* OpenSSL's state is stale both ways: our close_notify goes to the
         * kernel, and the peer's comes from it as the end of the stream. */
        if (!p->ktls_notify_sent && p->transport != NULL) {
            p->ktls_notify_sent = 1;
            if (transport_send_record(p->transport, 21, "\x01\x00", 2) < 0)
                return -1;
        }
        if (!p->eof_received)
            return 0;
        if (call_eof_received(p) < 0)
            return -1;
        return on_shutdown_complete(p, NULL);
    }
    if (!p->eof_received) {
        PyObject *r = call0(p->sslobj, p->shutdown_name);
        if (r == NULL) {
            if (clear_again())
                return process_outgoing(p);
            if (PyErr_ExceptionMatches(TLS.ssl_error)) {
                PyObject *exc = take_exception();
                int rc = on_shutdown_complete(p, exc);
                Py_XDECREF(exc);
                return rc;
            }
            return -1;
        }
        Py_DECREF(r);
    }
    if (process_outgoing(p) < 0 || call_eof_received(p) < 0)
        return -1;
    return on_shutdown_complete(p, NULL);
}

static int abort_(TLSProtocol *p)
{
    p->state = ST_UNWRAPPED;
    if (p->transport == NULL)
        return 0;
    PyObject *tr = p->transport;
    Py_INCREF(tr);
    int rc = discard(call0(tr, S_abort));
    Py_DECREF(tr);
    return rc;
}

/* ---- outgoing ---- */

static Py_ssize_t data_len(PyObject *d)
{
    if (PyBytes_CheckExact(d))
        return PyBytes_GET_SIZE(d);
    return PyObject_Size(d);
}

static int write_appdata(TLSProtocol *p, PyObject *const *items, Py_ssize_t n, PyObject *iterable)
{
    if (p->state == ST_FLUSHING || p->state == ST_SHUTDOWN || p->state == ST_UNWRAPPED) {
        if (p->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES)
            log_msg(S_warning, NULL, "SSL connection is closed", NULL);
        p->conn_lost++;
        return 0;
    }
    if (iterable != NULL) {
        PyObject *it = PyObject_GetIter(iterable);
        if (it == NULL)
            return -1;
        PyObject *d;
        while ((d = PyIter_Next(it)) != NULL) {
            Py_ssize_t len = data_len(d);
            int bad = len < 0 || PyList_Append(p->backlog, d) < 0;
            Py_DECREF(d);
            if (bad) {
                Py_DECREF(it);
                return -1;
            }
            p->write_buffer_size += len;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t len = data_len(items[i]);
            if (len < 0 || PyList_Append(p->backlog, items[i]) < 0)
                return -1;
            p->write_buffer_size += len;
        }
    }
    if (p->state == ST_WRAPPED)
        return guarded(p, do_write(p), "Fatal error on SSL protocol");
    return 0;
}

/* Kernel TLS sends: the app's bytes go to the transport as they are. */
static int ktls_write(TLSProtocol *p)
{
    while (PyList_GET_SIZE(p->backlog) > 0 && !p->ssl_writing_paused && p->transport != NULL) {
        PyObject *data = PyList_GET_ITEM(p->backlog, 0);
        Py_INCREF(data);
        Py_ssize_t len = data_len(data);
        PyObject *tr = p->transport;
        Py_INCREF(tr);
        PyObject *r = len < 0 ? NULL : call1(tr, S_write, data);
        Py_DECREF(tr);
        Py_DECREF(data);
        if (discard(r) < 0 || PySequence_DelItem(p->backlog, 0) < 0)
            return -1;
        p->write_buffer_size -= len;
    }
    return control_app_writing(p);
}

static int do_write(TLSProtocol *p)
{
    if (p->ktls_state == KT_PENDING)
        return control_app_writing(p);
    if (p->ktls_state == KT_ON)
        return ktls_write(p);
    while (PyList_GET_SIZE(p->backlog) > 0) {
        PyObject *data = PyList_GET_ITEM(p->backlog, 0);
        Py_INCREF(data);
        PyObject *r = call1(p->sslobj, S_write, data);
        if (r == NULL) {
            Py_DECREF(data);
            if (clear_again())
                break;
            return -1;
        }
        Py_ssize_t count = PyLong_AsSsize_t(r);
        Py_DECREF(r);
        Py_ssize_t len = count < 0 ? -1 : data_len(data);
        if (len < 0) {
            Py_DECREF(data);
            return -1;
        }
        if (count < len) {
            PyObject *rest = PySequence_GetSlice(data, count, PY_SSIZE_T_MAX);
            Py_DECREF(data);
            if (rest == NULL)
                return -1;
            PyList_SetItem(p->backlog, 0, rest);
            p->write_buffer_size -= count;
        } else {
            Py_DECREF(data);
            if (PySequence_DelItem(p->backlog, 0) < 0)
                return -1;
            p->write_buffer_size -= len;
        }
    }
    return process_outgoing(p);
}

static int process_outgoing(TLSProtocol *p)
{
    if (p->ktls_state == KT_ON)
        return ktls_write(p);
    if (!p->ssl_writing_paused) {
        PyObject *data = call0(p->outgoing, S_read);
        if (data == NULL)
            return -1;
        if (p->ktls_state == KT_RECORDS)
            ktls_stream_feed(&p->ktx, (const uint8_t *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
        if (PyBytes_GET_SIZE(data) > 0) {
            if (p->transport == NULL) {
                Py_DECREF(data);
                PyErr_SetString(PyExc_AttributeError, "'NoneType' object has no attribute 'write'");
                return -1;
            }
            PyObject *tr = p->transport;
            Py_INCREF(tr);
            PyObject *r = call1(tr, S_write, data);
            Py_DECREF(tr);
            Py_DECREF(data);
            if (discard(r) < 0)
                return -1;
        } else {
            Py_DECREF(data);
        }
    }
    return control_app_writing(p);
}

/* ---- incoming ---- */

static int do_read_buffered(TLSProtocol *p)
{
    Py_ssize_t offset = 0, count = 1;
    Py_ssize_t hint = bio_pending(p->incoming);
    if (hint < 0)
        return -1;
    PyObject *h = PyLong_FromSsize_t(hint);
    PyObject *buf = h ? PyObject_CallOneArg(p->app_get_buffer, h) : NULL;
    Py_XDECREF(h);
    if (buf == NULL)
        return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        return -1;
    }
    Py_ssize_t wants = view.len;
    int again = 0, rc = 0;
    while (offset < wants) {
        PyObject *mv = PyMemoryView_FromMemory((char *)view.buf + offset, wants - offset, PyBUF_WRITE);
        PyObject *n = mv ? PyLong_FromSsize_t(wants - offset) : NULL;
        PyObject *r = n ? call2(p->sslobj, S_read, n, mv) : NULL;
        Py_XDECREF(n);
        Py_XDECREF(mv);
        if (r == NULL) {
            if (clear_again()) {
                again = 1;
                break;
            }
            rc = -1;
            break;
        }
        count = PyLong_AsSsize_t(r);
        Py_DECREF(r);
        if (count < 0) {
            rc = -1;
            break;
        }
        if (count == 0)
            break;
        offset += count;
        if (offset < wants) {
            int more = more_to_read(p);
            if (more < 0) {
                rc = -1;
                break;
            }
            if (!more) {
                again = 1;
                break;
            }
        }
    }
    PyBuffer_Release(&view);
    Py_DECREF(buf);
    if (rc < 0)
        return -1;
    /* The buffer filled up: more may be waiting; read it on the next iteration. */
    if (!again && offset >= wants && count > 0 && offset > 0) {
        PyObject *cb = PyObject_GetAttrString((PyObject *)p, "_do_read");
        int r2 = cb ? call_soon(p, cb, NULL) : -1;
        Py_XDECREF(cb);
        if (r2 < 0)
            return -1;
    }
    if (offset > 0) {
        PyObject *n = PyLong_FromSsize_t(offset);
        PyObject *r = n ? PyObject_CallOneArg(p->app_buffer_updated, n) : NULL;
        Py_XDECREF(n);
        if (discard(r) < 0)
            return -1;
    }
    if (count == 0) {
        /* close_notify */
        if (call_eof_received(p) < 0 || start_shutdown(p) < 0)
            return -1;
    }
    return 0;
}

/* Reads into our own buffer (one allocation of the plaintext's size, not of
 * max_size per read), joined into one data_received call as asyncio does. */
static int do_read_copied(TLSProtocol *p)
{
    char *base = PyByteArray_AS_STRING(p->rbuf);
    Py_ssize_t cap = PyByteArray_GET_SIZE(p->rbuf), off = 0, count = 1;
    PyObject *parts = NULL;   /* when the buffer fills: the earlier, full ones */
    int rc = 0;
    for (;;) {
        if (off == cap) {
            PyObject *b = PyBytes_FromStringAndSize(base, off);
            if (b == NULL || (parts == NULL && (parts = PyList_New(0)) == NULL) ||
                PyList_Append(parts, b) < 0) {
                Py_XDECREF(b);
                rc = -1;
                break;
            }
            Py_DECREF(b);
            off = 0;
        }
        PyObject *mv = PyMemoryView_FromMemory(base + off, cap - off, PyBUF_WRITE);
        PyObject *n = mv ? PyLong_FromSsize_t(cap - off) : NULL;
        PyObject *r = n ? call2(p->sslobj, S_read, n, mv) : NULL;
        Py_XDECREF(n);
        Py_XDECREF(mv);
        if (r == NULL) {
            if (!clear_again())
                rc = -1;
            break;
        }
        count = PyLong_AsSsize_t(r);
        Py_DECREF(r);
        if (count <= 0) {
            if (count < 0)
                rc = -1;
            break;
        }
        off += count;
        int more = more_to_read(p);
        if (more <= 0) {
            if (more < 0)
                rc = -1;
            break;
        }
    }
    if (rc < 0) {
        Py_XDECREF(parts);
        return -1;
    }
    PyObject *data = NULL;
    if (parts != NULL) {
        PyObject *b = off ? PyBytes_FromStringAndSize(base, off) : NULL;
        if (off && (b == NULL || PyList_Append(parts, b) < 0)) {
            Py_XDECREF(b);
            Py_DECREF(parts);
            return -1;
        }
        Py_XDECREF(b);
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        data = empty ? _PyBytes_Join(empty, parts) : NULL;
        Py_XDECREF(empty);
        Py_DECREF(parts);
        if (data == NULL)
            return -1;
    } else if (off > 0) {
        data = PyBytes_FromStringAndSize(base, off);
        if (data == NULL)
            return -1;
    }
    if (data != NULL) {
        PyObject *app = p->app_protocol;
        Py_INCREF(app);
        PyObject *r = call1(app, S_data_received, data);
        Py_DECREF(app);
        Py_DECREF(data);
        if (discard(r) < 0)
            return -1;
    }
    if (count == 0) {
        /* close_notify */
        if (call_eof_received(p) < 0 || start_shutdown(p) < 0)
            return -1;
    }
    return 0;
}

static int do_read_inner(TLSProtocol *p)
{
    if (p->ktls_state == KT_PENDING)
        return 0;   /* nothing is read until Go answers */
    if (p->ktls_state == KT_ON) {
        /* The data comes through buffer_updated as it arrives; what is
         * left here is the app's reading switch and the backlog. */
        if (!p->app_reading_paused && p->transport != NULL && discard(call0(p->transport, S_resume_reading)) < 0)
            return -1;
        return ktls_write(p);
    }
    if (!p->app_reading_paused) {
        int r = p->app_is_buffer ? do_read_buffered(p) : do_read_copied(p);
        if (r < 0)
            return -1;
        if (PyList_GET_SIZE(p->backlog) > 0) {
            if (do_write(p) < 0)
                return -1;
        } else if (process_outgoing(p) < 0) {
            return -1;
        }
    }
    return control_ssl_reading(p);
}

static int do_read(TLSProtocol *p)
{
    if (p->state != ST_WRAPPED && p->state != ST_FLUSHING)
        return 0;
    return guarded(p, do_read_inner(p), "Fatal error on SSL protocol");
}

static int call_eof_received(TLSProtocol *p)
{
    if (p->app_state != APP_CON_MADE)
        return 0;
    p->app_state = APP_EOF;
    PyObject *app = p->app_protocol;
    Py_INCREF(app);
    PyObject *r = call0(app, S_eof_received);
    Py_DECREF(app);
    if (r != NULL) {
        int keep = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (keep > 0)
            log_msg(S_warning, NULL, "returning true from eof_received() has no effect when using ssl", NULL);
        if (keep >= 0)
            return 0;
    }
    PyObject *exc = take_if_not_exit();
    if (exc == NULL)
        return -1;
    fatal_error(p, exc, "Error calling eof_received()");
    Py_DECREF(exc);
    return 0;
}

/* ---- flow control ---- */

static Py_ssize_t write_buffer_size(TLSProtocol *p)
{
    Py_ssize_t n = bio_pending(p->outgoing);
    return n < 0 ? -1 : n + p->write_buffer_size;
}

static int app_flow_call(TLSProtocol *p, PyObject *name, const char *msg)
{
    PyObject *app = p->app_protocol ? p->app_protocol : Py_None;
    Py_INCREF(app);
    PyObject *r = call0(app, name);
    Py_DECREF(app);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    PyObject *exc = take_if_not_exit();
    if (exc == NULL)
        return -1;
    PyObject *ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", msg, "exception", exc, "transport",
                                  p->app_transport ? (PyObject *)p->app_transport : Py_None,
                                  "protocol", (PyObject *)p);
    Py_DECREF(exc);
    if (ctx == NULL)
        return -1;
    PyObject *r2 = call1(p->loop, S_call_exception_handler, ctx);
    Py_DECREF(ctx);
    return discard(r2);
}

static int control_app_writing(TLSProtocol *p)
{
    Py_ssize_t size = write_buffer_size(p);
    if (size < 0)
        return -1;
    if (size >= p->out_high && !p->app_writing_paused) {
        p->app_writing_paused = 1;
        return app_flow_call(p, S_pause_writing, "protocol.pause_writing() failed");
    }
    if (size <= p->out_low && p->app_writing_paused) {
        p->app_writing_paused = 0;
        return app_flow_call(p, S_resume_writing, "protocol.resume_writing() failed");
    }
    return 0;
}

static int control_ssl_reading(TLSProtocol *p)
{
    if (p->transport == NULL)
        return 0;
    Py_ssize_t size = bio_pending(p->incoming);
    if (size < 0)
        return -1;
    if (size >= p->in_high && !p->ssl_reading_paused) {
        p->ssl_reading_paused = 1;
        return discard(call0(p->transport, S_pause_reading));
    }
    if (size <= p->in_low && p->ssl_reading_paused) {
        p->ssl_reading_paused = 0;
        return discard(call0(p->transport, S_resume_reading));
    }
    return 0;
}

/* ---- the protocol's methods (called by the stream transport) ---- */

/* ---- kernel TLS ---- */

/* Offered when _tls.py wants it, the transport is goloop's own TCP socket
 * that has not read yet, and OpenSSL's SSL* can be had (ktls.c). */
static int ktls_offer(TLSProtocol *p, PyObject *transport)
{
    if (!p->ktls_want || p->sslobj == p->sslobject || !transport_is_fresh_socket(transport, p->ktls_want != 2))
        return 0;
    void *ssl = ktls_ssl_of(p->sslobj);
    if (ssl == NULL || ktls_attach(ssl, &p->ksec) < 0)
        return 0;
    p->ssl = ssl;
    p->ktls_state = KT_RECORDS;
    transport_set_records(transport, 1);
    return 0;
}

/* The handshake is done with records read one by one: hand the secrets
 * to Go, or give up on the kernel here and read as usual. */
static int ktls_begin(TLSProtocol *p)
{
    /* Still KT_RECORDS: the last step's records (a server's tickets, a
     * client's Finished) go to the transport now, and are counted. */
    int r = process_outgoing(p);
    void *ssl = p->ssl;
    ktls_detach(ssl);   /* the secrets are all in */
    p->ssl = NULL;
    p->ktls_state = KT_OFF;
    if (r < 0)
        return -1;
    Py_ssize_t in = bio_pending(p->incoming), out = bio_pending(p->outgoing);
    if (in < 0 || out < 0)
        return -1;
    gl_ktls k;
    int ok = in == 0 && out == 0 && !p->ssl_writing_paused && p->transport != NULL &&
             ktls_stream_at_boundary(&p->krx) && ktls_stream_at_boundary(&p->ktx) &&
             ktls_params(ssl, &p->ksec, p->server_side, &p->ktx, &p->krx, p->tx_before_step, &k) == 0;
    memset(&p->ksec, 0, sizeof p->ksec);
    if (!ok) {
        transport_set_records(p->transport, 0);
        return PyDict_SetItemString(p->extra, "ktls", Py_False);
    }
    if (p->ktls_want == 2)
        k.flags = GL_KTLS_SOFT_ONLY;   /* GOLOOP_KTLS=soft: Go's record layer after OpenSSL's handshake */
    r = transport_ktls(p->transport, &k);
    memset(&k, 0, sizeof k);
    if (r < 0)
        return -1;
    p->ktls_state = KT_PENDING;
    return 0;
}

int tls_ktls_done(PyObject *proto, int res, uint32_t aux)
{
    TLSProtocol *p = (TLSProtocol *)proto;
    if (p->ktls_state != KT_PENDING)
        return 0;
    Py_INCREF(p);
    int rc;
    if (res < 0 && (aux != 0 || p->go_mode)) {
        /* One direction is the kernel's and the other OpenSSL's keys are
         * no longer in step with it: the connection cannot go on. */
        p->ktls_state = KT_OFF;
        PyObject *exc = PyObject_CallFunction(PyExc_ConnectionError, "is", -res,
                                              p->go_mode ? "no TLS record layer could take the keys"
                                                         : "kernel TLS was installed for one direction only");
        rc = exc ? 0 : -1;
        if (exc != NULL) {
            fatal_error(p, exc, "Fatal error on SSL protocol");
            Py_DECREF(exc);
        }
    } else {
        p->ktls_state = res == 0 ? KT_ON : KT_OFF;
        p->ktls_dirs = res == 0 ? (uint8_t)aux : 0;
        rc = PyDict_SetItemString(p->extra, "ktls", res == 0 && !(aux & GL_KTLS_SOFTWARE) ? Py_True : Py_False);
        if (rc == 0 && res == 0 && p->app_reading_paused && p->transport != NULL)
            rc = discard(call0(p->transport, S_pause_reading));
        /* What waited: the app's connection_made and its waiter, or a close. */
        if (rc == 0)
            rc = p->state == ST_WRAPPED ? handshake_finish(p) : dispatch_state(p);
    }
    Py_DECREF(p);
    return rc;
}

/* Kernel TLS receives: plaintext, in the app's buffer (get_buffer gave it
 * out) or in ours. Only WRAPPED and FLUSHING give data to the app, as
 * asyncio's; in SHUTDOWN it is read and dropped. */
static int ktls_received(TLSProtocol *p, const char *data, Py_ssize_t n)
{
    if ((p->state != ST_WRAPPED && p->state != ST_FLUSHING) || p->app_state != APP_CON_MADE || n == 0)
        return 0;
    if (!p->app_is_buffer) {
        PyObject *b = PyBytes_FromStringAndSize(data, n);
        PyObject *app = p->app_protocol;
        Py_INCREF(app);
        PyObject *r = b ? call1(app, S_data_received, b) : NULL;
        Py_DECREF(app);
        Py_XDECREF(b);
        return guarded(p, discard(r), "Fatal error on SSL protocol");
    }
    while (n > 0) {
        PyObject *h = PyLong_FromSsize_t(n);
        PyObject *buf = h ? PyObject_CallOneArg(p->app_get_buffer, h) : NULL;
        Py_XDECREF(h);
        Py_buffer view;
        if (buf == NULL || PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
            Py_XDECREF(buf);
            return guarded(p, -1, "Fatal error on SSL protocol");
        }
        Py_DECREF(buf);
        Py_ssize_t k = view.len < n ? view.len : n;
        memcpy(view.buf, data, k);
        PyBuffer_Release(&view);
        data += k;
        n -= k;
        PyObject *kk = PyLong_FromSsize_t(k);
        PyObject *r = kk ? PyObject_CallOneArg(p->app_buffer_updated, kk) : NULL;
        Py_XDECREF(kk);
        if (guarded(p, discard(r), "Fatal error on SSL protocol") < 0)
            return -1;
        if (k == 0 || p->app_state != APP_CON_MADE)
            break;
    }
    return 0;
}

/* ---- goloop.TLSContext: the handshake in Go ---- */

/* The fd goes to _tls.go_start, which hands a duplicate of it to Go's
 * "tls.handshake" (Go owns and closes the duplicate); the transport reads
 * and writes nothing until the call's answer. */
static int go_handshake_start(TLSProtocol *p)
{
    int fd = p->transport != NULL ? transport_fileno(p->transport) : -1;
    if (fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "goloop.TLSContext: the transport has no fd");
        return -1;
    }
    PyObject *fut = PyObject_CallFunction(TLS.go_start, "OOi", (PyObject *)p, p->loop, fd);
    if (fut == NULL)
        return -1;
    Py_XSETREF(p->go_fut, fut);
    return 0;
}

/* The connection ended before the handshake: Go stops it and closes its
 * duplicate (the socket itself is the transport's to close). */
static int go_cancel_call(TLSProtocol *p)
{
    PyObject *fut = p->go_fut;
    if (fut == NULL)
        return 0;
    p->go_fut = NULL;
    PyObject *r = PyObject_CallMethod(fut, "cancel", NULL);
    Py_DECREF(fut);
    return discard(r);
}

/* _go_done(result, peercert, cipher, ssl_object): Go's handshake
 * succeeded; result starts with its gl_ktls, wiped here once copied. The
 * records go to the kernel, or to Go's own record layer where the kernel
 * has no TLS. */
static PyObject *proto_go_done(TLSProtocol *p, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_go_done(result: bytes, peercert, cipher, ssl_object)");
        return NULL;
    }
    Py_CLEAR(p->go_fut);
    /* Too late: the connection is gone, or going (a handshake timeout or an
     * abort closed the transport, and its connection_lost is on its way). */
    if (!p->go_mode || p->state != ST_DO_HANDSHAKE || p->transport == NULL ||
        transport_fileno(p->transport) < 0)
        Py_RETURN_NONE;
    if (PyBytes_GET_SIZE(args[0]) < (Py_ssize_t)sizeof(gl_ktls)) {
        PyErr_SetString(PyExc_ValueError, "_go_done: the result is shorter than a gl_ktls");
        return NULL;
    }
    gl_ktls k;
    memcpy(&k, PyBytes_AS_STRING(args[0]), sizeof k);
    /* Nobody else reads it: the secrets do not stay in Python's heap. */
    memset(PyBytes_AS_STRING(args[0]), 0, sizeof k);
    k.rx = 1;
    k.server = (uint8_t)p->server_side;
    k.flags = (uint8_t)(p->go_soft_only ? GL_KTLS_SOFT_ONLY : GL_KTLS_SOFT);
    cancel_handle(&p->hs_handle);
    if (p->hs_start >= 0 && loop_debug(p)) {
        PyObject *a = Py_BuildValue("(Od)", (PyObject *)p, (loop_now(p) - p->hs_start) * 1e3);
        log_msg(S_debug, NULL, "%r: SSL handshake took %.1f ms", a);
        Py_XDECREF(a);
    }
    int rc = -1;
    if (PyDict_SetItemString(p->extra, "peercert", args[1]) == 0 &&
        PyDict_SetItemString(p->extra, "cipher", args[2]) == 0 &&
        PyDict_SetItemString(p->extra, "compression", Py_None) == 0 &&
        PyDict_SetItemString(p->extra, "ssl_object", args[3]) == 0 && set_state(p, ST_WRAPPED) == 0) {
        Py_XSETREF(p->sslobject, Py_NewRef(args[3]));
        transport_hold(p->transport, 0);
        rc = transport_ktls(p->transport, &k);
    }
    memset(&k, 0, sizeof k);
    if (rc < 0) {
        /* The keys found no way to the record layer: the handshake failed,
         * as asyncio ends it (the connection closed, the waiter told). */
        PyObject *exc = take_if_exception();
        if (exc == NULL || on_handshake_complete(p, exc) < 0) {
            Py_XDECREF(exc);
            return NULL;
        }
        Py_DECREF(exc);
        Py_RETURN_NONE;
    }
    p->ktls_state = KT_PENDING;   /* tls_ktls_done goes on: connection_made, the waiter */
    Py_RETURN_NONE;
}

/* _go_failed(exc): the handshake failed (exc as ssl would raise it). */
static PyObject *proto_go_failed(TLSProtocol *p, PyObject *exc)
{
    Py_CLEAR(p->go_fut);
    if (!p->go_mode || p->state != ST_DO_HANDSHAKE)
        Py_RETURN_NONE;
    if (on_handshake_complete(p, exc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *proto_connection_made(TLSProtocol *p, PyObject *transport)
{
    Py_INCREF(transport);
    Py_XSETREF(p->transport, transport);
    if (p->go_mode) {
        if (!transport_is_fresh_socket(transport, 0)) {
            PyErr_SetString(PyExc_TypeError,
                            "goloop.TLSContext needs goloop's own socket transport that has not read yet");
            return NULL;
        }
        transport_hold(transport, 1);
    } else if (ktls_offer(p, transport) < 0)
        return NULL;
    if (start_handshake(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *proto_connection_lost(TLSProtocol *p, PyObject *exc)
{
    if (PyList_SetSlice(p->backlog, 0, PY_SSIZE_T_MAX, NULL) < 0)
        return NULL;
    p->write_buffer_size = 0;
    if (go_cancel_call(p) < 0)
        return NULL;
    PyObject *r = call0(p->outgoing, S_read);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    p->conn_lost++;
    if (p->app_transport != NULL)
        p->app_transport->closed = 1;
    if (p->state != ST_DO_HANDSHAKE &&
        (p->app_state == APP_CON_MADE || p->app_state == APP_EOF)) {
        p->app_state = APP_CON_LOST;
        if (call_soon_method(p, p->app_protocol, "connection_lost", exc) < 0)
            return NULL;
    }
    p->state = ST_UNWRAPPED;
    Py_CLEAR(p->transport);
    Py_CLEAR(p->app_transport);
    Py_CLEAR(p->app_get_buffer);
    Py_CLEAR(p->app_buffer_updated);
    Py_INCREF(Py_None);
    Py_XSETREF(p->app_protocol, Py_None);
    p->app_is_buffer = 0;
    wakeup_waiter(p, exc == Py_None ? NULL : exc);
    cancel_handle(&p->sd_handle);
    cancel_handle(&p->hs_handle);
    Py_RETURN_NONE;
}

static PyObject *proto_get_buffer(TLSProtocol *p, PyObject *n)
{
    p->ktls_fwd = 0;
    if (p->ktls_state == KT_ON && p->app_is_buffer && p->state == ST_WRAPPED && p->app_state == APP_CON_MADE &&
        !p->app_reading_paused) {
        /* The kernel's plaintext goes straight into the app's buffer. */
        PyObject *buf = PyObject_CallOneArg(p->app_get_buffer, n);
        if (buf != NULL)
            p->ktls_fwd = 1;
        return buf;
    }
    /* asyncio's want is at most max_size, and its buffer is max_size long. */
    Py_INCREF(p->rbuf_view);
    return p->rbuf_view;
}

static int dispatch_state(TLSProtocol *p)
{
    switch (p->state) {
    case ST_DO_HANDSHAKE:
        return do_handshake(p);
    case ST_WRAPPED:
        return do_read(p);
    case ST_FLUSHING:
        return do_flush(p);
    case ST_SHUTDOWN:
        return do_shutdown(p);
    }
    return 0;
}

static PyObject *proto_buffer_updated(TLSProtocol *p, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (p->ktls_fwd) {
        p->ktls_fwd = 0;
        if (guarded(p, discard(PyObject_CallOneArg(p->app_buffer_updated, arg)), "Fatal error on SSL protocol") < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (n < 0 || n > PyByteArray_GET_SIZE(p->rbuf)) {
        PyErr_SetString(PyExc_ValueError, "buffer_updated: nbytes out of range");
        return NULL;
    }
    if (p->ktls_state == KT_ON) {
        if (ktls_received(p, PyByteArray_AS_STRING(p->rbuf), n) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (p->ktls_state == KT_RECORDS)
        ktls_stream_feed(&p->krx, (const uint8_t *)PyByteArray_AS_STRING(p->rbuf), n);
    PyObject *mv = PyMemoryView_FromMemory(PyByteArray_AS_STRING(p->rbuf), n, PyBUF_READ);
    PyObject *r = mv ? call1(p->incoming, S_write, mv) : NULL;
    Py_XDECREF(mv);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    if (dispatch_state(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* data_received(data): what a transport that is not buffer-aware calls
 * (start_tls over someone's plain protocol transport). */
static PyObject *proto_data_received(TLSProtocol *p, PyObject *data)
{
    if (p->ktls_state != KT_OFF) {
        /* Only goloop's own transport is offered kernel TLS, and it is
         * always buffered with us. */
        PyErr_SetString(PyExc_RuntimeError, "kernel TLS: data_received from a transport that is not goloop's");
        return NULL;
    }
    PyObject *r = call1(p->incoming, S_write, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    if (dispatch_state(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int eof_inner(TLSProtocol *p, int *keep)
{
    if (loop_debug(p)) {
        PyObject *a = PyTuple_Pack(1, (PyObject *)p);
        log_msg(S_debug, NULL, "%r received EOF", a);
        Py_XDECREF(a);
    }
    switch (p->state) {
    case ST_DO_HANDSHAKE: {
        PyObject *exc = PyObject_CallNoArgs(PyExc_ConnectionResetError);
        if (exc == NULL)
            return -1;
        int rc = on_handshake_complete(p, exc);
        Py_DECREF(exc);
        return rc;
    }
    case ST_WRAPPED:
        if (set_state(p, ST_FLUSHING) < 0)
            return -1;
        if (p->app_reading_paused) {
            *keep = 1;
            return 0;
        }
        return do_flush(p);
    case ST_FLUSHING:
        if (do_write(p) < 0 || set_state(p, ST_SHUTDOWN) < 0)
            return -1;
        return do_shutdown(p);
    case ST_SHUTDOWN:
        return do_shutdown(p);
    }
    return 0;
}

static PyObject *proto_eof_received(TLSProtocol *p, PyObject *unused)
{
    p->eof_received = 1;
    int keep = 0;
    if (eof_inner(p, &keep) < 0) {
        if (PyErr_ExceptionMatches(PyExc_Exception) && p->transport != NULL) {
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyObject *tr = p->transport;
            Py_INCREF(tr);
            PyObject *r = call0(tr, S_close);
            Py_DECREF(tr);
            if (r == NULL) {
                Py_XDECREF(et);
                Py_XDECREF(ev);
                Py_XDECREF(etb);
                return NULL;
            }
            Py_DECREF(r);
            PyErr_Restore(et, ev, etb);
        }
        return NULL;
    }
    if (keep)
        Py_RETURN_TRUE;
    Py_RETURN_NONE;
}

static PyObject *proto_pause_writing(TLSProtocol *p, PyObject *unused)
{
    if (p->ssl_writing_paused) {
        PyErr_SetNone(PyExc_AssertionError);
        return NULL;
    }
    p->ssl_writing_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *proto_resume_writing(TLSProtocol *p, PyObject *unused)
{
    if (!p->ssl_writing_paused) {
        PyErr_SetNone(PyExc_AssertionError);
        return NULL;
    }
    p->ssl_writing_paused = 0;
    if (process_outgoing(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *proto_do_read(TLSProtocol *p, PyObject *unused)
{
    if (do_read(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* resume_reading's deferred step. */
static PyObject *proto_resume_cb(TLSProtocol *p, PyObject *unused)
{
    int rc = 0;
    if (p->state == ST_WRAPPED)
        rc = do_read(p);
    else if (p->state == ST_FLUSHING)
        rc = do_flush(p);
    else if (p->state == ST_SHUTDOWN)
        rc = do_shutdown(p);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *proto_get_extra_info(TLSProtocol *p, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get_extra_info(name, default=None)");
        return NULL;
    }
    PyObject *name = args[0], *dflt = nargs > 1 ? args[1] : Py_None;
    PyObject *v = PyDict_GetItemWithError(p->extra, name);
    if (v != NULL) {
        Py_INCREF(v);
        return v;
    }
    if (PyErr_Occurred())
        return NULL;
    if (p->transport != NULL)
        return call2(p->transport, S_get_extra_info, name, dflt);
    Py_INCREF(dflt);
    return dflt;
}

static PyObject *proto_repr(TLSProtocol *p)
{
    return PyUnicode_FromFormat("<goloop._core.TLSProtocol object at %p>", p);
}

static int proto_traverse(TLSProtocol *p, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(p));
    Py_VISIT(p->loop);
    Py_VISIT(p->app_protocol);
    Py_VISIT(p->app_get_buffer);
    Py_VISIT(p->app_buffer_updated);
    Py_VISIT(p->sslcontext);
    Py_VISIT(p->extra);
    Py_VISIT(p->waiter);
    Py_VISIT(p->app_transport);
    Py_VISIT(p->transport);
    Py_VISIT(p->incoming);
    Py_VISIT(p->outgoing);
    Py_VISIT(p->sslobject);
    Py_VISIT(p->sslobj);
    Py_VISIT(p->backlog);
    Py_VISIT(p->hs_handle);
    Py_VISIT(p->sd_handle);
    Py_VISIT(p->go_fut);
    return 0;
}

static int proto_clear(TLSProtocol *p)
{
    /* OpenSSL's key log must not write into us once we are gone (the SSL
     * may outlive us: the SSLObject is the program's too). */
    ktls_detach(p->ssl);
    p->ssl = NULL;
    memset(&p->ksec, 0, sizeof p->ksec);
    Py_CLEAR(p->loop);
    Py_CLEAR(p->app_protocol);
    Py_CLEAR(p->app_get_buffer);
    Py_CLEAR(p->app_buffer_updated);
    Py_CLEAR(p->sslcontext);
    Py_CLEAR(p->extra);
    Py_CLEAR(p->waiter);
    Py_CLEAR(p->app_transport);
    Py_CLEAR(p->transport);
    Py_CLEAR(p->hs_timeout);
    Py_CLEAR(p->sd_timeout);
    Py_CLEAR(p->incoming);
    Py_CLEAR(p->outgoing);
    Py_CLEAR(p->sslobject);
    Py_CLEAR(p->sslobj);
    Py_CLEAR(p->shutdown_name);
    Py_CLEAR(p->backlog);
    Py_CLEAR(p->hs_handle);
    Py_CLEAR(p->sd_handle);
    Py_CLEAR(p->go_fut);
    Py_CLEAR(p->rbuf_view);
    Py_CLEAR(p->rbuf);
    Py_CLEAR(p->out_high_obj);
    Py_CLEAR(p->out_low_obj);
    Py_CLEAR(p->in_high_obj);
    Py_CLEAR(p->in_low_obj);
    return 0;
}

static void proto_dealloc(TLSProtocol *p)
{
    PyTypeObject *tp = Py_TYPE(p);
    PyObject_GC_UnTrack(p);
    if (p->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)p);
    proto_clear(p);
    tp->tp_free((PyObject *)p);
    Py_DECREF(tp);
}

/* ---- limits (asyncio's add_flowcontrol_defaults) ---- */

static int parse_limits(PyObject *high, PyObject *low, Py_ssize_t kb, PyObject **ho, PyObject **lo,
                        Py_ssize_t *hv, Py_ssize_t *lv)
{
    PyObject *h, *l;
    if (flow_limits_from(high, low, kb * 1024, &h, &l, hv, lv) < 0)
        return -1;
    /* sslproto pauses at size >= high (the transports at size > high): a
     * fractional high, 1.5, is then size >= 2. */
    double dh = PyFloat_AsDouble(h);
    if (dh < (double)PY_SSIZE_T_MAX && dh != (double)*hv)
        *hv += 1;
    Py_XSETREF(*ho, h);
    Py_XSETREF(*lo, l);
    return 0;
}

/* TLSProtocol(loop, app_protocol, sslcontext, waiter, server_side,
 *             call_connection_made, handshake_timeout, shutdown_timeout,
 *             incoming, outgoing, sslobject): _tls.py checked the arguments. */
static PyObject *proto_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *loop, *app, *ctx, *waiter, *hs, *sd, *inc, *out, *sslobject;
    int server_side, call_cm, ktls = 0, go = 0;
    if (!PyArg_ParseTuple(args, "OOOOppOOOOO|ii:TLSProtocol", &loop, &app, &ctx, &waiter, &server_side,
                          &call_cm, &hs, &sd, &inc, &out, &sslobject, &ktls, &go))
        return NULL;
    if (go && TLS.go_start == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "goloop._core._tls_setup() was not given go_start");
        return NULL;
    }
    if (TLS.want_read == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "goloop._core._tls_setup() was not called");
        return NULL;
    }
    TLSProtocol *p = (TLSProtocol *)tp->tp_alloc(tp, 0);
    if (p == NULL)
        return NULL;
    Py_INCREF(loop);
    p->loop = loop;
    Py_INCREF(ctx);
    p->sslcontext = ctx;
    p->server_side = (char)server_side;
    p->ktls_want = go ? 0 : (char)ktls;   /* 1: the kernel's records, 2: Go's (GOLOOP_KTLS=soft) */
    p->go_mode = go != 0;
    p->go_soft_only = go == 2;
    if (waiter != Py_None) {
        Py_INCREF(waiter);
        p->waiter = waiter;
    }
    Py_INCREF(hs);
    p->hs_timeout = hs;
    Py_INCREF(sd);
    p->sd_timeout = sd;
    Py_INCREF(inc);
    p->incoming = inc;
    Py_INCREF(out);
    p->outgoing = out;
    Py_INCREF(sslobject);
    p->sslobject = sslobject;
    p->state = ST_UNWRAPPED;
    p->app_state = call_cm ? APP_INIT : APP_CON_MADE;
    p->hs_start = -1;
    /* OpenSSL is driven through the SSLObject's _ssl._SSLSocket (C methods);
     * an sslobject_class of the program's that has no such object is driven
     * through its own methods (Python), with the same results. */
    PyObject *raw = PyObject_GetAttrString(sslobject, "_sslobj");
    if (raw != NULL && Py_TYPE(raw) == (PyTypeObject *)TLS.ssl_socket_type) {
        p->sslobj = raw;
        Py_INCREF(S_shutdown);
        p->shutdown_name = S_shutdown;
    } else {
        PyErr_Clear();
        Py_XDECREF(raw);
        Py_INCREF(sslobject);
        p->sslobj = sslobject;
        Py_INCREF(S_unwrap);
        p->shutdown_name = S_unwrap;
    }
    p->extra = Py_BuildValue("{s:O,s:O}", "sslcontext", ctx, "ktls", Py_False);
    p->backlog = PyList_New(0);
    p->rbuf = PyByteArray_FromStringAndSize(NULL, MAX_SIZE);
    p->rbuf_view = p->rbuf ? PyMemoryView_FromObject(p->rbuf) : NULL;
    if (p->extra == NULL || p->backlog == NULL || p->rbuf_view == NULL ||
        set_app_protocol(p, app) < 0 ||
        parse_limits(NULL, NULL, 256, &p->in_high_obj, &p->in_low_obj, &p->in_high, &p->in_low) < 0 ||
        parse_limits(NULL, NULL, 512, &p->out_high_obj, &p->out_low_obj, &p->out_high, &p->out_low) < 0) {
        Py_DECREF(p);
        return NULL;
    }
    TLSTransport *t = (TLSTransport *)TLSTransport_Type->tp_alloc(TLSTransport_Type, 0);
    if (t == NULL) {
        Py_DECREF(p);
        return NULL;
    }
    Py_INCREF(loop);
    t->loop = loop;
    Py_INCREF(p);
    t->proto = p;
    p->app_transport = t;
    return (PyObject *)p;
}

static PyObject *proto_get_app_transport(TLSProtocol *p, void *c)
{
    PyObject *t = p->app_transport ? (PyObject *)p->app_transport : Py_None;
    Py_INCREF(t);
    return t;
}

static PyObject *proto_get_state(TLSProtocol *p, void *c)
{
    return PyUnicode_FromString(STATE_NAMES[p->state]);
}

static PyMethodDef proto_methods[] = {
    {"connection_made", (PyCFunction)proto_connection_made, METH_O, NULL},
    {"connection_lost", (PyCFunction)proto_connection_lost, METH_O, NULL},
    {"get_buffer", (PyCFunction)proto_get_buffer, METH_O, NULL},
    {"buffer_updated", (PyCFunction)proto_buffer_updated, METH_O, NULL},
    {"data_received", (PyCFunction)proto_data_received, METH_O, NULL},
    {"eof_received", (PyCFunction)proto_eof_received, METH_NOARGS, NULL},
    {"pause_writing", (PyCFunction)proto_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)proto_resume_writing, METH_NOARGS, NULL},
    {"_get_extra_info", (PyCFunction)(void (*)(void))proto_get_extra_info, METH_FASTCALL, NULL},
    {"_check_handshake_timeout", (PyCFunction)proto_check_handshake_timeout, METH_NOARGS, NULL},
    {"_check_shutdown_timeout", (PyCFunction)proto_check_shutdown_timeout, METH_NOARGS, NULL},
    {"_do_read", (PyCFunction)proto_do_read, METH_NOARGS, NULL},
    {"_resume_app_reading", (PyCFunction)proto_resume_cb, METH_NOARGS, NULL},
    {"_go_done", (PyCFunction)(void (*)(void))proto_go_done, METH_FASTCALL, NULL},
    {"_go_failed", (PyCFunction)proto_go_failed, METH_O, NULL},
    {NULL}
};

static PyGetSetDef proto_getset[] = {
    {"_app_transport", (getter)proto_get_app_transport, NULL, NULL, NULL},
    {"_state", (getter)proto_get_state, NULL, NULL, NULL},
    {NULL}
};

static PyMemberDef proto_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TLSProtocol, weakreflist), READONLY},
    {"_app_protocol", T_OBJECT, offsetof(TLSProtocol, app_protocol), READONLY},
    {"_transport", T_OBJECT, offsetof(TLSProtocol, transport), READONLY},
    {"_sslobj", T_OBJECT, offsetof(TLSProtocol, sslobject), READONLY},
    {"_sslcontext", T_OBJECT, offsetof(TLSProtocol, sslcontext), READONLY},
    {"_server_side", T_BOOL, offsetof(TLSProtocol, server_side), READONLY},
    {"_app_writing_paused", T_BOOL, offsetof(TLSProtocol, app_writing_paused), READONLY},
    {"_app_reading_paused", T_BOOL, offsetof(TLSProtocol, app_reading_paused), READONLY},
    {"_ssl_reading_paused", T_BOOL, offsetof(TLSProtocol, ssl_reading_paused), READONLY},
    {"_ssl_writing_paused", T_BOOL, offsetof(TLSProtocol, ssl_writing_paused), READONLY},
    {"_eof_received", T_BOOL, offsetof(TLSProtocol, eof_received), READONLY},
    {"_conn_lost", T_PYSSIZET, offsetof(TLSProtocol, conn_lost), READONLY},
    {NULL}
};

static PyType_Slot proto_slots[] = {
    {Py_tp_new, proto_new},
    {Py_tp_dealloc, proto_dealloc},
    {Py_tp_traverse, proto_traverse},
    {Py_tp_clear, proto_clear},
    {Py_tp_repr, proto_repr},
    {Py_tp_methods, proto_methods},
    {Py_tp_getset, proto_getset},
    {Py_tp_members, proto_members},
    {0, NULL}
};

static PyType_Spec proto_spec = {
    "goloop._core.TLSProtocol", sizeof(TLSProtocol), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, proto_slots
};

/* ---- the application's transport: asyncio's _SSLProtocolTransport ---- */

static TLSProtocol *tp_proto(TLSTransport *t)
{
    if (t->proto == NULL)
        PyErr_SetString(PyExc_AttributeError, "'NoneType' object has no attribute '_ssl_protocol'");
    return t->proto;
}

static PyObject *tt_get_extra_info(TLSTransport *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *name = NULL, *dflt = Py_None;
    Py_ssize_t n = PyVectorcall_NARGS(nargs);
    if (n >= 1)
        name = args[0];
    if (n >= 2)
        dflt = args[1];
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            const char *k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
            if (k && strcmp(k, "default") == 0 && n < 2)
                dflt = args[n + i];
            else if (k && strcmp(k, "name") == 0 && n < 1)
                name = args[n + i];
            else {
                PyErr_Format(PyExc_TypeError, "get_extra_info() got an unexpected keyword argument '%s'", k ? k : "?");
                return NULL;
            }
        }
    }
    if (name == NULL || n > 2) {
        PyErr_SetString(PyExc_TypeError, "get_extra_info() takes a name and an optional default");
        return NULL;
    }
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    PyObject *a[2] = {name, dflt};
    return proto_get_extra_info(p, a, 2);
}

static PyObject *tt_set_protocol(TLSTransport *t, PyObject *protocol)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL || set_app_protocol(p, protocol) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tt_get_protocol(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    Py_INCREF(p->app_protocol);
    return p->app_protocol;
}

static PyObject *tt_is_closing(TLSTransport *t, PyObject *unused)
{
    return PyBool_FromLong(t->closed);
}

static PyObject *tt_close(TLSTransport *t, PyObject *unused)
{
    if (!t->closed) {
        t->closed = 1;
        TLSProtocol *p = tp_proto(t);
        if (p == NULL || start_shutdown(p) < 0)
            return NULL;
    } else {
        Py_CLEAR(t->proto);
    }
    Py_RETURN_NONE;
}

static PyObject *tt_is_reading(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    return p ? PyBool_FromLong(!p->app_reading_paused) : NULL;
}

static PyObject *tt_pause_reading(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    p->app_reading_paused = 1;
    /* Kernel TLS has no BIO to fill up to the limits: the stream stops. */
    if (p->ktls_state == KT_ON && p->transport != NULL && discard(call0(p->transport, S_pause_reading)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tt_resume_reading(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    if (p->app_reading_paused) {
        p->app_reading_paused = 0;
        PyObject *cb = PyObject_GetAttrString((PyObject *)p, "_resume_app_reading");
        int rc = cb ? call_soon(p, cb, NULL) : -1;
        Py_XDECREF(cb);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *tt_set_write_buffer_limits(TLSTransport *t, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high = Py_None, *low = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:set_write_buffer_limits", kwlist, &high, &low))
        return NULL;
    TLSProtocol *p = tp_proto(t);
    if (p == NULL || parse_limits(high, low, 512, &p->out_high_obj, &p->out_low_obj, &p->out_high, &p->out_low) < 0)
        return NULL;
    if (control_app_writing(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tt_get_write_buffer_limits(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    return p ? PyTuple_Pack(2, p->out_low_obj, p->out_high_obj) : NULL;
}

static PyObject *tt_get_write_buffer_size(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    Py_ssize_t n = write_buffer_size(p);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *tt_set_read_buffer_limits(TLSTransport *t, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high = Py_None, *low = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:set_read_buffer_limits", kwlist, &high, &low))
        return NULL;
    TLSProtocol *p = tp_proto(t);
    if (p == NULL || parse_limits(high, low, 256, &p->in_high_obj, &p->in_low_obj, &p->in_high, &p->in_low) < 0)
        return NULL;
    if (control_ssl_reading(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tt_get_read_buffer_limits(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    return p ? PyTuple_Pack(2, p->in_low_obj, p->in_high_obj) : NULL;
}

static PyObject *tt_get_read_buffer_size(TLSTransport *t, PyObject *unused)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    Py_ssize_t n = bio_pending(p->incoming);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *tt_write(TLSTransport *t, PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "data: expecting a bytes-like instance, got %s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t n = data_len(data);
    if (n < 0)
        return NULL;
    if (n == 0)
        Py_RETURN_NONE;
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    Py_INCREF(p);
    int rc = write_appdata(p, &data, 1, NULL);
    Py_DECREF(p);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tt_writelines(TLSTransport *t, PyObject *seq)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    Py_INCREF(p);
    int rc = write_appdata(p, NULL, 0, seq);
    Py_DECREF(p);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *tt_write_eof(TLSTransport *t, PyObject *unused)
{
    PyErr_SetNone(PyExc_NotImplementedError);
    return NULL;
}

static PyObject *tt_can_write_eof(TLSTransport *t, PyObject *unused)
{
    Py_RETURN_FALSE;
}

static PyObject *tt_abort(TLSTransport *t, PyObject *unused)
{
    t->closed = 1;
    TLSProtocol *p = tp_proto(t);
    if (p == NULL || abort_(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* asyncio 3.11 passes exc to an _abort() that takes none (a TypeError);
 * here it is an abort, as intended. */
static PyObject *tt_force_close(TLSTransport *t, PyObject *exc)
{
    return tt_abort(t, NULL);
}

/* asyncio's hook for its tests (test_ssl fills the backlog with it). */
static PyObject *tt_append_write_backlog(TLSTransport *t, PyObject *data)
{
    TLSProtocol *p = tp_proto(t);
    if (p == NULL)
        return NULL;
    Py_ssize_t n = data_len(data);
    if (n < 0 || PyList_Append(p->backlog, data) < 0)
        return NULL;
    p->write_buffer_size += n;
    Py_RETURN_NONE;
}

static PyObject *tt_get_protocol_paused(TLSTransport *t, void *c)
{
    TLSProtocol *p = tp_proto(t);
    return p ? PyBool_FromLong(p->app_writing_paused) : NULL;
}

static PyObject *tt_get_ssl_protocol(TLSTransport *t, void *c)
{
    PyObject *r = t->proto ? (PyObject *)t->proto : Py_None;
    Py_INCREF(r);
    return r;
}

static PyObject *tt_get_closed(TLSTransport *t, void *c)
{
    return PyBool_FromLong(t->closed);
}

static int tt_set_closed(TLSTransport *t, PyObject *v, void *c)
{
    int b = v ? PyObject_IsTrue(v) : 0;
    if (b < 0)
        return -1;
    t->closed = (char)b;
    return 0;
}

static PyObject *tt_repr(TLSTransport *t)
{
    return PyUnicode_FromFormat("<goloop._core.SSLProtocolTransport object at %p>", t);
}

static void tt_finalize(TLSTransport *t)
{
    if (t->closed)
        return;
    t->closed = 1;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (PyErr_WarnEx(PyExc_ResourceWarning,
                     "unclosed transport <asyncio._SSLProtocolTransport object>", 1) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    PyErr_Restore(et, ev, etb);
}

static int tt_traverse(TLSTransport *t, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(t));
    Py_VISIT(t->extra_slot);
    for (int i = 0; i < 4; i++)
        Py_VISIT(t->fc_slots[i]);
    Py_VISIT(t->loop);
    Py_VISIT(t->proto);
    return 0;
}

static int tt_clear(TLSTransport *t)
{
    Py_CLEAR(t->extra_slot);
    for (int i = 0; i < 4; i++)
        Py_CLEAR(t->fc_slots[i]);
    Py_CLEAR(t->loop);
    Py_CLEAR(t->proto);
    return 0;
}

static void tt_dealloc(TLSTransport *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
        return;
    PyObject_GC_UnTrack(t);
    if (t->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)t);
    tt_clear(t);
    tp->tp_free((PyObject *)t);
    Py_DECREF(tp);
}

static PyMethodDef tt_methods[] = {
    {"get_extra_info", (PyCFunction)(void (*)(void))tt_get_extra_info, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"set_protocol", (PyCFunction)tt_set_protocol, METH_O, NULL},
    {"get_protocol", (PyCFunction)tt_get_protocol, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)tt_is_closing, METH_NOARGS, NULL},
    {"close", (PyCFunction)tt_close, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)tt_is_reading, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)tt_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)tt_resume_reading, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))tt_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_limits", (PyCFunction)tt_get_write_buffer_limits, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)tt_get_write_buffer_size, METH_NOARGS, NULL},
    {"set_read_buffer_limits", (PyCFunction)(void (*)(void))tt_set_read_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_read_buffer_limits", (PyCFunction)tt_get_read_buffer_limits, METH_NOARGS, NULL},
    {"get_read_buffer_size", (PyCFunction)tt_get_read_buffer_size, METH_NOARGS, NULL},
    {"write", (PyCFunction)tt_write, METH_O, NULL},
    {"writelines", (PyCFunction)tt_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)tt_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)tt_can_write_eof, METH_NOARGS, NULL},
    {"abort", (PyCFunction)tt_abort, METH_NOARGS, NULL},
    {"_force_close", (PyCFunction)tt_force_close, METH_O, NULL},
    {"_test__append_write_backlog", (PyCFunction)tt_append_write_backlog, METH_O, NULL},
    {NULL}
};

/* _ktls_raw: the stream transport under us when the kernel does our
 * records, so that loop.sendfile can use sendfile(2) on it (the kernel
 * encrypts the file's pages): only while nothing of the app's waits in
 * our backlog, which the file must not overtake. Otherwise None. */
static PyObject *tt_get_ktls_raw(TLSTransport *t, void *c)
{
    TLSProtocol *p = t->proto;
    if (p != NULL && p->ktls_state == KT_ON && (p->ktls_dirs & GL_KTLS_TX) &&
        !(p->ktls_dirs & GL_KTLS_SOFTWARE) && p->state == ST_WRAPPED &&
        PyList_GET_SIZE(p->backlog) == 0 && p->transport != NULL)
        return Py_NewRef(p->transport);
    Py_RETURN_NONE;
}

static PyGetSetDef tt_getset[] = {
    {"_ktls_raw", (getter)tt_get_ktls_raw, NULL, NULL, NULL},
    {"_protocol_paused", (getter)tt_get_protocol_paused, NULL, NULL, NULL},
    {"_ssl_protocol", (getter)tt_get_ssl_protocol, NULL, NULL, NULL},
    {"_closed", (getter)tt_get_closed, (setter)tt_set_closed, NULL, NULL},
    {NULL}
};

static PyMemberDef tt_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TLSTransport, weakreflist), READONLY},
    {"_loop", T_OBJECT, offsetof(TLSTransport, loop), READONLY},
    {NULL}
};

static PyType_Slot tt_slots[] = {
    {Py_tp_dealloc, tt_dealloc},
    {Py_tp_finalize, tt_finalize},
    {Py_tp_traverse, tt_traverse},
    {Py_tp_clear, tt_clear},
    {Py_tp_repr, tt_repr},
    {Py_tp_methods, tt_methods},
    {Py_tp_getset, tt_getset},
    {Py_tp_members, tt_members},
    {0, NULL}
};

static PyType_Spec tt_spec = {
    "goloop._core.SSLProtocolTransport", sizeof(TLSTransport), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, tt_slots
};

/* _tls_setup(want_read, syscall_error, ssl_error, cert_error, cancelled, logger, ssl_socket_type
 *            [, go_start]) */
static PyObject *tls_setup(PyObject *m, PyObject *args)
{
    PyObject *a, *b, *c, *d, *e, *f, *g, *h = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOOO|O:_tls_setup", &a, &b, &c, &d, &e, &f, &g, &h))
        return NULL;
    if (h != NULL)
        Py_XSETREF(TLS.go_start, Py_NewRef(h));
    PyObject **slots[] = {&TLS.want_read, &TLS.syscall_error, &TLS.ssl_error, &TLS.cert_error,
                          &TLS.cancelled, &TLS.logger, &TLS.ssl_socket_type};
    PyObject *vals[] = {a, b, c, d, e, f, g};
    for (int i = 0; i < 7; i++) {
        Py_INCREF(vals[i]);
        Py_XSETREF(*slots[i], vals[i]);
    }
    Py_RETURN_NONE;
}

/* _ktls_init(path of _ssl's shared object) -> whether OpenSSL's handshake
 * secrets can be had for kernel TLS (ktls.c). */
static PyObject *tls_ktls_init(PyObject *m, PyObject *path)
{
    PyObject *b;
    if (!PyUnicode_FSConverter(path, &b))
        return NULL;
    int ok = ktls_init(PyBytes_AS_STRING(b));
    Py_DECREF(b);
    return PyBool_FromLong(ok);
}

static PyMethodDef tls_module_methods[] = {
    {"_tls_setup", tls_setup, METH_VARARGS, NULL},
    {"_ktls_init", tls_ktls_init, METH_O, NULL},
    {NULL}
};

static PyTypeObject *tls_make_type(PyObject *m, PyType_Spec *spec, PyObject *mod, const char *base_name,
                                   Py_ssize_t expect_size)
{
    PyObject *base = PyObject_GetAttrString(mod, base_name);
    if (base == NULL)
        return NULL;
    if (((PyTypeObject *)base)->tp_basicsize != expect_size) {
        Py_DECREF(base);
        PyErr_Format(PyExc_ImportError, "goloop: asyncio.%s has an unexpected layout", base_name);
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec, base);
    Py_DECREF(base);
    if (tp == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, strrchr(spec->name, '.') + 1, (PyObject *)tp) < 0) {
        Py_DECREF(tp);
        return NULL;
    }
    return tp;
}

int init_tls(PyObject *m)
{
    struct { PyObject **s; const char *v; } names[] = {
        {&S_do_handshake, "do_handshake"}, {&S_read, "read"}, {&S_write, "write"},
        {&S_shutdown, "shutdown"}, {&S_pending, "pending"}, {&S_getpeercert, "getpeercert"},
        {&S_cipher, "cipher"}, {&S_compression, "compression"}, {&S_call_soon, "call_soon"},
        {&S_call_later, "call_later"}, {&S_cancel, "cancel"}, {&S_close, "close"},
        {&S_abort, "abort"}, {&S_force_close, "_force_close"}, {&S_pause_reading, "pause_reading"},
        {&S_resume_reading, "resume_reading"}, {&S_get_extra_info, "get_extra_info"},
        {&S_data_received, "data_received"}, {&S_eof_received, "eof_received"},
        {&S_connection_made, "connection_made"}, {&S_connection_lost, "connection_lost"},
        {&S_pause_writing, "pause_writing"}, {&S_resume_writing, "resume_writing"},
        {&S_cancelled, "cancelled"}, {&S_set_result, "set_result"},
        {&S_set_exception, "set_exception"}, {&S_debug, "debug"}, {&S_warning, "warning"},
        {&S_call_exception_handler, "call_exception_handler"}, {&S_get_buffer, "get_buffer"},
        {&S_buffer_updated, "buffer_updated"}, {&S_time, "time"}, {&S_unwrap, "unwrap"},
        {&S_loop_debug, "_debug"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].s = PyUnicode_InternFromString(names[i].v)) == NULL)
            return -1;
    /* BaseProtocol and its subclasses have empty __slots__: a bare object. */
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    TLSProtocol_Type = tls_make_type(m, &proto_spec, asyncio, "BufferedProtocol", sizeof(PyObject));
    Py_DECREF(asyncio);
    if (TLSProtocol_Type == NULL)
        return -1;
    /* asyncio's _SSLProtocolTransport is a _FlowControlMixin (BaseTransport's
     * '_extra' and four slots of its own); base_events' sendfile fallback
     * checks for it. */
    PyObject *transports = PyImport_ImportModule("asyncio.transports");
    if (transports == NULL)
        return -1;
    TLSTransport_Type = tls_make_type(m, &tt_spec, transports, "_FlowControlMixin",
                                      offsetof(TLSTransport, loop));
    Py_DECREF(transports);
    if (TLSTransport_Type == NULL)
        return -1;
    return PyModule_AddFunctions(m, tls_module_methods);
}
