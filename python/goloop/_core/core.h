/* goloop._core: the loop's hot path in C. It holds Python objects and makes
 * no I/O syscalls: everything that touches the kernel is a submission record
 * handed to Go (libgoloop.so) in the one call per iteration that also waits. */
#ifndef GOLOOP_CORE_H
#define GOLOOP_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include "goloop.h"

/* The Go library's function table, filled by dlsym on first use. */
typedef struct {
    gl_new_fn new_;
    gl_poll_fn poll;
    gl_wake_fn wake;
    gl_wake_fd_fn wake_fd;
    gl_close_fn close;
    gl_backend_fn backend;
    gl_call_fn call;
    gl_result_fn result;
    gl_cancel_fn cancel;
} gl_api;
extern gl_api GL;
int gl_ensure_loaded(void);   /* 0, or -1 with an exception set */
int gl_check_fork(void);      /* -1 in a child forked after Go started */
int gl_forked(void);          /* 1 there: Go must not be called at all */

/* A token's low three bits say what kind of thing it names. Transports,
 * watchers and listeners are named through the owner table (owners.c: slot
 * and generation), calls by a counter (calls.c). TAG_ORPHAN is the close of
 * an fd that no object owns any more (an fd accepted for a closed listener,
 * a transport collected while open): its EvClosed is only counted. */
#define TAG_MASK 7u
#define TAG_TRANSPORT 1u
#define TAG_WATCHER 2u
#define TAG_LISTENER 3u
#define TAG_CALL 4u
#define TAG_ORPHAN 5u
#define TAG_DGRAM 6u
#define TAG_SOCKOP 7u   /* a sock_recv/sock_recv_into/sock_sendall in Go (sockops.c) */

typedef struct {
    PyObject *obj;         /* borrowed; NULL when the slot is free */
    uint32_t gen;          /* bumped when the slot is freed */
    uint32_t next;         /* free list */
    unsigned tag;
} owner_slot;

/* Python-level helpers the package installs at import (off the hot path). */
typedef struct {
    PyObject *format_handle;   /* (handle) -> str, for repr and messages */
    PyObject *fatal_error;     /* (transport, exc, message) */
    PyObject *slow_callback;   /* (loop, handle, seconds) */
    PyObject *extract_stack;   /* () -> traceback list, debug only */
    PyObject *check_call;      /* (loop, callback, method) debug checks */
} hooks_t;
extern hooks_t HOOKS;

typedef struct LoopCore LoopCore;

typedef struct {
    PyObject_HEAD
    PyObject *callback;
    PyObject *args;        /* tuple */
    PyObject *context;
    LoopCore *loop;
    PyObject *source_traceback;
    PyObject *repr_cache;
    PyObject *weakreflist;
    double when;           /* TimerHandle only */
    char cancelled;
    char scheduled;        /* TimerHandle: in the heap */
    char is_timer;
} Handle;

struct LoopCore {
    PyObject_HEAD
    int64_t h;             /* Go loop handle; 0 when closed */
    /* ready queue: a ring of handles */
    Handle **ready;
    Py_ssize_t rhead, rlen, rcap;
    /* timers: a binary heap ordered by when */
    Handle **heap;
    Py_ssize_t hlen, hcap, hcancelled;
    /* this iteration's submissions */
    gl_sub *subs;
    int nsubs, capsubs;
    /* completions: filled by Go, consumed from cpos */
    gl_comp *comps;
    int ncomps, cpos, capcomps;
    unsigned long thread;  /* the thread in _run, 0 when not running */
    owner_slot *slots;     /* the owner table (owners.c) */
    uint32_t nslots, capslots, free_slot;
    Py_ssize_t closes_in_flight; /* OpClose submitted, EvClosed not yet seen */
    uint64_t polls;        /* goloop_poll calls made: batches handed to Go */
    /* The loop's thread is in a waiting goloop_poll, the GIL released: set
     * and cleared under the GIL, so another thread's call_soon_threadsafe
     * (which holds the GIL) sees it and wakes the wait (go.c, loop.c). */
    int waiting;
    int wake_fd;           /* Go's wake-up eventfd (go_wake_from_thread), -1: none */
    uint64_t tls_kernel, tls_user, tls_go;   /* TLS connections made, by who does their records (tls.c) */
    PyObject *calls;       /* dict token -> future of a Go call in flight */
    PyObject *connects;    /* dict token -> (future, sockaddr, address): connects in Go (connect.c) */
    uint64_t next_call;
    char stopping;
    char iterating;        /* inside run_once or the close drain: no re-entry */
    char draining;         /* _close_core: completions only give back what they carry */
    char closed;
    char debug;
    char stops_now;        /* epoll: a watch's stop goes to Go at once (watch.c) */
    PyObject *weakreflist;
    LoopCore *fork_next, *fork_prev;   /* every live loop, for the fork hook */
    PyObject **lent;       /* stream buffer id -> the bytes object backing it (recvlend.c) */
    uint32_t nlent;
};

