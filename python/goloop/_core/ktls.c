/* What kernel TLS needs from a handshake OpenSSL did for tls.c: the
 * negotiated version and suite, the secrets, and the sequence number of the
 * next record each way. Go derives the record keys and installs them
 * (GL_OP_KTLS, goloop/ktls*.go); this file only collects, with no I/O.
 *
 * OpenSSL is reached through the library CPython's _ssl module is linked
 * with (dlopen of that module with RTLD_NOLOAD, then dlsym, so the symbols
 * come from its own libssl and nothing is needed at build time). The SSL*
 * behind an ssl.SSLObject is the one private fact used: PySSLSocket's
 * second field after its head in CPython 3.11 (Modules/_ssl.c). It is read
 * only on 3.11 and only believed when OpenSSL's app data of that SSL is the
 * object itself (CPython's SSL_set_app_data(ssl, self)); otherwise kernel TLS
 * is simply not offered (docs/ktls.md).
 *
 * Secrets: TLS 1.2's master secret and randoms have public getters. TLS
 * 1.3's traffic secrets have none but the key log callback, so a callback
 * of ours goes on the SSL_CTX, chained in front of whatever was there
 * (CPython's keylog_filename writer), and files the two lines it needs
 * under the SSL's ex_data slot of ours, which tls.c sets for the length of
 * the handshake only.
 *
 * Sequence numbers are counted, not asked for: tls.c feeds every byte
 * OpenSSL wrote and every byte it was given through a ktls_stream, which
 * counts records (ktls_next_seqs has the rules). */
#include "core.h"
#include <dlfcn.h>
#include <string.h>

typedef void SSL;
typedef void SSL_CTX;
typedef void SSL_CIPHER;
typedef void SSL_SESSION;
typedef void (*keylog_cb)(const SSL *, const char *);

static struct {
    int ready;                 /* 1 usable, -1 tried and not usable */
    int ssl_idx, ctx_idx;      /* our ex_data slots on SSL and SSL_CTX */
    void *(*get_ex_data)(const SSL *, int);
    int (*set_ex_data)(SSL *, int, void *);
    void *(*ctx_get_ex_data)(const SSL_CTX *, int);
    int (*ctx_set_ex_data)(SSL_CTX *, int, void *);
    int (*new_index)(int, long, void *, void *, void *, void *);
    SSL_CTX *(*get_ctx)(const SSL *);
    void (*set_keylog)(SSL_CTX *, keylog_cb);
    keylog_cb (*get_keylog)(const SSL_CTX *);
    int (*version)(const SSL *);
    const SSL_CIPHER *(*current_cipher)(const SSL *);
    uint16_t (*cipher_id)(const SSL_CIPHER *);
    size_t (*client_random)(const SSL *, unsigned char *, size_t);
    size_t (*server_random)(const SSL *, unsigned char *, size_t);
    SSL_SESSION *(*session)(const SSL *);
    size_t (*master_key)(const SSL_SESSION *, unsigned char *, size_t);
    void (*set_shutdown)(SSL *, int);
} O;

#define CRYPTO_EX_INDEX_SSL 0
#define CRYPTO_EX_INDEX_SSL_CTX 1

static int load(void *lib, void *fp, const char *name)
{
    void *f = dlsym(lib, name);
    memcpy(fp, &f, sizeof f);
    return f != NULL;
}

/* ktls_init(path of _ssl's shared object): 1 when OpenSSL can be reached. */
int ktls_init(const char *ssl_module_path)
{
    if (O.ready)
        return O.ready > 0;
    O.ready = -1;
    if (PY_VERSION_HEX >> 16 != 0x030b)
        return 0;   /* the PySSLSocket layout below is 3.11's */
    void *lib = dlopen(ssl_module_path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        return 0;
    int ok = load(lib, &O.get_ex_data, "SSL_get_ex_data") && load(lib, &O.set_ex_data, "SSL_set_ex_data") &&
             load(lib, &O.ctx_get_ex_data, "SSL_CTX_get_ex_data") &&
             load(lib, &O.ctx_set_ex_data, "SSL_CTX_set_ex_data") &&
             load(lib, &O.new_index, "CRYPTO_get_ex_new_index") && load(lib, &O.get_ctx, "SSL_get_SSL_CTX") &&
             load(lib, &O.set_keylog, "SSL_CTX_set_keylog_callback") &&
             load(lib, &O.get_keylog, "SSL_CTX_get_keylog_callback") && load(lib, &O.version, "SSL_version") &&
             load(lib, &O.current_cipher, "SSL_get_current_cipher") &&
             load(lib, &O.cipher_id, "SSL_CIPHER_get_protocol_id") &&
             load(lib, &O.client_random, "SSL_get_client_random") &&
             load(lib, &O.server_random, "SSL_get_server_random") && load(lib, &O.session, "SSL_get_session") &&
             load(lib, &O.master_key, "SSL_SESSION_get_master_key") &&
             load(lib, &O.set_shutdown, "SSL_set_shutdown");
    /* The handle stays open: _ssl is never unloaded, and neither are we. */
    if (!ok)
        return 0;
    O.ssl_idx = O.new_index(CRYPTO_EX_INDEX_SSL, 0, NULL, NULL, NULL, NULL);
    O.ctx_idx = O.new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, NULL, NULL, NULL, NULL);
    if (O.ssl_idx < 0 || O.ctx_idx < 0)
        return 0;
    O.ready = 1;
    return 1;
}

/* CPython 3.11's PySSLSocket starts: PyObject_HEAD, PyObject *Socket, SSL *ssl. */
typedef struct {
    PyObject_HEAD
    PyObject *Socket;
    SSL *ssl;
} ssl_socket_head;

