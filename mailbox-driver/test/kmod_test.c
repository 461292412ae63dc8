// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * kmod_test.c - tests of /dev/rdmasock through its raw user API (ioctl, read,
 * poll), run inside the test VM by test/init. Needs root (it switches uids to test
 * the uid policy and RLIMIT_MEMLOCK) and the module loaded.
 *
 * Prints "ok N - name" / "not ok N - name" per case (TAP style) and, last,
 * "C-TESTS: P passed, F failed". Exit status: 0 if nothing failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../include/uapi/rdmasock.h"

static int passed, failed, case_failed, case_no;

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		printf("#   %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
		printf(__VA_ARGS__);					\
		printf(" (errno %d %s)\n", errno, strerror(errno));	\
		case_failed = 1;					\
	}								\
} while (0)

#define EXPECT_ERR(expr, err) do {					\
	errno = 0;							\
	long __r = (long)(expr);					\
	CHECK(__r == -1 && errno == (err), "%s returned %ld, wanted errno %d", #expr, __r, err); \
} while (0)

#define EXPECT_OK(expr) do {						\
	errno = 0;							\
	long __r = (long)(expr);					\
	CHECK(__r >= 0, "%s returned %ld", #expr, __r);		\
} while (0)

static void run_case(const char *name, void (*fn)(void))
{
	case_failed = 0;
	fflush(stdout);
	fn();
	case_no++;
	if (case_failed) {
		failed++;
		printf("not ok %d - %s\n", case_no, name);
	} else {
		passed++;
		printf("ok %d - %s\n", case_no, name);
	}
	fflush(stdout);
}

/* ---- helpers ---- */

static int ep_open(void)
{
	int fd = open("/dev/rdmasock", O_RDWR | O_CLOEXEC);

	CHECK(fd >= 0, "open /dev/rdmasock");
	return fd;
}

static struct rdmasock_info ep_info(int ep)
{
	struct rdmasock_info info;

	memset(&info, 0xff, sizeof(info));
	CHECK(ioctl(ep, RDMASOCK_IOC_INFO, &info) == 0, "INFO");
	return info;
}

static int ep_offer(int ep, int sock)
{
	struct rdmasock_offer o = { .sock_fd = sock };

	return ioctl(ep, RDMASOCK_IOC_OFFER, &o);
}

static int ep_accept(int ep, int sock, uint32_t flags, uint64_t peer_ino,
		     struct rdmasock_accept *out)
{
	struct rdmasock_accept a = { .sock_fd = sock, .flags = flags, .peer_ino = peer_ino };
	int r = ioctl(ep, RDMASOCK_IOC_ACCEPT, &a);

	if (out)
		*out = a;
	return r;
}

static int ep_reg(int ep, void *addr, uint64_t len)
{
	struct rdmasock_reg r = { .addr = (uintptr_t)addr, .len = len };

	if (ioctl(ep, RDMASOCK_IOC_REG, &r))
		return -1;
	return r.id;
}

static int ep_write(int ep, const void *src, uint64_t len, uint64_t off, uint64_t imm,
		    uint32_t region, uint32_t flags)
{
	struct rdmasock_write w = {
		.addr = (uintptr_t)src, .len = len, .offset = off, .imm = imm,
		.region = region, .flags = flags,
	};

	return ioctl(ep, RDMASOCK_IOC_WRITE, &w);
}

static int ep_notify(int ep, uint32_t tag, uint64_t imm, uint32_t flags)
{
	struct rdmasock_notify n = { .imm = imm, .tag = tag, .flags = flags };

	return ioctl(ep, RDMASOCK_IOC_NOTIFY, &n);
}

static int ep_recv(int ep, struct rdmasock_msg *msgs, uint32_t max, struct rdmasock_recv *out)
{
	struct rdmasock_recv r = { .msgs = (uintptr_t)msgs, .max = max };
	int ret = ioctl(ep, RDMASOCK_IOC_RECV, &r);

	if (out)
		*out = r;
	return ret ? -1 : (int)r.count;
}

static short poll1(int fd, short events, int ms)
{
	struct pollfd p = { .fd = fd, .events = events };

	if (poll(&p, 1, ms) < 0)
		return -1;
	return p.revents;
}

static ssize_t read_nb(int fd, void *buf, size_t len)
{
	int fl = fcntl(fd, F_GETFL);
	ssize_t n;

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	n = read(fd, buf, len);
	fcntl(fd, F_SETFL, fl);
	return n;
}

/* A TCP listener on family's loopback; returns its fd and port. */
static int listener(int family, uint16_t *port)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	struct sockaddr_storage ss = { 0 };
	socklen_t sl;

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sl = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_any;	/* dual stack */
		sl = sizeof(*a);
	}
	if (bind(fd, (struct sockaddr *)&ss, sl) || listen(fd, 16)) {
		close(fd);
		return -1;
	}
	sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					: ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

static int connect_to(int family, const char *addr, uint16_t port)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_storage ss = { 0 };
	socklen_t sl;

	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		inet_pton(AF_INET, addr, &a->sin_addr);
		sl = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		inet_pton(AF_INET6, addr, &a->sin6_addr);
		sl = sizeof(*a);
	}
	if (connect(fd, (struct sockaddr *)&ss, sl)) {
		close(fd);
		return -1;
	}
	return fd;
}

static uint64_t sock_ino(int fd)
{
	struct stat st;

	fstat(fd, &st);
	return st.st_ino;
}

