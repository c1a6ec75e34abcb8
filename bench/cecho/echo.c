/*
 * A single-threaded epoll echo server: the ceiling that the Python loops are
 * measured against. It does what an event loop's echo does, minus the
 * interpreter: read what is there, write it back, and only when the kernel
 * refuses part of a write keep the rest and wait for EPOLLOUT.
 *
 *   echo --port N          listen on 127.0.0.1:N
 *   echo --unix PATH       listen on a Unix stream socket
 *
 * Level-triggered on purpose, like the loops it is compared with.
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

/* Bytes the kernel has not yet taken, per connection. */
struct pending {
	char *buf;
	size_t len;
};

static struct pending *pend;
static int npend;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static struct pending *pending_for(int fd)
{
	if (fd >= npend) {
		int n = npend ? npend : 64;
		while (n <= fd)
			n *= 2;
		pend = realloc(pend, n * sizeof *pend);
		if (!pend)
			die("realloc");
		memset(pend + npend, 0, (n - npend) * sizeof *pend);
		npend = n;
	}
	return &pend[fd];
}

static void drop(int ep, int fd)
{
	struct pending *p = pending_for(fd);
	free(p->buf);
	p->buf = NULL;
	p->len = 0;
	epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
	close(fd);
}

/* Try to send; keep what the kernel would not take. Returns -1 on error. */
static int send_or_keep(int ep, int fd, const char *data, size_t len)
{
	struct pending *p = pending_for(fd);
	while (len > 0) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
		if (n > 0) {
			data += n;
			len -= n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			char *nb = realloc(p->buf, p->len + len);
			if (!nb)
				die("realloc");
			memmove(nb + p->len, data, len);
			p->buf = nb;
			p->len += len;
			struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
			return epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
		} else {
			return -1;
		}
	}
	return 0;
}

static void on_writable(int ep, int fd)
{
	struct pending *p = pending_for(fd);
	size_t off = 0;
	while (off < p->len) {
		ssize_t n = send(fd, p->buf + off, p->len - off, MSG_NOSIGNAL);
		if (n > 0) {
			off += n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			memmove(p->buf, p->buf + off, p->len - off);
			p->len -= off;
			return;
		} else {
			drop(ep, fd);
			return;
		}
	}
	free(p->buf);
	p->buf = NULL;
	p->len = 0;
	/* Everything is out: go back to reading. While output is pending the
	 * connection is not read, which is the back-pressure an echo needs. */
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
	if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) < 0)
		drop(ep, fd);
}

static void on_readable(int ep, int fd, char *buf)
{
	ssize_t n = recv(fd, buf, READ_SIZE, 0);
	if (n > 0) {
		if (send_or_keep(ep, fd, buf, n) < 0)
			drop(ep, fd);
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		drop(ep, fd);
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
					struct epoll_event cev = {.events = EPOLLIN,
								  .data.fd = c};
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0)
						close(c);
				}
			} else if (events[i].events & EPOLLOUT) {
				on_writable(ep, fd);
			} else {
				on_readable(ep, fd, buf);
			}
		}
	}
}