extern PyTypeObject *LoopCore_Type;
extern PyTypeObject *Handle_Type;
extern PyTypeObject *TimerHandle_Type;
extern PyTypeObject *Transport_Type;
extern PyTypeObject *Watcher_Type;
extern PyTypeObject *Listener_Type;

/* loop.c */
double loop_time(void);
int loop_submit(LoopCore *lp, uint8_t op, int fd, uint64_t token, const void *ptr, uint32_t len, uint32_t arg);
int loop_push_ready(LoopCore *lp, Handle *h);  /* steals nothing; increfs */
Handle *loop_call_soon(LoopCore *lp, PyObject *cb, PyObject *args, PyObject *context);
int loop_call_exception_handler(LoopCore *lp, PyObject *ctx);
int loop_check_alive(LoopCore *lp);
void loop_close_orphan(LoopCore *lp, int fd);
int loop_apply_now(LoopCore *lp);    /* submit the batch, take no completion */
PyObject *loop_after_fork_child(void);

/* recvlend.c: receive buffers backed by bytes objects */
int lend_wants(const gl_comp *c);
PyObject *lend_take(LoopCore *lp, const gl_comp *c);
void lend_release(LoopCore *lp);   /* only once Go is closed */   /* os.register_at_fork(after_in_child=) */
int init_loop_type(PyObject *m);

/* go.c: the one door into Go (fork guard and loop state checked there) */
int go_enter(LoopCore *lp);          /* 0, or -1 with RuntimeError set */
int go_usable(LoopCore *lp);         /* the same check, quiet: 1 or 0 */
int64_t go_new(const char *backend, char *err, int errlen);
int go_poll(LoopCore *lp, gl_sub *subs, int nsubs, gl_comp *out, int nout, int64_t timeout_ns);
void go_wake(LoopCore *lp);
int go_wake_fd(LoopCore *lp);
void go_wake_from_thread(LoopCore *lp);
void go_close(LoopCore *lp);
PyObject *go_backend_name(LoopCore *lp);
int go_call(LoopCore *lp, uint64_t token, const char *method, const char *req, int reqlen,
            char *out, int outcap, int *outlen);
int go_result(LoopCore *lp, uint64_t token, char *out, int cap);
void go_cancel(LoopCore *lp, uint64_t token);

/* owners.c: token -> owner */
int owners_bind(LoopCore *lp, PyObject *obj, unsigned tag, uint64_t *token);
void owners_release(LoopCore *lp, uint64_t token);
PyObject *owners_get(LoopCore *lp, uint64_t token);   /* borrowed, or NULL: stale */
void owners_stale(LoopCore *lp, gl_comp *c);

/* handle.c */
Handle *handle_new(PyTypeObject *tp, LoopCore *lp, PyObject *cb, PyObject *args, PyObject *context, double when);
int handle_run(Handle *h);   /* 0, or -1 when SystemExit/KeyboardInterrupt must leave the loop */
int init_handle_types(PyObject *m);

/* transport.c */
int transport_dispatch(LoopCore *lp, PyObject *tr, gl_comp *c);
int transport_recv_run(LoopCore *lp, PyObject *tr, gl_comp *c, int n);
void transport_loop_closing(LoopCore *lp, PyObject *tr);
int owners_unpin_forked(PyObject *obj, char *go_open, char *pinned, int fd_gone, PyObject *into);
int transport_forked(PyObject *tr, int fd_gone, PyObject *into);   /* in a forked child */
void transport_child_loop_closing(PyObject *tr);
int dgram_forked(PyObject *dg, int fd_gone, PyObject *into);
void dgram_child_loop_closing(PyObject *dg);
int transport_accept(LoopCore *lp, gl_comp *c, PyObject *factory, PyObject *server,
                     int family, int type, int proto);
PyObject *inet4_address(uint32_t addr, uint16_t port);
PyObject *transport_pack_inet4(uint32_t l_addr, uint16_t l_port, uint32_t p_addr, uint16_t p_port);
int init_transport_type(PyObject *m);

/* dgram.c */
extern PyTypeObject *DatagramTransport_Type;
int dgram_dispatch(LoopCore *lp, PyObject *t, gl_comp *c);
void dgram_loop_closing(LoopCore *lp, PyObject *t);
int init_dgram_type(PyObject *m);