static long param(const char *name)
{
	char path[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/rdmasock/parameters/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static void set_param(const char *name, const char *val)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/rdmasock/parameters/%s", name);
	f = fopen(path, "w");
	CHECK(f != NULL, "open %s", path);
	if (f) {
		fputs(val, f);
		fclose(f);
	}
}

/* A connected pair: TCP client c, accepted s; endpoints ec (client), es (server). */
struct pair {
	int lfd, c, s, ec, es;
};

static int make_pair(struct pair *p, int family, const char *addr)
{
	uint16_t port;
	struct rdmasock_msg m;

	memset(p, -1, sizeof(*p));
	p->lfd = listener(family == AF_INET6 && addr && strchr(addr, '.') ? AF_INET6 : family,
			  &port);
	CHECK(p->lfd >= 0, "listener");
	p->c = connect_to(strchr(addr, ':') ? AF_INET6 : AF_INET, addr, port);
	CHECK(p->c >= 0, "connect");
	p->s = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
	CHECK(p->s >= 0, "accept");
	p->ec = ep_open();
	p->es = ep_open();
	CHECK(ep_offer(p->ec, p->c) == 0, "offer");
	CHECK(ep_accept(p->es, p->s, 0, 0, NULL) == 0, "accept ioctl");
	/* the client's ACCEPTED message */
	CHECK(read(p->ec, &m, sizeof(m)) == sizeof(m) && m.type == RDMASOCK_MSG_ACCEPTED,
	      "ACCEPTED message");
	return case_failed ? -1 : 0;
}

static void close_pair(struct pair *p)
{
	int *fds[] = { &p->lfd, &p->c, &p->s, &p->ec, &p->es };

	for (unsigned int i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

/* ---- cases ---- */

static void t_open_version_info(void)
{
	int ep = ep_open();
	uint32_t v = 0;
	struct rdmasock_info info;
	int n = -1;

	CHECK(ioctl(ep, RDMASOCK_IOC_VERSION, &v) == 0 && v == RDMASOCK_ABI_VERSION,
	      "version %u", v);
	info = ep_info(ep);
	CHECK(info.state == RDMASOCK_STATE_IDLE, "state %u", info.state);
	CHECK(info.mbox_depth == 256, "depth %u", info.mbox_depth);
	CHECK(info.peer_uid == ~0U && info.peer_pid == 0, "no peer");
	CHECK(ioctl(ep, FIONREAD, &n) == 0 && n == 0, "FIONREAD %d", n);
	CHECK(poll1(ep, POLLIN | POLLOUT, 0) == 0, "poll idle");
	CHECK(ioctl(ep, _IO(RDMASOCK_IOC_MAGIC, 99)) == -1 && errno == ENOTTY, "bad ioctl");
	close(ep);
}

static void t_mailbox_empty_and_unconnected(void)
{
	int ep = ep_open();
	struct rdmasock_msg m;
	char c;

	EXPECT_ERR(read_nb(ep, &m, sizeof(m)), EAGAIN);
	EXPECT_ERR(read(ep, &c, 1), EINVAL);
	EXPECT_ERR(ep_notify(ep, 1, 2, 0), ENOTCONN);
	EXPECT_ERR(ep_write(ep, "x", 1, 0, 0, 0, 0), ENOTCONN);
	EXPECT_ERR(ep_write(ep, "x", 1, 0, 0, RDMASOCK_MAX_REGIONS, 0), EINVAL);
	CHECK(ioctl(ep, RDMASOCK_IOC_WITHDRAW) == 0, "withdraw idle");
	close(ep);
}

static void t_offer_checks_the_socket(void)
{
	int ep = ep_open(), udp = socket(AF_INET, SOCK_DGRAM, 0), unix_s;
	int tcp = socket(AF_INET, SOCK_STREAM, 0), pfd[2];
	struct rdmasock_offer o = { .sock_fd = tcp, .flags = 1 };

	unix_s = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(pipe(pfd) == 0, "pipe");
	EXPECT_ERR(ep_offer(ep, 12345), EBADF);
	EXPECT_ERR(ep_offer(ep, pfd[0]), ENOTSOCK);
	EXPECT_ERR(ep_offer(ep, udp), EPROTONOSUPPORT);
	EXPECT_ERR(ep_offer(ep, unix_s), EPROTONOSUPPORT);
	EXPECT_ERR(ioctl(ep, RDMASOCK_IOC_OFFER, &o), EINVAL);
	/* an unconnected TCP socket may be offered (addresses are read at accept) */
	CHECK(ep_offer(ep, tcp) == 0, "offer unconnected tcp");
	CHECK(ep_info(ep).state == RDMASOCK_STATE_OFFERED, "offered");
	EXPECT_ERR(ep_offer(ep, tcp), EBUSY);
	CHECK(ioctl(ep, RDMASOCK_IOC_WITHDRAW) == 0, "withdraw");
	CHECK(ep_info(ep).state == RDMASOCK_STATE_IDLE, "idle again");
	close(ep);
	close(udp);
	close(unix_s);
	close(tcp);
	close(pfd[0]);
	close(pfd[1]);
}

static void t_rendezvous_v4(void)
{
	struct pair p;
	struct rdmasock_info ic, is;
	struct rdmasock_accept a;

	if (make_pair(&p, AF_INET, "127.0.0.1"))
		goto out;
	ic = ep_info(p.ec);
	is = ep_info(p.es);
	CHECK(ic.state == RDMASOCK_STATE_CONNECTED && is.state == RDMASOCK_STATE_CONNECTED,
	      "states %u %u", ic.state, is.state);
	CHECK(ic.peer_uid == getuid() && is.peer_uid == getuid(), "uids");
	CHECK(ic.peer_pid == (uint32_t)getpid() && is.peer_pid == (uint32_t)getpid(), "pids");
	/* accepting again: the offer is gone; a busy endpoint cannot accept */
	EXPECT_ERR(ep_accept(p.es, p.s, 0, 0, NULL), EBUSY);
	{
		int e2 = ep_open();

		EXPECT_ERR(ep_accept(e2, p.s, 0, 0, &a), ENOENT);
		/* the listener is not a connection; nor is an unconnected socket */
		EXPECT_ERR(ep_accept(e2, p.lfd, 0, 0, NULL), ENOTCONN);
		close(e2);
	}
	EXPECT_ERR(ep_offer(p.ec, p.c), EBUSY);
	CHECK(ioctl(p.ec, RDMASOCK_IOC_WITHDRAW) == -1 && errno == EISCONN, "withdraw too late");
	CHECK((poll1(p.ec, POLLOUT, 0) & POLLOUT) != 0, "POLLOUT when connected");
out:
	close_pair(&p);
}

static void t_rendezvous_matches_only_the_right_connection(void)
{
	uint16_t port;
	int lfd = listener(AF_INET, &port);
	int c1 = connect_to(AF_INET, "127.0.0.1", port), s1 = accept(lfd, NULL, NULL);
	int c2 = connect_to(AF_INET, "127.0.0.1", port), s2 = accept(lfd, NULL, NULL);
	int e1 = ep_open(), e2 = ep_open(), es = ep_open();
	struct rdmasock_accept a;

	CHECK(ep_offer(e1, c1) == 0 && ep_offer(e2, c2) == 0, "offers");
	/* the server end of connection 2 takes offer 2, whatever the list order */
	CHECK(ep_accept(es, s2, 0, sock_ino(c2), &a) == 0, "accept 2");
	CHECK(ep_info(e2).state == RDMASOCK_STATE_CONNECTED, "e2 connected");
	CHECK(ep_info(e1).state == RDMASOCK_STATE_OFFERED, "e1 still offered");
	close(es);
	es = ep_open();
	/* a wrong inode never matches */
	EXPECT_ERR(ep_accept(es, s1, 0, sock_ino(c2), NULL), ENOENT);
	/* naming the client's own socket does not match its own offer */
	EXPECT_ERR(ep_accept(es, c1, 0, 0, NULL), ENOENT);
	CHECK(ep_accept(es, s1, 0, sock_ino(c1), &a) == 0, "accept 1 with inode");
	CHECK(ep_info(e1).state == RDMASOCK_STATE_CONNECTED, "e1 connected");
	close(e1);
	close(e2);
	close(es);
	close(c1);
	close(c2);
	close(s1);
	close(s2);
	close(lfd);
}

static void t_rendezvous_v6_and_dual_stack(void)
{
	struct pair p;

	if (make_pair(&p, AF_INET6, "::1") == 0)
		CHECK(ep_info(p.es).state == RDMASOCK_STATE_CONNECTED, "v6 connected");
	close_pair(&p);
	/* an IPv4 client of a dual-stack IPv6 listener (v4-mapped on the server side) */
	if (make_pair(&p, AF_INET6, "127.0.0.1") == 0)
		CHECK(ep_info(p.es).state == RDMASOCK_STATE_CONNECTED, "mapped connected");
	close_pair(&p);
}

static void t_offer_before_connect(void)
{
	uint16_t port;
	int lfd = listener(AF_INET, &port);
	int c = socket(AF_INET, SOCK_STREAM, 0), s, ec = ep_open(), es = ep_open();
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	CHECK(ep_offer(ec, c) == 0, "offer before connect");
	CHECK(connect(c, (struct sockaddr *)&a, sizeof(a)) == 0, "connect");
	s = accept(lfd, NULL, NULL);
	CHECK(ep_accept(es, s, 0, 0, NULL) == 0, "accept");
	CHECK(ep_info(ec).state == RDMASOCK_STATE_CONNECTED, "connected");
	close(ec);
	close(es);
	close(c);
	close(s);
	close(lfd);
}

static void t_withdraw_and_refuse(void)
{
	uint16_t port;
	int lfd = listener(AF_INET, &port);
	int c = connect_to(AF_INET, "127.0.0.1", port), s = accept(lfd, NULL, NULL);
	int ec = ep_open(), es = ep_open();
	struct rdmasock_msg m;
	struct rdmasock_accept a;

	CHECK(ep_offer(ec, c) == 0, "offer");
	CHECK(ioctl(ec, RDMASOCK_IOC_WITHDRAW) == 0, "withdraw");
	EXPECT_ERR(ep_accept(es, s, 0, 0, NULL), ENOENT);
	/* refuse */
	CHECK(ep_offer(ec, c) == 0, "offer again");
	CHECK(ep_accept(es, s, RDMASOCK_ACCEPT_REFUSE, 0, &a) == 0, "refuse");
	CHECK(a.peer_uid == getuid(), "peer uid reported");
	CHECK(ep_info(ec).state == RDMASOCK_STATE_REFUSED, "refused");
	CHECK(ep_info(es).state == RDMASOCK_STATE_IDLE, "server stays idle");
	CHECK(poll1(ec, POLLIN, 0) & POLLIN, "mail");
	CHECK(read(ec, &m, sizeof(m)) == sizeof(m) && m.type == RDMASOCK_MSG_REFUSED &&
	      m.info == 0, "REFUSED message");
	CHECK(read(ec, &m, sizeof(m)) == 0, "EOF after refusal");
	CHECK(ioctl(ec, RDMASOCK_IOC_WITHDRAW) == -1 && errno == ECONNREFUSED, "withdraw");
	EXPECT_ERR(ep_offer(ec, c), EBUSY);
	close(ec);
	close(es);
	close(c);
	close(s);
	close(lfd);
}

static void t_rdma_write(void)
{
	struct pair p;
	char *buf = NULL, big[9000];
	struct rdmasock_msg m[4];
	struct rdmasock_info info;
	int id, n;

	if (make_pair(&p, AF_INET, "127.0.0.1"))
		goto out;
	buf = aligned_alloc(4096, 3 * 4096);
	memset(buf, 0, 3 * 4096);
	/* an unaligned region of 8000 bytes, starting 100 bytes into a page */
	id = ep_reg(p.es, buf + 100, 8000);
	CHECK(id == 0, "reg id %d", id);
	CHECK(param("pinned_pages") >= 2, "pinned %ld", param("pinned_pages"));
	n = ep_recv(p.ec, m, 4, NULL);
	CHECK(n == 1 && m[0].type == RDMASOCK_MSG_REGION && m[0].info == 0 && m[0].len == 8000,
	      "REGION message (n=%d)", n);
	info = ep_info(p.ec);
	CHECK(info.peer_region_len[0] == 8000 && info.peer_region_len[1] == 0, "peer regions");

	CHECK(ep_write(p.ec, "hello", 5, 0, 42, 0, 0) == 0, "write");
	CHECK(memcmp(buf + 100, "hello", 5) == 0, "bytes landed");
	n = ep_recv(p.es, m, 4, NULL);
	CHECK(n == 1 && m[0].type == RDMASOCK_MSG_WRITE && m[0].offset == 0 && m[0].len == 5 &&
	      m[0].imm == 42 && m[0].info == 0, "completion");
	/* across page boundaries: region offset 3990 is buffer offset 4090 */
	for (unsigned int i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7 + 1);
	CHECK(ep_write(p.ec, big, 4000, 3990, 7, 0, 0) == 0, "cross-page write");
	CHECK(memcmp(buf + 100 + 3990, big, 4000) == 0, "cross-page bytes");
	CHECK(buf[99] == 0 && buf[100 + 7990] == 0, "nothing outside");
	/* the exact end is fine, one past it is not */
	CHECK(ep_write(p.ec, big, 10, 7990, 0, 0, 0) == 0, "write to the end");
	EXPECT_ERR(ep_write(p.ec, big, 11, 7990, 0, 0, 0), ERANGE);
	EXPECT_ERR(ep_write(p.ec, big, 1, 8001, 0, 0, 0), ERANGE);
	EXPECT_ERR(ep_write(p.ec, big, 2, UINT64_MAX, 0, 0, 0), ERANGE);
	EXPECT_ERR(ep_write(p.ec, big, UINT64_MAX, 1, 0, 0, 0), ERANGE);
	EXPECT_ERR(ep_write(p.ec, big, 8001, 0, 0, 0, 0), ERANGE);
	CHECK(buf[100 + 8000] == 0, "nothing past the end");
	EXPECT_ERR(ep_write(p.ec, big, 1, 0, 0, 1, 0), ENOENT);
	EXPECT_ERR(ep_write(p.ec, big, 1, 0, 0, 0, 0x80), EINVAL);
	/* a faulting source: no completion */
	EXPECT_ERR(ep_write(p.ec, (void *)8, 16, 0, 0, 0, 0), EFAULT);
	n = ep_recv(p.es, m, 4, NULL);
	CHECK(n == 2 && m[0].offset == 3990 && m[0].len == 4000 && m[1].offset == 7990,
	      "completions after errors (n=%d)", n);
	/* zero-length write: a completion only */
	CHECK(ep_write(p.ec, NULL, 0, 8000, 9, 0, 0) == 0, "zero-length write");
	n = ep_recv(p.es, m, 4, NULL);
	CHECK(n == 1 && m[0].len == 0 && m[0].imm == 9, "zero-length completion");
	/* the server writes back into a region of the client */
	CHECK(ep_reg(p.ec, big, sizeof(big)) == 0, "client reg");
	CHECK(ep_write(p.es, "back", 4, 8996, 0, 0, 0) == 0, "write back");
	CHECK(memcmp(big + 8996, "back", 4) == 0, "back landed");
	/* unregister: the peer is told, and writes fail */
	CHECK(ioctl(p.es, RDMASOCK_IOC_UNREG, &(uint32_t){0}) == 0, "unreg");
	EXPECT_ERR(ioctl(p.es, RDMASOCK_IOC_UNREG, &(uint32_t){0}), ENOENT);
	n = ep_recv(p.ec, m, 4, NULL);
	CHECK(n >= 1 && m[n - 1].type == RDMASOCK_MSG_REGION && m[n - 1].len == 0,
	      "unreg message");
	EXPECT_ERR(ep_write(p.ec, "x", 1, 0, 0, 0, 0), ENOENT);
out:
	close_pair(&p);
	free(buf);
}

static void t_region_limits(void)
{
	int ep = ep_open(), i;
	char *mem = mmap(NULL, 5 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	char *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct rdmasock_reg r = { .addr = (uintptr_t)mem, .len = 4096, .flags = 4 };

	EXPECT_ERR(ep_reg(ep, mem, 0), EINVAL);
	EXPECT_ERR(ioctl(ep, RDMASOCK_IOC_REG, &r), EINVAL);
	EXPECT_ERR(ep_reg(ep, (void *)-4096L, 8192), EINVAL);
	EXPECT_ERR(ep_reg(ep, ro, 4096), EFAULT);
	r.flags = RDMASOCK_REG_CLOSE_VALUE;
	r.len = 4;
	EXPECT_ERR(ioctl(ep, RDMASOCK_IOC_REG, &r), EINVAL);
	r.addr = (uintptr_t)mem + 4;
	r.len = 8;
	EXPECT_ERR(ioctl(ep, RDMASOCK_IOC_REG, &r), EINVAL);
	r.flags = 2;
	r.addr = (uintptr_t)mem;
	EXPECT_ERR(ioctl(ep, RDMASOCK_IOC_REG, &r), EINVAL);
	for (i = 0; i < RDMASOCK_MAX_REGIONS; i++)
		CHECK(ep_reg(ep, mem + i * 4096, 4096) == i, "reg %d", i);
	EXPECT_ERR(ep_reg(ep, mem + 4 * 4096, 4096), ENOSPC);
	close(ep);
	munmap(mem, 5 * 4096);
	munmap(ro, 4096);
}

static void t_coalesce_and_replace(void)
{
	struct pair p;
	char buf[4096];
	struct rdmasock_msg m[8];
	int n;

	if (make_pair(&p, AF_INET, "127.0.0.1"))
		goto out;
	CHECK(ep_reg(p.es, buf, sizeof(buf)) == 0, "reg");
	ep_recv(p.ec, m, 8, NULL);
	CHECK(ep_write(p.ec, "ab", 2, 0, 1, 0, RDMASOCK_WRITE_COALESCE) == 0, "w1");
	CHECK(ep_write(p.ec, "cd", 2, 2, 2, 0, RDMASOCK_WRITE_COALESCE) == 0, "w2");
	CHECK(ep_write(p.ec, "ef", 2, 4, 3, 0, RDMASOCK_WRITE_COALESCE) == 0, "w3");
	n = ep_recv(p.es, m, 8, NULL);
	CHECK(n == 1 && m[0].offset == 0 && m[0].len == 6 && m[0].imm == 3 &&
	      (m[0].flags & RDMASOCK_MSGF_MERGED), "merged (n=%d)", n);
	/* not contiguous, or not allowed: separate */
	CHECK(ep_write(p.ec, "ab", 2, 0, 1, 0, RDMASOCK_WRITE_COALESCE) == 0, "w4");
	CHECK(ep_write(p.ec, "cd", 2, 10, 2, 0, RDMASOCK_WRITE_COALESCE) == 0, "w5");
	CHECK(ep_write(p.ec, "ef", 2, 12, 3, 0, 0) == 0, "w6");
	n = ep_recv(p.es, m, 8, NULL);
	CHECK(n == 3, "three (n=%d)", n);
	/* notifications with REPLACE keep one message per tag, at its first place */
	CHECK(ep_notify(p.ec, 5, 100, RDMASOCK_NOTIFY_REPLACE) == 0, "n1");
	CHECK(ep_notify(p.ec, 6, 1, 0) == 0, "n2");
	CHECK(ep_notify(p.ec, 5, 101, RDMASOCK_NOTIFY_REPLACE) == 0, "n3");
	CHECK(ep_notify(p.ec, 5, 102, RDMASOCK_NOTIFY_REPLACE) == 0, "n4");
	n = ep_recv(p.es, m, 8, NULL);
	CHECK(n == 2 && m[0].type == RDMASOCK_MSG_NOTIFY && m[0].info == 5 && m[0].imm == 102 &&
	      m[1].info == 6 && m[1].imm == 1, "replaced (n=%d)", n);
	EXPECT_ERR(ep_notify(p.ec, 5, 1, 0x10), EINVAL);
out:
	close_pair(&p);
}

static void t_mailbox_full_and_doorbell(void)
{
	struct pair p;
	struct rdmasock_msg m[64];
	struct rdmasock_recv r;
	uint32_t flags = RDMASOCK_EPF_DOORBELL;
	int i, n, total = 0, fion = -1;
	char c;

	if (make_pair(&p, AF_INET, "127.0.0.1"))
		goto out;
	for (i = 0; i < 1000; i++)
		if (ep_notify(p.ec, i, i, 0))
			break;
	CHECK(i == 255 && errno == EAGAIN, "full after %d (depth 256, one slot kept)", i);
	CHECK(!(poll1(p.ec, POLLOUT, 0) & POLLOUT), "no POLLOUT while the peer is full");
	CHECK(ioctl(p.es, FIONREAD, &fion) == 0 && fion == 255 * (int)sizeof(m[0]),
	      "FIONREAD %d", fion);
	/* the poster is in doorbell mode: draining rings it */
	CHECK(ioctl(p.ec, RDMASOCK_IOC_SET_FLAGS, &flags) == 0, "doorbell mode");
	EXPECT_ERR(read_nb(p.ec, &c, 1), EAGAIN);
	n = read(p.es, m, sizeof(m));
	CHECK(n == 16 * (int)sizeof(m[0]), "read a batch: %d", n);
	CHECK(m[0].imm == 0 && m[15].imm == 15, "in order");
	CHECK(poll1(p.ec, POLLIN, 0) & POLLIN, "token after drain");
	CHECK(read(p.ec, &c, 1) == 1 && c == 1, "doorbell byte");
	EXPECT_ERR(read_nb(p.ec, &c, 1), EAGAIN);
	CHECK(poll1(p.ec, POLLOUT, 0) & POLLOUT, "POLLOUT again");
	total = 16;
	while ((n = ep_recv(p.es, m, 64, &r)) > 0) {
		CHECK(m[0].imm == (uint64_t)total, "order %llu vs %d",
		      (unsigned long long)m[0].imm, total);
		total += n;
	}
	CHECK(total == 255 && r.pending == 0 && r.state == RDMASOCK_STATE_CONNECTED,
	      "all taken: %d", total);
	/* doorbell mode: mail makes read return 1 without consuming it */
	CHECK(ep_notify(p.es, 1, 1, 0) == 0, "notify client");
	CHECK(read(p.ec, &c, 1) == 1, "doorbell read");
	CHECK(read(p.ec, &c, 1) == 1, "still mail: again");
	CHECK(ioctl(p.ec, FIONREAD, &fion) == 0 && fion == 1, "FIONREAD doorbell %d", fion);
	CHECK(ep_recv(p.ec, m, 64, NULL) == 1, "recv");
	EXPECT_ERR(read_nb(p.ec, &c, 1), EAGAIN);
	CHECK(ioctl(p.ec, RDMASOCK_IOC_RING_SELF) == 0, "ring self");
	CHECK(read(p.ec, &c, 1) == 1, "self token");
	EXPECT_ERR(read_nb(p.ec, &c, 1), EAGAIN);
	flags = 2;
	EXPECT_ERR(ioctl(p.ec, RDMASOCK_IOC_SET_FLAGS, &flags), EINVAL);
out:
	close_pair(&p);
}

static void t_blocking_read_wakes(void)
{
	struct pair p;
	struct rdmasock_msg m;
	pid_t pid;
	int st;

	if (make_pair(&p, AF_INET, "127.0.0.1"))
		goto out;
	pid = fork();
	if (pid == 0) {
		usleep(100 * 1000);
		ep_notify(p.es, 77, 1, 0);
		_exit(0);
	}
	CHECK(read(p.ec, &m, sizeof(m)) == sizeof(m) && m.info == 77, "woken by mail");
	waitpid(pid, &st, 0);
out:
	close_pair(&p);
}

static void t_close_tells_the_peer(void)
{
	struct pair p;
	struct rdmasock_msg m[4];
	struct rdmasock_recv r;
	char buf[64];
	short ev;

	if (make_pair(&p, AF_INET, "127.0.0.1"))
		goto out;
	CHECK(ep_reg(p.ec, buf, sizeof(buf)) == 0, "reg");
	CHECK(ep_notify(p.es, 3, 3, 0) == 0, "mail before close");
	close(p.es);
	p.es = -1;
	ev = poll1(p.ec, POLLIN, 0);
	CHECK((ev & (POLLIN | POLLHUP)) == (POLLIN | POLLHUP), "POLLIN|POLLHUP: %#x", ev);
	CHECK(ep_recv(p.ec, m, 4, &r) == 2, "notify, close");
	CHECK(m[0].type == RDMASOCK_MSG_NOTIFY && m[1].type == RDMASOCK_MSG_CLOSE &&
	      m[1].info == RDMASOCK_CLOSE_RELEASED, "close last");
	CHECK(r.state == RDMASOCK_STATE_CLOSED, "closed");
	ev = poll1(p.ec, POLLIN, 0);
	CHECK(ev == POLLHUP, "POLLHUP only: %#x", ev);
	CHECK(read(p.ec, m, sizeof(m)) == 0, "EOF");
	EXPECT_ERR(ep_notify(p.ec, 1, 1, 0), EPIPE);
	EXPECT_ERR(ep_write(p.ec, "x", 1, 0, 0, 0, 0), EPIPE);
	CHECK(ep_info(p.ec).peer_uid == ~0U, "no peer");
out:
	close_pair(&p);
}

static void t_process_death(void)
{
	uint16_t port;
	int lfd = listener(AF_INET, &port), s, es = ep_open(), sync[2], st;
	long pinned = param("pinned_pages"), live = param("live_endpoints");
	struct rdmasock_msg m[8];
	struct rdmasock_recv r;
	pid_t pid;
	char c;

	CHECK(pipe(sync) == 0, "pipe");
	pid = fork();
	if (pid == 0) {
		static char ring[65536];
		static uint64_t value[2];
		int c2 = connect_to(AF_INET, "127.0.0.1", port), ec = ep_open();
		struct rdmasock_reg cv = { .addr = (uintptr_t)value, .len = 16,
					   .flags = RDMASOCK_REG_CLOSE_VALUE };

		if (ep_reg(ec, ring, sizeof(ring)) != 0 || ep_offer(ec, c2) != 0 ||
		    ioctl(ec, RDMASOCK_IOC_REG, &cv) != 0 || cv.id != 1)
			_exit(1);
		value[0] = 0x1234567890ULL;	/* stored after registering: read at release */
		if (write(sync[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	CHECK(read(sync[0], &c, 1) == 1, "child ready");
	CHECK(param("live_endpoints") == live + 1, "child endpoint live");
	CHECK(param("pinned_pages") >= pinned + 16, "child pinned");
	s = accept(lfd, NULL, NULL);
	CHECK(ep_accept(es, s, 0, 0, NULL) == 0, "accept the child's offer");
	CHECK(ep_write(es, "data", 4, 65532, 0, 0, 0) == 0, "write into the child");
	EXPECT_ERR(ep_write(es, "data", 4, 65533, 0, 0, 0), ERANGE);
	EXPECT_ERR(ep_write(es, "data", 4, 0, 0, 1, 0), EACCES);
	CHECK(ep_info(es).peer_region_len[1] == 0, "close-value region not shown");
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	CHECK(poll1(es, POLLIN, 5000) & POLLHUP, "POLLHUP after death");
	CHECK(ep_recv(es, m, 8, &r) == 1 && m[0].type == RDMASOCK_MSG_CLOSE, "CLOSE message");
	CHECK((m[0].flags & RDMASOCK_MSGF_VALUE) && m[0].imm == 0x1234567890ULL,
	      "the dead child's close value: flags %#x imm %#llx", m[0].flags,
	      (unsigned long long)m[0].imm);
	CHECK(r.state == RDMASOCK_STATE_CLOSED, "closed");
	EXPECT_ERR(ep_write(es, "data", 4, 0, 0, 0, 0), EPIPE);
	CHECK(param("pinned_pages") == pinned, "child's pages unpinned: %ld vs %ld",
	      param("pinned_pages"), pinned);
	CHECK(param("live_endpoints") == live, "child's endpoint freed: %ld vs %ld",
	      param("live_endpoints"), live);
	close(es);
	/* an offer of a dying process is withdrawn with it */
	pid = fork();
	if (pid == 0) {
		int c2 = connect_to(AF_INET, "127.0.0.1", port), ec = ep_open();

		_exit(ep_offer(ec, c2) ? 1 : 0);
	}
	waitpid(pid, &st, 0);
	s = accept(lfd, NULL, NULL);
	es = ep_open();
	EXPECT_ERR(ep_accept(es, s, 0, 0, NULL), ENOENT);
	close(es);
	close(s);
	close(lfd);
	close(sync[0]);
	close(sync[1]);
}

/* A child of another uid offers; returns its pid. The child reports its REFUSED info. */
static pid_t offer_as(uid_t uid, uint16_t port, int syncw, int resultw)
{
	pid_t pid = fork();

	if (pid == 0) {
		struct rdmasock_msg m;
		int c, ec;

		if (setgid(uid) || setuid(uid))
			_exit(2);
		c = connect_to(AF_INET, "127.0.0.1", port);
		ec = open("/dev/rdmasock", O_RDWR);
		if (c < 0 || ec < 0 || ep_offer(ec, c))
			_exit(3);
		if (write(syncw, "r", 1) != 1)
			_exit(4);
		if (read(ec, &m, sizeof(m)) != sizeof(m))
			_exit(5);
		if (write(resultw, &m, sizeof(m)) != sizeof(m))
			_exit(6);
		_exit(0);
	}
	return pid;
}

/* A bool parameter: 1 (Y), 0 (N), -1 (unreadable). */
static int param_bool(const char *name)
{
	char path[128], c = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/rdmasock/parameters/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fread(&c, 1, 1, f) != 1)
		c = 0;
	fclose(f);
	return c == 'Y' || c == '1' ? 1 : c == 'N' || c == '0' ? 0 : -1;
}

static void t_uid_policy(void)
{
	uint16_t port;
	int lfd = listener(AF_INET, &port), sync[2], res[2], s, es, st;
	struct rdmasock_accept a;
	struct rdmasock_info info;
	struct rdmasock_msg m;
	pid_t pid;
	char c;

	CHECK(pipe(sync) == 0 && pipe(res) == 0, "pipes");
	/* By default two users' endpoints pair (nothing is shared but the copy). */
	CHECK(param_bool("same_uid_only") == 0, "default off");
	pid = offer_as(65534, port, sync[1], res[1]);
	CHECK(read(sync[0], &c, 1) == 1, "child ready");
	s = accept(lfd, NULL, NULL);
	es = ep_open();
	CHECK(ep_accept(es, s, 0, 0, &a) == 0, "accepted across uids");
	/* The child exits once it has read ACCEPTED; then INFO reports no peer (~0). */
	info = ep_info(es);
	CHECK(a.peer_uid == 65534 &&
	      (info.peer_uid == 65534 || info.state == RDMASOCK_STATE_CLOSED),
	      "peer uid %u, INFO peer uid %u state %u", a.peer_uid, info.peer_uid, info.state);
	CHECK(read(res[0], &m, sizeof(m)) == sizeof(m) && m.type == RDMASOCK_MSG_ACCEPTED,
	      "child accepted");
	waitpid(pid, &st, 0);
	close(es);
	close(s);

	set_param("same_uid_only", "1");
	pid = offer_as(65534, port, sync[1], res[1]);
	CHECK(read(sync[0], &c, 1) == 1, "child ready");
	s = accept(lfd, NULL, NULL);
	es = ep_open();
	EXPECT_ERR(ep_accept(es, s, 0, 0, &a), EPERM);
	CHECK(a.peer_uid == 65534, "peer uid %u", a.peer_uid);
	CHECK(ep_info(es).state == RDMASOCK_STATE_IDLE, "server idle");
	CHECK(read(res[0], &m, sizeof(m)) == sizeof(m) && m.type == RDMASOCK_MSG_REFUSED &&
	      m.info == EPERM, "child refused with EPERM");
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
	set_param("same_uid_only", "0");
	close(es);
	close(s);
	close(lfd);
	close(sync[0]);
	close(sync[1]);
	close(res[0]);
	close(res[1]);
}

static int ep_listen(int ep, int sock)
{
	struct rdmasock_listen l = { .sock_fd = sock };

	return ioctl(ep, RDMASOCK_IOC_LISTEN, &l);
}

/* FIND addr:port (text, IPv4 or IPv6) from endpoint ep; the listener's uid in *uid. */
static int ep_find(int ep, const char *addr, uint16_t port, uint32_t *uid)
{
	struct rdmasock_find f = { .port = port };
	struct in_addr v4;
	int r;

	if (inet_pton(AF_INET, addr, &v4) == 1) {
		f.addr[10] = 0xff;
		f.addr[11] = 0xff;
		memcpy(&f.addr[12], &v4, 4);
	} else {
		inet_pton(AF_INET6, addr, f.addr);
	}
	r = ioctl(ep, RDMASOCK_IOC_FIND, &f);
	if (uid)
		*uid = f.uid;
	return r;
}

/* FIND asked by a child of another uid; its exit status: 0 found (uid matched), 1 not. */
static int find_as(uid_t uid, const char *addr, uint16_t port, uint32_t want_uid)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		uint32_t got = ~0U;
		int ep;

		if (setgid(uid) || setuid(uid))
			_exit(2);
		ep = open("/dev/rdmasock", O_RDWR);
		if (ep < 0)
			_exit(3);
		if (ep_find(ep, addr, port, &got))
			_exit(errno == ENOENT ? 1 : 4);
		_exit(got == want_uid ? 0 : 5);
	}
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void t_listen_and_find(void)
{
	uint16_t p4, p6, p6only;
	int l4 = listener(AF_INET, &p4), l6 = listener(AF_INET6, &p6);
	int l6only = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	int e4 = ep_open(), e6 = ep_open(), e6only = ep_open(), eq = ep_open();
	int unbound = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), c, st;
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };
	socklen_t sl = sizeof(a6);
	uint32_t uid = ~0U;
	pid_t pid;

	CHECK(setsockopt(l6only, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == 0 &&
	      bind(l6only, (struct sockaddr *)&a6, sizeof(a6)) == 0 && listen(l6only, 4) == 0 &&
	      getsockname(l6only, (struct sockaddr *)&a6, &sl) == 0, "v6only listener");
	p6only = ntohs(a6.sin6_port);

	/* Nothing registered yet. */
	EXPECT_ERR(ep_find(eq, "127.0.0.1", p4, NULL), ENOENT);
	/* Only a listening TCP socket of the caller's. */
	EXPECT_ERR(ep_listen(e4, unbound), EINVAL);
	EXPECT_ERR(ep_listen(e4, 0), ENOTSOCK);
	EXPECT_ERR(ep_listen(e4, 999), EBADF);
	EXPECT_OK(ep_listen(e4, l4));
	EXPECT_ERR(ep_listen(e4, l4), EBUSY);
	EXPECT_OK(ep_listen(e6, l6));
	EXPECT_OK(ep_listen(e6only, l6only));

	/* Found at its address, by any uid, with the listener's uid. */
	CHECK(ep_find(eq, "127.0.0.1", p4, &uid) == 0 && uid == getuid(), "v4 found, uid %u", uid);
	CHECK(find_as(65534, "127.0.0.1", p4, getuid()) == 0, "another uid finds it too");
	EXPECT_ERR(ep_find(eq, "127.0.0.2", p4, NULL), ENOENT);
	EXPECT_ERR(ep_find(eq, "::1", p4, NULL), ENOENT);
	EXPECT_ERR(ep_find(eq, "127.0.0.1", 1, NULL), ENOENT);
	/* A dual-stack wildcard takes IPv4 and IPv6; a V6ONLY one no IPv4. */
	EXPECT_OK(ep_find(eq, "127.0.0.1", p6, NULL));
	EXPECT_OK(ep_find(eq, "::1", p6, NULL));
	EXPECT_OK(ep_find(eq, "::1", p6only, NULL));
	EXPECT_ERR(ep_find(eq, "127.0.0.1", p6only, NULL), ENOENT);
	/* A bad request. */
	{
		struct rdmasock_find f = { .port = p4, .flags = 1 };

		EXPECT_ERR(ioctl(eq, RDMASOCK_IOC_FIND, &f), EINVAL);
	}

	/* A listener endpoint takes no offer and accepts nothing. */
	c = connect_to(AF_INET, "127.0.0.1", p4);
	EXPECT_ERR(ep_offer(e4, c), EBUSY);
	close(c);
	c = accept(l4, NULL, NULL);
	EXPECT_ERR(ep_accept(e4, c, 0, 0, NULL), EBUSY);
	close(c);

	/* Another network namespace sees none of ours. */
	pid = fork();
	if (pid == 0) {
		if (unshare(CLONE_NEWNET))
			_exit(2);
		_exit(ep_find(eq, "127.0.0.1", p4, NULL) == -1 && errno == ENOENT ? 0 : 1);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "other netns: status %d", st);

	/* A closed listening socket counts no more, though the endpoint is open. */
	close(l4);
	EXPECT_ERR(ep_find(eq, "127.0.0.1", p4, NULL), ENOENT);
	/* Closing the endpoint takes the registration away. */
	close(e6);
	EXPECT_ERR(ep_find(eq, "::1", p6, NULL), ENOENT);
	close(e4);
	close(e6only);
	close(eq);
	close(l6);
	close(l6only);
	close(unbound);
}

static void t_memlock_accounting(void)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		struct rlimit rl = { 64 * 1024, 64 * 1024 };
		char *mem = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int ep;

		if (setrlimit(RLIMIT_MEMLOCK, &rl) || setgid(65534) || setuid(65534))
			_exit(2);
		ep = open("/dev/rdmasock", O_RDWR);
		if (ep < 0)
			_exit(3);
		if (ep_reg(ep, mem, 1 << 20) != -1 || errno != ENOMEM)
			_exit(4);
		if (ep_reg(ep, mem, 32 * 1024) != 0)
			_exit(5);
		if (ep_reg(ep, mem, 64 * 1024) != -1 || errno != ENOMEM)
			_exit(6);
		_exit(0);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", WEXITSTATUS(st));
}

static void t_nothing_left(void)
{
	CHECK(param("live_endpoints") == 0, "live endpoints %ld", param("live_endpoints"));
	CHECK(param("pinned_pages") == 0, "pinned pages %ld", param("pinned_pages"));
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	run_case("open, version, info", t_open_version_info);
	run_case("empty mailbox, unconnected endpoint", t_mailbox_empty_and_unconnected);
	run_case("offer checks the socket", t_offer_checks_the_socket);
	run_case("rendezvous over IPv4", t_rendezvous_v4);
	run_case("rendezvous matches only the right connection",
		 t_rendezvous_matches_only_the_right_connection);
	run_case("rendezvous over IPv6 and dual stack", t_rendezvous_v6_and_dual_stack);
	run_case("offer before connect", t_offer_before_connect);
	run_case("withdraw and refuse", t_withdraw_and_refuse);
	run_case("rdma write", t_rdma_write);
	run_case("region limits", t_region_limits);
	run_case("coalesce and replace", t_coalesce_and_replace);
	run_case("mailbox full, doorbell mode", t_mailbox_full_and_doorbell);
	run_case("blocking read wakes", t_blocking_read_wakes);
	run_case("close tells the peer", t_close_tells_the_peer);
	run_case("process death", t_process_death);
	run_case("uid policy", t_uid_policy);
	run_case("listen and find", t_listen_and_find);
	run_case("memlock accounting", t_memlock_accounting);
	run_case("nothing left behind", t_nothing_left);
	printf("C-TESTS: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
