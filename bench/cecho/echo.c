/*
 * A single-threaded epoll echo server: the ceiling that the Python loops are
 * measured against. It does what an event loop's echo does, minus the
 * interpreter: read what is there, write it back, and only when the kernel
 * refuses part of a write keep the rest and wait for EPOLLOUT.
 *
 *   echo --port N          listen on 127.0.0.1:N
 *   echo --unix PATH       listen on a Unix stream socket
 *
 * Edge-triggered, with each connection registered once: the least epoll
 * work per request, which is what a ceiling should have.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)

/* Per connection: bytes the kernel has not yet taken, and whether the socket
 * may still hold unread data (edge-triggered epoll reports arrivals once). */
struct conn {
	char *buf;
	size_t len;
	int readable;
};

static struct conn *conns;
static int nconns;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static struct conn *conn_for(int fd)
{
	if (fd >= nconns) {
		int n = nconns ? nconns : 64;
		while (n <= fd)
			n *= 2;
		conns = realloc(conns, n * sizeof *conns);
		if (!conns)
			die("realloc");
		memset(conns + nconns, 0, (n - nconns) * sizeof *conns);
		nconns = n;
	}
	return &conns[fd];
}

static void drop(int fd)
{
	struct conn *c = conn_for(fd);
	free(c->buf);
	memset(c, 0, sizeof *c);
	close(fd); /* also removes it from the epoll set */
}

/* Send from data, then keep whatever the kernel would not take. */
static int send_or_keep(struct conn *c, int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
		if (n > 0) {
			data += n;
			len -= n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			char *nb = malloc(len);
			if (!nb)
				die("malloc");
			memcpy(nb, data, len);
			c->buf = nb;
			c->len = len;
			return 0;
		} else {
			return -1;
		}
	}
	return 0;
}

/*
 * Move data until the socket has nothing more to read or the kernel takes no
 * more output. While output is pending the connection is not read: that is
 * the back-pressure an echo needs, and the EPOLLOUT edge resumes it.
 */
static void pump(int fd, char *buf)
{
	struct conn *c = conn_for(fd);
	if (c->len) {
		char *old = c->buf;
		size_t len = c->len;
		c->buf = NULL;
		c->len = 0;
		int r = send_or_keep(c, fd, old, len);
		free(old);
		if (r < 0) {
			drop(fd);
			return;
		}
	}
	while (c->readable && !c->len) {
		ssize_t n = recv(fd, buf, READ_SIZE, 0);
		if (n > 0) {
			/* A short read emptied the socket; the next arrival is a
			 * new edge, so there is no need to recv until EAGAIN. */
			if (n < READ_SIZE)
				c->readable = 0;
			if (send_or_keep(c, fd, buf, n) < 0) {
				drop(fd);
				return;
			}
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			c->readable = 0;
		} else {
			drop(fd);
			return;
		}
	}
}

static int listen_on(const char *port, const char *path)
{
	int s;
	if (path) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		if (strlen(path) >= sizeof sa.sun_path) {
			fprintf(stderr, "unix path too long\n");
			exit(2);
		}
		strcpy(sa.sun_path, path);
		unlink(path);
		s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0)
			die("bind unix");
	} else {
		struct sockaddr_in sa = {.sin_family = AF_INET};
		sa.sin_port = htons(atoi(port));
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int one = 1;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0)
			die("bind tcp");
	}
	if (listen(s, 1024) < 0)
		die("listen");
	return s;
}

int main(int argc, char **argv)
{
	const char *port = NULL, *path = NULL;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--port"))
			port = argv[i + 1];
		else if (!strcmp(argv[i], "--unix"))
			path = argv[i + 1];
	}
	if (!port == !path) {
		fprintf(stderr, "usage: %s --port N | --unix PATH\n", argv[0]);
		return 2;
	}

	int ls = listen_on(port, path);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0)
		die("epoll_ctl");

	char *buf = malloc(READ_SIZE);
	struct epoll_event events[256];
	if (!buf)
		die("malloc");
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == ls) {
				int c;
				while ((c = accept4(ls, NULL, NULL,
						    SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					if (!path) {
						int one = 1;
						setsockopt(c, IPPROTO_TCP, TCP_NODELAY,
							   &one, sizeof one);
					}
					/* Registered once, for both directions:
					 * no epoll_ctl per partial write. */
					struct epoll_event cev = {
						.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
						.data.fd = c};
					conn_for(c);
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0)
						close(c);
				}
			} else {
				if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
					conn_for(fd)->readable = 1;
				pump(fd, buf);
			}
		}
	}
}