/* calls.c */
int call_dispatch(LoopCore *lp, gl_comp *c);
PyObject *lc_go_call_start(LoopCore *lp, PyObject *args);
PyObject *lc_go_call_quick(LoopCore *lp, PyObject *args);
PyObject *lc_go_call_cancel(LoopCore *lp, PyObject *arg);
PyObject *lc_gai_start(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
int init_calls(PyObject *m);

/* flow.c: write flow control of the transports that send through Go */
#define FLOW_DEFAULT_HIGH (64 * 1024)
int flow_parse_limits(PyObject *args, PyObject *kw, PyObject **h, PyObject **l,
                      Py_ssize_t *hv, Py_ssize_t *lv);
int flow_limits_from(PyObject *high, PyObject *low, Py_ssize_t default_high,
                     PyObject **h, PyObject **l, Py_ssize_t *hv, Py_ssize_t *lv);
PyObject *flow_limits(PyObject *high_obj, PyObject *low_obj, Py_ssize_t high, Py_ssize_t low);
int flow_call(LoopCore *lp, PyObject *transport, PyObject *protocol, const char *method);

/* connect.c */
PyObject *lc_connect_start(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_connect_stop(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
int connect_dispatch(LoopCore *lp, gl_comp *c);
/* dgram.c: the sockaddr for (family, address) when C can build it alone */
PyObject *sockaddr_fast(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

/* sockops.c: sock_recv, sock_recv_into, sock_sendall completed in Go */
void sockops_settle(LoopCore *lp, gl_comp *out, int n);   /* after every go_poll */
PyObject *lc_sock_recv_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_recv_into_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_sendall_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_accept_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_recvfrom_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_recvfrom_into_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_sendto_go(LoopCore *lp, PyObject *const *args, Py_ssize_t nargs);
PyObject *lc_sock_stop(LoopCore *lp, PyObject *arg);
PyObject *sock_sendfile_go(PyObject *m, PyObject *const *args, Py_ssize_t nargs);   /* _core._sock_sendfile_go */
void sockop_loop_closing(LoopCore *lp, PyObject *op);
PyObject *sockops_setup(PyObject *m, PyObject *cls);
/* sockobj.c: a transport's socket object, made in C when first asked */
PyObject *sockobj_setup(PyObject *m, PyObject *args);
int sockobj_make(PyObject *loop, PyObject *transport, int family, int type, int proto, int fd,
                 PyObject **sock, PyObject **tsock);
int sockobj_detach(PyObject *sock);
int init_sockops(PyObject *m);

/* tls.c: asyncio's SSL protocol in C over _ssl's objects (docs/tls.md) */
extern PyTypeObject *TLSProtocol_Type;
extern PyTypeObject *TLSTransport_Type;
int init_tls(PyObject *m);
/* A kernel TLS install for this protocol's transport was answered (EvKTLS). */
int tls_ktls_done(PyObject *proto, int res, uint32_t aux);

/* ktls.c: what kernel TLS needs from OpenSSL's handshake (docs/ktls.md) */
typedef struct {
    uint8_t client[48], server[48];   /* TLS 1.3 traffic secrets 0, from the key log */
    uint8_t client_len, server_len;
} ktls_secrets;
typedef struct {
    uint8_t hdr[5], hlen;
    char ccs;                 /* a ChangeCipherSpec went by */
    uint32_t left;            /* body bytes of the current record still to come */
    uint64_t records, after_ccs;
} ktls_stream;
int ktls_init(const char *ssl_module_path);
void *ktls_ssl_of(PyObject *sslsock);           /* the SSL* of an _ssl._SSLSocket, or NULL */
int ktls_attach(void *ssl, ktls_secrets *s);    /* until ktls_detach: the key log fills s */
void ktls_detach(void *ssl);
void ktls_mark_sent_shutdown(void *ssl);
void ktls_stream_feed(ktls_stream *st, const uint8_t *p, size_t n);
int ktls_stream_at_boundary(const ktls_stream *st);
int ktls_params(void *ssl, const ktls_secrets *s, int server, const ktls_stream *tx, const ktls_stream *rx,
                uint64_t tx_records_before_last_step, gl_ktls *k);

/* transport.c: what tls.c asks of goloop's stream transport for kernel TLS */
int transport_is_fresh_socket(PyObject *tr, int tcp_only);   /* a socket transport that never read */
void transport_set_records(PyObject *tr, int on);
int transport_ktls(PyObject *tr, const gl_ktls *k);   /* -1 with an exception */
int transport_send_record(PyObject *tr, int type, const char *p, Py_ssize_t n);
void transport_hold(PyObject *tr, int on);        /* no reads while a Go handshake runs */
int transport_fileno(PyObject *tr);               /* the fd, or -1 once it is Go's to close */

/* watch.c */
int watcher_dispatch(LoopCore *lp, PyObject *w, gl_comp *c);
int listener_dispatch(LoopCore *lp, PyObject *l, gl_comp *c);
void listener_loop_closing(LoopCore *lp, PyObject *l);
int init_watch_types(PyObject *m);

/* The pending exception, normalized, with its traceback attached; the
 * error indicator is cleared. NULL only if none was set. */
PyObject *take_exception(void);

/* Report an exception that escaped a callback to the loop's exception
 * handler, as asyncio's Handle._run does. Returns -1 only for SystemExit
 * and KeyboardInterrupt, which must leave run_forever. */
int report_callback_error(LoopCore *lp, const char *what, PyObject *obj_key, PyObject *obj);

#endif
