/* A UDP proxy that holds every DNS question for a fixed time before passing
 * it on, so that a resolver on loopback looks as far away as one on a
 * network (this kernel has no netem). Answers go back at once.
 *
 *   delayproxy LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT DELAY_MS
 *
 * It prints "ready" when it listens. One thread, epoll, and datagrams moved
 * in batches with recvmmsg/sendmmsg: the proxy shares a CPU with the DNS
 * server in bench/dns_bench.py, and a proxy costing more per datagram than
 * the server limited the benchmark instead of the resolvers.
 *
 * Questions get a proxy-wide id (the client's id and address are kept in a
 * table indexed by it) so that answers from the one upstream socket find
 * their client. Every question waits the same time, so they leave in the
 * order they came: a FIFO ring and one timerfd armed for the oldest. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define SLOT 512            /* a question; longer ones are dropped */
#define RING 16384          /* questions held at once */
#define ANSWER 65536

struct origin {
    struct sockaddr_in addr;
    uint16_t id;
    int used;
};

static struct origin table[65536];
static uint16_t next_id;

static unsigned char ring_data[RING][SLOT];
static int ring_len[RING];
static uint64_t ring_due[RING];
static unsigned ring_head, ring_count;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon - s >= (long)sizeof host)
        return -1;
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static void big_buffers(int fd)
{
    int size = 8 << 20;
    /* Force past net.core.rmem_max (we run as root): bursts of a hundred
     * lookups must not overflow them. */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
}

static void arm(int tfd)
{
    struct itimerspec its = {0};
    if (ring_count > 0) {
        uint64_t due = ring_due[ring_head];
        its.it_value.tv_sec = (time_t)(due / 1000000000u);
        its.it_value.tv_nsec = (long)(due % 1000000000u);
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Questions from clients: renumber, queue. */
static void from_clients(int front, uint64_t delay, int tfd)
{
    static unsigned char bufs[BATCH][SLOT];
    static struct sockaddr_in from[BATCH];
    struct mmsghdr hs[BATCH];
    struct iovec iov[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){bufs[i], SLOT};
            hs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                            .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(front, hs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        int was_empty = ring_count == 0;
        uint64_t due = now_ns() + delay;
        for (int i = 0; i < n; i++) {
            int len = (int)hs[i].msg_len;
            if (len < 12 || (hs[i].msg_hdr.msg_flags & MSG_TRUNC) || ring_count == RING)
                continue;
            uint16_t id = ++next_id;
            table[id].addr = from[i];
            table[id].id = (uint16_t)(bufs[i][0] << 8 | bufs[i][1]);
            table[id].used = 1;
            unsigned slot = (ring_head + ring_count) % RING;
            memcpy(ring_data[slot], bufs[i], len);
            ring_data[slot][0] = (unsigned char)(id >> 8);
            ring_data[slot][1] = (unsigned char)id;
            ring_len[slot] = len;
            ring_due[slot] = due;
            ring_count++;
        }
        if (was_empty)
            arm(tfd);
        if (n < BATCH)
            return;
    }
}

/* Questions whose time has come: on to the server. */
static void release_due(int back, int tfd)
{
    uint64_t expirations;
    if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        return;
    uint64_t now = now_ns();
    struct mmsghdr hs[BATCH];
    struct iovec iov[BATCH];
    while (ring_count > 0 && ring_due[ring_head] <= now) {
        int n = 0;
        unsigned start = ring_head;
        while (n < BATCH && n < (int)ring_count && ring_due[(start + n) % RING] <= now) {
            unsigned slot = (start + n) % RING;
            iov[n] = (struct iovec){ring_data[slot], (size_t)ring_len[slot]};
            hs[n].msg_hdr = (struct msghdr){.msg_iov = &iov[n], .msg_iovlen = 1};
            n++;
        }
        int sent = sendmmsg(back, hs, n, 0);
        if (sent <= 0)
            sent = n;  /* the server is gone or full: drop them, as a network would */
        ring_head = (ring_head + sent) % RING;
        ring_count -= sent;
    }
    arm(tfd);
}

/* Answers from the server: back to whoever asked. */
static void from_server(int back, int front)
{
    static unsigned char bufs[BATCH][ANSWER / 16];
    struct mmsghdr hs[BATCH], out[BATCH];
    struct iovec iov[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
            hs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(back, hs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (hs[i].msg_len < 12 || (hs[i].msg_hdr.msg_flags & MSG_TRUNC))
                continue;
            uint16_t id = (uint16_t)(bufs[i][0] << 8 | bufs[i][1]);
            struct origin *o = &table[id];
            if (!o->used)
                continue;
            bufs[i][0] = (unsigned char)(o->id >> 8);
            bufs[i][1] = (unsigned char)o->id;
            iov[i].iov_len = hs[i].msg_len;
            out[k].msg_hdr = (struct msghdr){.msg_name = &o->addr, .msg_namelen = sizeof o->addr,
                                             .msg_iov = &iov[i], .msg_iovlen = 1};
            k++;
        }
        for (int done = 0; done < k;) {
            int sent = sendmmsg(front, out + done, k - done, 0);
            if (sent <= 0)
                break;
            done += sent;
        }
        if (n < BATCH)
            return;
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in listen_sa, up_sa;
    if (argc != 4 || parse_addr(argv[1], &listen_sa) < 0 || parse_addr(argv[2], &up_sa) < 0) {
        fprintf(stderr, "usage: delayproxy LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT DELAY_MS\n");
        return 2;
    }
    uint64_t delay = (uint64_t)(atof(argv[3]) * 1e6);
    int front = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int back = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int ep = epoll_create1(0);
    if (front < 0 || back < 0 || tfd < 0 || ep < 0 ||
        bind(front, (struct sockaddr *)&listen_sa, sizeof listen_sa) < 0 ||
        connect(back, (struct sockaddr *)&up_sa, sizeof up_sa) < 0) {
        perror("delayproxy");
        return 1;
    }
    big_buffers(front);
    big_buffers(back);
    int fds[3] = {front, back, tfd};
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct epoll_event evs[3];
        int n = epoll_wait(ep, evs, 3, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == front)
                from_clients(front, delay, tfd);
            else if (fd == back)
                from_server(back, front);
            else
                release_due(back, tfd);
        }
    }
}
