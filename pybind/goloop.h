/* The C ABI of libgoloop.so (built from pybind/ with -buildmode=c-shared).
 * Integers and C memory cross it, never Go pointers, never PyObjects.
 * The record layouts are checked against goloop/record.go at compile time
 * on the Go side. */
#ifndef GOLOOP_H
#define GOLOOP_H
#include <stdint.h>

typedef struct {
    uint8_t  op;
    uint8_t  _pad[3];
    int32_t  fd;
    uint64_t token;
    uint64_t ptr;
    uint32_t len;
    uint32_t arg;
} gl_sub;

typedef struct {
    uint64_t token;
    int32_t  res;
    uint8_t  kind;
    uint8_t  flags;
    uint16_t _pad;
    uint64_t ptr;
    uint32_t buf;
    uint32_t aux;
} gl_comp;

enum {
    GL_OP_NOP, GL_OP_RECV_START, GL_OP_RECV_STOP, GL_OP_SEND, GL_OP_SHUTDOWN,
    GL_OP_CLOSE, GL_OP_ACCEPT_START, GL_OP_ACCEPT_STOP, GL_OP_CONNECT,
    GL_OP_POLL_START, GL_OP_POLL_STOP, GL_OP_BUF_RETURN, GL_OP_CONNECT_STOP,
    GL_OP_DGRAM_RECV_START, GL_OP_SENDTO,
    GL_OP_SENDFILE,  /* fd: socket, arg: file fd (lent), ptr: file offset, len: count */
    GL_OP_SOCK_RECV, /* sock_recv*: one recv into ptr/len (C memory kept until its EvSock) */
    GL_OP_SOCK_SEND, /* sock_sendall: all of ptr/len */
    GL_OP_SOCK_STOP, /* the sock op with this token gives up: EvSock -ECANCELED at once */
    GL_OP_SOCK_ACCEPT, /* sock_accept: accept4 on fd; ptr/len: room for the peer's sockaddr */
    GL_OP_SOCK_RECVFROM, /* sock_recvfrom*: ptr: a gl_sendto that Go fills (name, namelen) */
    GL_OP_SOCK_SENDTO,   /* sock_sendto: ptr: a gl_sendto */
    GL_OP_SOCK_SENDFILE, /* sock_sendfile: sendfile(2) on fd; arg: file fd (lent while live),
                            ptr: file offset, len: count (at most GL_SENDFILE_MAX) */
    GL_OP_RECV_RECORD,   /* read exactly one TLS record (header + body), never a byte past it:
                            one GL_EV_RECV as OpRecvStart's (buffer to give back), res = its
                            length, 0 at EOF, -errno. One at a time; C asks for the next. */
    GL_OP_KTLS           /* ptr: a gl_ktls (C memory until GL_EV_KTLS). Ordered with the sends:
                            installed once every earlier send is out; later sends wait for it */
};
enum {
    GL_EV_NONE, GL_EV_RECV, GL_EV_SEND, GL_EV_SHUTDOWN, GL_EV_CLOSED,
    GL_EV_ACCEPT, GL_EV_CONNECT, GL_EV_POLL, GL_EV_POSTED,
    GL_EV_DGRAM,
    GL_EV_SENDFILE,  /* res: bytes sent or -errno; aux: bytes sent before an error */
    GL_EV_SOCK,      /* res: bytes received/sent, the accepted fd, or -errno; aux: bytes sent
                        before an error, or the accepted peer's address length */
    GL_EV_KTLS       /* res: 0 installed, or -errno; aux: GL_KTLS_TX | GL_KTLS_RX installed */
};
/* Kernel TLS (goloop/ktls*.go, docs/ktls.md). After a handshake done in user
 * space, C hands the secrets over; Go derives the record keys and installs
 * them. res 0: what was asked is installed (from then on sends are plaintext,
 * and a receive started afterwards gets plaintext). res < 0 with aux 0:
 * nothing changed, carry on in user space (-ENOENT: no tls module;
 * -EOPNOTSUPP: the kernel refuses this version or suite; -ENOTCONN: the
 * socket is no longer ESTABLISHED, e.g. the peer's FIN already came; -EINVAL:
 * bad gl_ktls). res < 0 with aux != 0: one direction went in and the other did
 * not; the connection cannot go on.
 * On a socket with kernel RX, a receive ends with EOF (res 0) at the peer's
 * close_notify, drops TLS 1.3 NewSessionTickets, and ends with -EPROTO for any
 * other record that is not data; aux then = record type << 8 | alert
 * description or handshake message type. GL_OP_SEND with arg
 * GL_ARG_RECTYPE(t) sends its bytes as one record of type t (21: an alert). */
