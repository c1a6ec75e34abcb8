/* Receive buffers backed by bytes objects: large chunks reach the program
 * without a copy.
 *
 * Go receives into pool buffers (64 KiB) and C copies each chunk out into
 * the bytes object data_received() gets, then gives the buffer back. For a
 * large chunk that copy is a tenth of a 100 KiB echo's server time, and
 * asyncio, which receives straight into a new bytes object, does without
 * it. So a stream buffer can be backed by the memory of a bytes object C
 * made for it (OpBufReturn with Ptr, goloop/record.go): when a large chunk
 * lands in such a buffer, that very object, shrunk to the chunk, is what
 * the program gets, and the buffer goes back backed by a fresh one.
 *
 * Ownership: lp->lent[bid] is the bytes object whose memory backs buffer
 * bid. Only this table refers to it while it is lent: no Python code sees
 * it, and the kernel or Go may write into it at any time until the loop is
 * closed (lend_release, after go_close) or the object is handed over here,
 * which happens only for a buffer C holds (its EvRecv came, it was not
 * given back yet). Small chunks are still copied out: a fresh 64 KiB
 * object per 1 KiB message would cost more than the copy. */
#include "core.h"

/* Chunks at least this long are handed over rather than copied. */
#define LEND_MIN (16 * 1024)
#define LEND_MAX_IDS 32768u   /* goloop's pool has at most this many buffers */

/* Whether c's chunk would be handed over (lend_take): large, and in a
 * stream pool buffer. */
int lend_wants(const gl_comp *c)
{
    return c->res >= LEND_MIN && c->aux != 0 && (uint32_t)c->res <= c->aux && c->buf < LEND_MAX_IDS;
}

/* The chunk of c as a bytes object of its own, without a copy when c's
 * buffer is lent memory; NULL without an exception when this chunk is to be
 * copied as usual (small, or not a stream pool buffer: Aux carries the
 * buffer size only for those), NULL with one on failure. When it answers
 * an object, the buffer has gone back already (backed by fresh memory):
 * the caller must not give it back again. */
PyObject *lend_take(LoopCore *lp, const gl_comp *c)
{
    uint32_t bid = c->buf, size = c->aux;
    if (!lend_wants(c))
        return NULL;
    if (bid >= lp->nlent) {
        uint32_t n = lp->nlent ? lp->nlent : 64;
        while (n <= bid)
            n *= 2;
        PyObject **t = PyMem_Realloc(lp->lent, n * sizeof *t);
        if (t == NULL)
            return NULL;   /* (copied as usual) */
        memset(t + lp->nlent, 0, (n - lp->nlent) * sizeof *t);
        lp->lent = t;
        lp->nlent = n;
    }
    /* The buffer's next memory first: without it, nothing changes hands. */
    PyObject *fresh = PyBytes_FromStringAndSize(NULL, size);
    if (fresh == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *have = lp->lent[bid], *data;
    if (have != NULL && (uintptr_t)PyBytes_AS_STRING(have) == c->ptr) {
        /* The chunk is in have's memory: have becomes the program's. A
         * shrinking resize keeps the block where it is (no copy). */
        data = have;
        if (_PyBytes_Resize(&data, c->res) < 0)
            data = NULL;   /* (have was freed: the chunk is lost) */
    } else {
        /* The pool's own memory (or, never, someone else's): copied this
         * once, and from now on the buffer is backed by fresh objects. */
        data = PyBytes_FromStringAndSize((const char *)(uintptr_t)c->ptr, c->res);
        Py_XDECREF(have);
    }
    lp->lent[bid] = fresh;
    if (loop_submit(lp, GL_OP_BUF_RETURN, 0, 0, PyBytes_AS_STRING(fresh), size, bid) < 0) {
        /* Out of memory for the submission: the buffer stays with C, lost
         * to the pool (as a plain give-back that fails is). Go never uses
         * it again, so the memory the chunk is in is the program's. */
        PyErr_Clear();
    }
    return data;
}

/* After go_close: no kernel or Go holds the lent memory any more. */
void lend_release(LoopCore *lp)
{
    for (uint32_t i = 0; i < lp->nlent; i++)
        Py_CLEAR(lp->lent[i]);
    PyMem_Free(lp->lent);
    lp->lent = NULL;
    lp->nlent = 0;
}
