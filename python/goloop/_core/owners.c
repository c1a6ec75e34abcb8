/* The owner table: what a completion's token names.
 *
 * Every transport, watcher and listener takes a slot when it is made and
 * gives it back when it is freed. Its token is the slot's index and the
 * slot's generation:
 *
 *     63            32 31            3 2   0
 *     [  generation   ][    index      ][tag]
 *
 * Freeing a slot bumps its generation, so a completion that arrives after
 * its owner is gone (a chunk that was already in flight when a dropped
 * transport was collected, an accept for a freed listener) finds no owner
 * instead of a new object in the same memory, and is disposed of by
 * owners_stale(): its receive buffer goes back to Go, an accepted fd is
 * closed. The slot holds a borrowed reference; what keeps an owner alive
 * while Go still needs it is the owner's own business (a transport pins
 * itself, docs/architecture.md). Slot 0 is never handed out, so token 0 and
 * the bare tags name nobody. */
#include "core.h"

#define IDX_BITS 29u
#define IDX_MASK ((1u << IDX_BITS) - 1)

static uint32_t idx_of(uint64_t token) { return (uint32_t)(token >> 3) & IDX_MASK; }

int owners_bind(LoopCore *lp, PyObject *obj, unsigned tag, uint64_t *token)
{
    uint32_t i;
    if (lp->free_slot != 0) {
        i = lp->free_slot;
        lp->free_slot = lp->slots[i].next;
    } else {
        if (lp->nslots == lp->capslots) {
            uint32_t ncap = lp->capslots ? lp->capslots * 2 : 64;
            if (ncap > IDX_MASK) {
                PyErr_SetString(PyExc_OverflowError, "goloop: too many live handles");
                return -1;
            }
            owner_slot *n = PyMem_Realloc(lp->slots, sizeof(owner_slot) * ncap);
            if (n == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            memset(n + lp->capslots, 0, sizeof(owner_slot) * (ncap - lp->capslots));
            lp->slots = n;
            lp->capslots = ncap;
            if (lp->nslots == 0)
                lp->nslots = 1;   /* slot 0 names nobody */
        }
        i = lp->nslots++;
    }
    owner_slot *s = &lp->slots[i];
    s->obj = obj;
    s->tag = tag;
    s->next = 0;
    *token = ((uint64_t)s->gen << 32) | ((uint64_t)i << 3) | tag;
    return 0;
}

void owners_release(LoopCore *lp, uint64_t token)
{
    uint32_t i = idx_of(token);
    if (i == 0 || i >= lp->nslots)
        return;
    owner_slot *s = &lp->slots[i];
    if (s->obj == NULL || s->gen != (uint32_t)(token >> 32))
        return;
    s->obj = NULL;
    s->gen++;
    s->next = lp->free_slot;
    lp->free_slot = i;
}

PyObject *owners_get(LoopCore *lp, uint64_t token)
{
    uint32_t i = idx_of(token);
    if (i == 0 || i >= lp->nslots)
        return NULL;
    owner_slot *s = &lp->slots[i];
    if (s->obj == NULL || s->gen != (uint32_t)(token >> 32) || s->tag != (token & TAG_MASK))
        return NULL;
    return s->obj;
}

/* A completion nobody owns any more: give back what it carries. */
void owners_stale(LoopCore *lp, gl_comp *c)
{
    if ((c->kind == GL_EV_RECV && c->res > 0) || (c->kind == GL_EV_DGRAM && c->res >= 0))
        loop_submit(lp, GL_OP_BUF_RETURN, 0, 0, NULL, 0, c->buf);
    else if (c->kind == GL_EV_ACCEPT && c->res >= 0)
        loop_close_orphan(lp, c->res);
}

/* In a forked child (loop_after_fork_child), for an owner that pins itself
 * while Go works for it: Go's answers will never come, so the pin goes; its
 * reference moves to `into`, which the caller drops once every loop is
 * done. fd_gone: Go had closed the fd already (an undispatched EvClosed). */
int owners_unpin_forked(PyObject *obj, char *go_open, char *pinned, int fd_gone, PyObject *into)
{
    if (fd_gone)
        *go_open = 0;
    if (!*pinned)
        return 0;
    if (PyList_Append(into, obj) < 0)
        return -1;
    *pinned = 0;
    Py_DECREF(obj);
    return 0;
}
