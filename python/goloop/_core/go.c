/* The one door into Go. Every call from C into libgoloop.so goes through a
 * function here, and each checks the same two things first:
 *
 *   - this process is the one that started the Go runtime: a child forked
 *     after that has no Go threads, and under io_uring it shares the
 *     parent's ring memory, so a single submission from the child would
 *     corrupt the parent's loop;
 *   - the loop still has a Go half (lp->h != 0): after close(), or in a
 *     forked child, it has none.
 *
 * Nothing else in the extension names GL: grep for it to check. */
#include "core.h"
#include <errno.h>
#include <unistd.h>

/* -1 with RuntimeError set when Go cannot be entered for lp. */
int go_enter(LoopCore *lp)
{
    if (gl_check_fork() < 0)
        return -1;
    if (lp->h == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

/* The quiet form, for paths that must not raise (wake-ups, teardown). */
int go_usable(LoopCore *lp)
{
    return lp->h != 0 && !gl_forked();
}

int64_t go_new(const char *backend, char *err, int errlen)
{
    if (gl_check_fork() < 0)
        return 0;
    return GL.new_(backend, err, errlen);
}

int go_poll(LoopCore *lp, gl_sub *subs, int nsubs, gl_comp *out, int nout, int64_t timeout_ns)
{
    if (go_enter(lp) < 0)
        return -1;
    int64_t h = lp->h;
    int n;
    if (timeout_ns == 0 || timeout_ns == GL_APPLY_ONLY) {
        /* Nothing to wait for: keep the GIL, the call returns at once. */
        n = GL.poll(h, subs, nsubs, out, nout, timeout_ns);
    } else {
        lp->waiting = 1;
        Py_BEGIN_ALLOW_THREADS
        n = GL.poll(h, subs, nsubs, out, nout, timeout_ns);
        Py_END_ALLOW_THREADS
        lp->waiting = 0;
    }
    if (n < 0) {
        errno = -n;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* Before anything else runs (a callback, a signal handler, dispatch):
     * sock ops' results reach their futures right after the syscalls that
     * produced them, so a cancel can never come between (sockops.c). */
    if (n > 0)
        sockops_settle(lp, out, n);
    return n;
}

void go_wake(LoopCore *lp)
{
    if (go_usable(lp))
        GL.wake(lp->h);
}

int go_wake_fd(LoopCore *lp)
{
    return go_usable(lp) ? GL.wake_fd(lp->h) : -1;
}

/* Another thread's wake-up (call_soon_threadsafe), under the GIL: the
 * write goloop_wake would make, made here. A call into Go from a thread
 * that is not Go's costs the runtime a P hand-off and its own thread
 * wake-ups (four to five futex calls and a sysmon wake-up per call, a
 * third of run_in_executor's round trip), where this is one write(2) to
 * an eventfd, as asyncio's own loop writes its self-pipe from the calling
 * thread. The GIL orders it before go_close, the only closer of the fd
 * (lp->h is 0 from then on). It is the one system call C makes, and it
 * moves no data. */
void go_wake_from_thread(LoopCore *lp)
{
    if (!go_usable(lp) || lp->wake_fd < 0) {
        go_wake(lp);
        return;
    }
    uint64_t one = 1;
    ssize_t r;
    do
        r = write(lp->wake_fd, &one, sizeof one);
    while (r < 0 && errno == EINTR);
    /* EAGAIN: the counter is full, a wake-up is pending anyway. */
}

void go_close(LoopCore *lp)
{
    if (go_usable(lp))
        GL.close(lp->h);
    lp->h = 0;
}

PyObject *go_backend_name(LoopCore *lp)
{
    char buf[32];
    if (go_enter(lp) < 0)
        return NULL;
    if (GL.backend(lp->h, buf, sizeof buf) < 0)
        return PyErr_Format(PyExc_RuntimeError, "goloop: no backend name");
    return PyUnicode_FromString(buf);
}

int go_call(LoopCore *lp, uint64_t token, const char *method, const char *req, int reqlen,
            char *out, int outcap, int *outlen)
{
    if (go_enter(lp) < 0)
        return -3;
    return GL.call(lp->h, token, method, req, reqlen, out, outcap, outlen);
}

int go_result(LoopCore *lp, uint64_t token, char *out, int cap)
{
    if (!go_usable(lp))
        return -1;
    return GL.result(lp->h, token, out, cap);
}

void go_cancel(LoopCore *lp, uint64_t token)
{
    if (go_usable(lp))
        GL.cancel(lp->h, token);
}