void *ktls_ssl_of(PyObject *sslsock)
{
    if (O.ready <= 0 || strcmp(Py_TYPE(sslsock)->tp_name, "_ssl._SSLSocket") != 0)
        return NULL;
    SSL *ssl = ((ssl_socket_head *)sslsock)->ssl;
    if (ssl == NULL || O.get_ex_data(ssl, 0) != (void *)sslsock)
        return NULL;
    return ssl;
}

static int unhex(const char *s, size_t n, uint8_t *out, size_t cap)
{
    if (n % 2 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = s[i + k];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0)
                return -1;
            v = v * 16 + d;
        }
        out[i / 2] = (uint8_t)v;
    }
    return (int)(n / 2);
}

/* OpenSSL calls this on the thread doing the handshake, the GIL released
 * (_ssl's do_handshake): it touches only the ktls_secrets of that SSL and
 * the previous callback, never a Python object of ours. */
static void on_keylog(const SSL *ssl, const char *line)
{
    keylog_cb prev = (keylog_cb)O.ctx_get_ex_data(O.get_ctx(ssl), O.ctx_idx);
    if (prev != NULL)
        prev(ssl, line);
    ktls_secrets *s = O.get_ex_data(ssl, O.ssl_idx);
    if (s == NULL)
        return;
    uint8_t *dst;
    uint8_t *len;
    size_t skip;
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) {
        dst = s->client, len = &s->client_len, skip = 24;
    } else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) {
        dst = s->server, len = &s->server_len, skip = 24;
    } else {
        return;
    }
    const char *rnd = line + skip, *sp = strchr(rnd, ' ');
    if (sp == NULL || sp - rnd != 64)
        return;
    int n = unhex(sp + 1, strlen(sp + 1), dst, sizeof s->client);
    *len = n > 0 ? (uint8_t)n : 0;
}

int ktls_attach(void *ssl, ktls_secrets *s)
{
    memset(s, 0, sizeof *s);
    SSL_CTX *ctx = O.get_ctx(ssl);
    keylog_cb cur = O.get_keylog(ctx);
    if (cur != on_keylog) {
        /* Someone (CPython's keylog_filename) set theirs since: keep it running. */
        if (!O.ctx_set_ex_data(ctx, O.ctx_idx, (void *)cur))
            return -1;
        O.set_keylog(ctx, on_keylog);
    }
    return O.set_ex_data(ssl, O.ssl_idx, s) ? 0 : -1;
}

void ktls_detach(void *ssl)
{
    if (ssl != NULL)
        O.set_ex_data(ssl, O.ssl_idx, NULL);
}

/* After the kernel took over sending, OpenSSL's own state for that
 * direction is stale: it must not write a close_notify of its own. */
void ktls_mark_sent_shutdown(void *ssl)
{
    if (ssl != NULL)
        O.set_shutdown(ssl, 1 /* SSL_SENT_SHUTDOWN */);
}

/* Counting records in a byte stream, chunk by chunk. */
void ktls_stream_feed(ktls_stream *st, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (st->left > 0) {
            size_t k = n < st->left ? n : st->left;
            st->left -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        st->hdr[st->hlen++] = *p++;
        n--;
        if (st->hlen < 5)
            continue;
        st->hlen = 0;
        st->left = (uint32_t)st->hdr[3] << 8 | st->hdr[4];
        st->records++;
        if (st->ccs)
            st->after_ccs++;
        if (st->hdr[0] == 20)
            st->ccs = 1;
    }
}

int ktls_stream_at_boundary(const ktls_stream *st)
{
    return st->hlen == 0 && st->left == 0;
}

/* Fill k for the handshake just completed. The sequence numbers:
 * - TLS 1.2: every record after a side's ChangeCipherSpec is under the
 *   keys (its Finished was record 0), so each way it is the count after
 *   the CCS.
 * - TLS 1.3: the application keys take over right after each side's
 *   Finished. A server's last handshake step (reading the client's
 *   Finished) writes only its session tickets, under the application keys:
 *   tx counts the records that step and anything since wrote. A client
 *   writes nothing under them before the app does. What we were given was
 *   fed one record at a time and consumed to the end by the handshake, so
 *   nothing of the peer's under its application keys has been read: rx 0.
 * Returns 0, or -1 when this handshake cannot go to the kernel (a version
 * other than 1.2/1.3, or the 1.3 secrets did not come). */
int ktls_params(void *ssl, const ktls_secrets *s, int server, const ktls_stream *tx, const ktls_stream *rx,
                uint64_t tx_records_before_last_step, gl_ktls *k)
{
    memset(k, 0, sizeof *k);
    int v = O.version(ssl);
    const SSL_CIPHER *c = O.current_cipher(ssl);
    if (c == NULL)
        return -1;
    k->version = (uint16_t)v;
    k->suite = O.cipher_id(c);
    k->server = server ? 1 : 0;
    k->rx = 1;
    if (v == 0x0303) {
        if (!tx->ccs || !rx->ccs)
            return -1;
        SSL_SESSION *sess = O.session(ssl);
        if (sess == NULL || O.master_key(sess, k->master, sizeof k->master) != sizeof k->master ||
            O.client_random(ssl, k->client_random, 32) != 32 ||
            O.server_random(ssl, k->server_random, 32) != 32)
            return -1;
        k->tx_seq = tx->after_ccs;
        k->rx_seq = rx->after_ccs;
        return 0;
    }
    if (v == 0x0304) {
        if (s->client_len == 0 || s->client_len != s->server_len)
            return -1;
        k->secret_len = s->client_len;
        memcpy(k->client_secret, s->client, s->client_len);
        memcpy(k->server_secret, s->server, s->server_len);
        k->tx_seq = server ? tx->records - tx_records_before_last_step : 0;
        k->rx_seq = 0;
        return 0;
    }
    return -1;
}