typedef struct {
    uint16_t version;         /* 0x0303 TLS 1.2, 0x0304 TLS 1.3 */
    uint16_t suite;           /* IANA cipher suite id, e.g. 0x1301 */
    uint8_t  server;          /* 1: this end is the server (it sends with the server's keys) */
    uint8_t  rx;              /* 1: install RX as well as TX */
    uint8_t  secret_len;      /* TLS 1.3: bytes in each traffic secret (32 or 48) */
    uint8_t  flags;           /* GL_KTLS_SOFT, GL_KTLS_SOFT_ONLY (0: kernel TLS only) */
    uint64_t tx_seq;          /* sequence number of the next record this end sends */
    uint64_t rx_seq;          /* ... and of the next it receives */
    uint8_t  client_random[32];   /* TLS 1.2 */
    uint8_t  server_random[32];   /* TLS 1.2 */
    uint8_t  master[48];          /* TLS 1.2 master secret */
    uint8_t  client_secret[48];   /* TLS 1.3 CLIENT_TRAFFIC_SECRET_0 */
    uint8_t  server_secret[48];   /* TLS 1.3 SERVER_TRAFFIC_SECRET_0 */
} gl_ktls;
#define GL_KTLS_TX 1
#define GL_KTLS_RX 2
/* gl_ktls.flags (docs/softtls.md): GL_KTLS_SOFT: where the kernel cannot take
 * the keys before any direction went in (whatever its errno; not TCP), Go's
 * own record layer serves the fd instead; GL_KTLS_SOFT_ONLY: do not try the
 * kernel. Both need rx = 1. A soft install answers res 0, aux = GL_KTLS_TX |
 * GL_KTLS_RX | GL_KTLS_SOFTWARE; everything after is as for kernel TLS, but
 * GL_OP_SENDFILE answers -EOPNOTSUPP. */
#define GL_KTLS_SOFT 1
#define GL_KTLS_SOFT_ONLY 2
#define GL_KTLS_SOFTWARE 4
#define GL_ARG_RECTYPE(t) ((uint32_t)(t) << 8)
/* GL_EV_RECV of a chunk in a stream pool buffer: aux = the buffer's size
 * (0 for record and datagram buffers). GL_OP_BUF_RETURN (arg: buffer id)
 * with ptr and len = that size gives such a buffer back backed by C's
 * memory at ptr from then on, for a buffer C holds: C keeps that memory
 * alive and untouched until the loop is closed or the buffer comes back
 * with other memory (record.go; _core/recvlend.c). */
/* GL_EV_ACCEPT of an IPv4 connection: aux = AF_INET | local port << 16,
 * ptr = peer address | peer port << 32, buf = local address; each as its
 * sockaddr bytes lie (network order). aux 0: no addresses (record.go). */
#define GL_SENDFILE_MAX (1u << 30)
/* goloop_poll's timeout_ns for a call that only applies its batch
 * (loop_apply_now): what it completed comes back, readiness is not asked. */
#define GL_APPLY_ONLY (-2)
#define GL_FLAG_MORE 1
#define GL_CLOSE_ABORT 1
#define GL_CLOSE_UPGRADE 2
#define GL_POLL_IN 0x1
#define GL_POLL_OUT 0x4
#define GL_POLL_ERR 0x8
#define GL_POLL_HUP 0x10
#define GL_ARG_NOTSOCK 0x80000000u   /* OpRecvStart/OpSend: fd is a pipe or a tty (record.go) */
#define GL_ARG_ONCE 0x40000000u      /* OpRecvStart: one chunk per poll, for a reader that pauses (record.go) */

/* Datagrams (goloop/dgram.go): GL_OP_SENDTO's ptr points to a gl_sendto that
 * C keeps alive, with the bytes it names, until the EvSend answering it. A
 * GL_EV_DGRAM's source address is a sockaddr of aux bytes that lies
 * GL_DGRAM_NAME_CAP bytes before its ptr; its buffer id has GL_DGRAM_BUF_BIT. */
#define GL_DGRAM_NAME_CAP 128
#define GL_DGRAM_MAX (256 * 1024)
#define GL_DGRAM_BUF_BIT 0x80000000u
typedef struct {
    uint64_t data;      /* the datagram */
    uint32_t len;
    uint32_t namelen;   /* 0: no address (the connected peer) */
    uint8_t  name[GL_DGRAM_NAME_CAP];   /* a sockaddr */
} gl_sendto;

/* The function table the C extension takes from libgoloop.so with dlsym. */
typedef int64_t (*gl_new_fn)(const char *backend, char *err, int errlen);
typedef int (*gl_poll_fn)(int64_t h, gl_sub *subs, int nsubs, gl_comp *out, int nout, int64_t timeout_ns);
typedef int (*gl_wake_fn)(int64_t h);
/* goloop_wake_fd: the eventfd goloop_wake writes to (8 bytes, a counter),
 * open until goloop_close; -1: none. */
typedef int (*gl_wake_fd_fn)(int64_t h);
typedef int (*gl_close_fn)(int64_t h);
typedef int (*gl_backend_fn)(int64_t h, char *buf, int len);
/* goloop_call: 0 started (a GL_EV_POSTED completion with the token will
 * follow), 1 answered at once, 2 failed at once (no completion follows);
 * -1 no such loop, -2 no such method. For 1 and 2, *outlen is the length
 * of the answer or error text: if it is at most outcap, it is in out and
 * nothing is left in Go; otherwise take it with goloop_result. */
typedef int (*gl_call_fn)(int64_t h, uint64_t token, const char *method, const char *req, int reqlen,
                          char *out, int outcap, int *outlen);
typedef int (*gl_result_fn)(int64_t h, uint64_t token, char *out, int cap);
typedef void (*gl_cancel_fn)(int64_t h, uint64_t token);

#endif
