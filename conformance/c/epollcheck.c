/* epoll under churn, printed as observations; run plain and under the shim, the
 * transcripts must be identical.
 *   epollcheck unreg N          N connections to a server that reads a request, writes
 *                               the reply and closes at once; the client connects
 *                               non-blocking, waits for OUT, sends, modifies to IN,
 *                               reads to EOF, then EPOLL_CTL_DEL (as APR's pollset),
 *                               closes, and waits once more on the set: nothing of the
 *                               closed fd may come.
 *   epollcheck mt T C R         T threads, each with its own epoll set and C
 *                               connections, R exchanges each, churning: close with
 *                               and without DEL, DEL and re-ADD, MOD, connections the
 *                               server ends at once (back to TCP under the shim); plus
 *                               one set shared by every thread, watched by a thread of
 *                               its own. Every event any epoll_wait returns must carry a
 *                               data word this program registered.
 * The server is a forked child (a thread per connection, blocking I/O). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG 64

static void die(const char *what) { fprintf(stderr, "epollcheck[%d]: %s: %s\n", (int)getpid(), what, strerror(errno)); exit(2); }

static int full_io(int fd, char *b, size_t n, int wr) {
	size_t done = 0;
	while (done < n) {
		ssize_t r = wr ? write(fd, b + done, n - done) : read(fd, b + done, n - done);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) return -1;
		done += (size_t)r;
	}
	return 0;
}

/* ---- server: a thread per connection; a message starting with 'Q' is answered and
 * the connection closed at once; 'X' closes without an answer. */
static void *serve(void *arg) {
	int fd = (int)(intptr_t)arg;
	char m[MSG];
	while (full_io(fd, m, MSG, 0) == 0) {
		if (m[0] == 'X') break;
		if (full_io(fd, m, MSG, 1)) break;
		if (m[0] == 'Q') break;
	}
	close(fd);
	return NULL;
}

static pid_t server_pid;

static uint16_t start_server(void) {
	int p[2];
	if (pipe(p)) die("pipe");
	pid_t pid = fork();
	if (pid < 0) die("fork");
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(p[0]);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof a;
		int l = socket(AF_INET, SOCK_STREAM, 0);
		if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 256) || getsockname(l, (void *)&a, &len)) die("listen");
		uint16_t port = ntohs(a.sin_port);
		if (write(p[1], &port, 2) != 2) die("port");
		close(p[1]);
		for (;;) {
			int c = accept(l, NULL, NULL);
			if (c < 0) {
				if (errno == EINTR || errno == ECONNABORTED) continue;
				die("accept");
			}
			pthread_t t;
			if (pthread_create(&t, NULL, serve, (void *)(intptr_t)c)) die("pthread_create");
			pthread_detach(t);
		}
	}
	server_pid = pid;
	close(p[1]);
	uint16_t port;
	if (read(p[0], &port, 2) != 2) die("server port");
	close(p[0]);
	return port;
}

static int connect_nb(uint16_t port) {
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0) die("socket");
	if (connect(fd, (void *)&a, sizeof a) && errno != EINPROGRESS) die("connect");
	return fd;
}

static int ctl(int ep, int op, int fd, uint32_t events, uint64_t data) {
	struct epoll_event e = { .events = events, .data.u64 = data };
	return epoll_ctl(ep, op, fd, &e);
}

/* Wait on `ep` until an event for `data` with one of `want` comes (or timeout). */
static int wait_for(int ep, uint64_t data, uint32_t want, int ms) {
	struct epoll_event ev[8];
	for (int tries = 0; tries < 1000; tries++) {
		int n = epoll_wait(ep, ev, 8, ms);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) die("epoll_wait");
		if (n == 0) return 0;
		for (int i = 0; i < n; i++) {
			if (ev[i].data.u64 != data) {
				printf("foreign event data=%#llx\n", (unsigned long long)ev[i].data.u64);
				exit(3);
			}
			if (ev[i].events & want) return 1;
		}
	}
	return 0;
}

static void unreg(int n) {
	uint16_t port = start_server();
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) die("epoll_create1");
	int del_ok = 0, stale = 0, eof = 0;
	const char *first_err = "none";
	for (int i = 0; i < n; i++) {
		uint64_t data = 0xabcdef00ull + (uint64_t)i;
		int fd = connect_nb(port);
		if (ctl(ep, EPOLL_CTL_ADD, fd, EPOLLOUT, data)) die("add");
		if (!wait_for(ep, data, EPOLLOUT, 5000)) die("no EPOLLOUT");
		char m[MSG] = "Q request";
		if (write(fd, m, MSG) != MSG) die("send");
		if (ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN, data)) die("mod");
		size_t got = 0;
		for (;;) {
			/* As an event loop does: wait for readiness before each read. */
			if (!wait_for(ep, data, EPOLLIN | EPOLLHUP | EPOLLERR, 5000)) die("no EPOLLIN");
			ssize_t r = read(fd, m, sizeof m);
			if (r > 0) { got += (size_t)r; continue; }
			if (r == 0) break;
			if (errno == EAGAIN) continue;
			die("read");
		}
		eof += got == MSG;
		if (ctl(ep, EPOLL_CTL_DEL, fd, 0, 0) == 0) del_ok++;
		else if (!strcmp(first_err, "none")) first_err = strerrorname_np(errno);
		close(fd);
		struct epoll_event ev[4];
		int k = epoll_wait(ep, ev, 4, 10);
		if (k > 0) stale += k;
	}
	printf("unreg %d: reply then EOF %d, EPOLL_CTL_DEL ok %d (first error %s), events after close %d\n", n, eof, del_ok, first_err, stale);
}

/* ---- mt ---- */
#define MAGIC 0xA11CEull
static int threads, conns, rounds;
static uint16_t port;
static int shared_ep;
static atomic_int foreign, del_fail, verify_fail, done_threads, mod_fail, add_fail;
static atomic_long exchanges;

static uint64_t tag(int t, int k, int gen) { return MAGIC << 44 | (uint64_t)t << 32 | (uint64_t)k << 16 | (uint64_t)(gen & 0xffff); }

static int valid(uint64_t d) {
	return d >> 44 == MAGIC && (int)(d >> 32 & 0xfff) < threads + 1 && (int)(d >> 16 & 0xffff) < conns + 1;
}

static uint64_t rng(uint64_t *s) {
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

struct slot {
	int fd, gen, state; /* 0 none, 1 connecting, 2 awaiting reply, 3 awaiting EOF */
	int in_shared;
	uint32_t seq;
	char got[MSG];
	int have;
};

static void check(uint64_t d) {
	if (!valid(d)) {
		if (atomic_fetch_add(&foreign, 1) == 0) fprintf(stderr, "foreign event data=%#llx\n", (unsigned long long)d);
	}
}

static void *shared_watcher(void *arg) {
	(void)arg;
	struct epoll_event ev[16];
	while (atomic_load(&done_threads) < threads) {
		int n = epoll_wait(shared_ep, ev, 16, 20);
		for (int i = 0; i < n; i++) check(ev[i].data.u64);
	}
	return NULL;
}

static void close_slot(int ep, struct slot *s, int with_del) {
	if (with_del) {
		if (ctl(ep, EPOLL_CTL_DEL, s->fd, 0, 0)) atomic_fetch_add(&del_fail, 1);
	}
	if (s->in_shared) {
		if (ctl(shared_ep, EPOLL_CTL_DEL, s->fd, 0, 0)) atomic_fetch_add(&del_fail, 1);
		s->in_shared = 0;
	}
	close(s->fd);
	s->fd = -1;
	s->state = 0;
}

static void send_msg(int ep, int t, int k, struct slot *s, char kind) {
	char m[MSG];
	memset(m, 0, sizeof m);
	m[0] = kind;
	snprintf(m + 1, MSG - 1, "t%d k%d seq%u", t, k, s->seq);
	if (write(s->fd, m, MSG) != MSG) { atomic_fetch_add(&verify_fail, 1); return; }
	s->have = 0;
	s->state = kind == 'X' ? 3 : 2;
	if (ctl(ep, EPOLL_CTL_MOD, s->fd, EPOLLIN | EPOLLRDHUP, tag(t, k, s->gen))) atomic_fetch_add(&mod_fail, 1);
}

static void *client(void *arg) {
	int t = (int)(intptr_t)arg;
	uint64_t seed = 0x5eed0000ull + (uint64_t)t;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) die("epoll_create1");
	struct slot *sl = calloc((size_t)conns, sizeof *sl);
	for (int k = 0; k < conns; k++) sl[k].fd = -1;
	long left = rounds;
	struct epoll_event ev[16];
	while (left > 0) {
		for (int k = 0; k < conns; k++) {
			if (sl[k].fd >= 0) continue;
			sl[k].fd = connect_nb(port);
			sl[k].gen++;
			sl[k].state = 1;
			if (ctl(ep, EPOLL_CTL_ADD, sl[k].fd, EPOLLOUT, tag(t, k, sl[k].gen))) atomic_fetch_add(&add_fail, 1);
			if (rng(&seed) % 3 == 0) {
				/* Also in the shared set (edge-triggered: the watcher only looks). */
				if (ctl(shared_ep, EPOLL_CTL_ADD, sl[k].fd, EPOLLIN | EPOLLOUT | EPOLLET, tag(threads, conns, 0))) atomic_fetch_add(&add_fail, 1);
				else sl[k].in_shared = 1;
			}
		}
		int n = epoll_wait(ep, ev, 16, 5000);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) die("epoll_wait");
		if (n == 0) { fprintf(stderr, "thread %d: nothing for 5 s\n", t); atomic_fetch_add(&verify_fail, 1); break; }
		for (int i = 0; i < n; i++) {
			uint64_t d = ev[i].data.u64;
			check(d);
			if (!valid(d)) continue;
			int k = (int)(d >> 16 & 0xffff);
			if ((int)(d >> 32 & 0xfff) != t || k >= conns) { atomic_fetch_add(&foreign, 1); continue; }
			struct slot *s = &sl[k];
			if (s->fd < 0 || (int)(d & 0xffff) != (s->gen & 0xffff)) continue; /* harvested before our change */
			if (s->state == 1) {
				if (!(ev[i].events & EPOLLOUT)) continue;
				int e = 0;
				socklen_t el = sizeof e;
				getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &el);
				if (e) { atomic_fetch_add(&verify_fail, 1); close_slot(ep, s, 1); continue; }
				uint64_t r = rng(&seed) % 8;
				send_msg(ep, t, k, s, r == 0 ? 'Q' : r == 1 ? 'X' : 'E');
				continue;
			}
			/* Read what there is. */
			for (;;) {
				char b[MSG];
				ssize_t r = read(s->fd, b, s->state == 2 ? (size_t)(MSG - s->have) : sizeof b);
				if (r > 0 && s->state == 2) {
					memcpy(s->got + s->have, b, (size_t)r);
					s->have += (int)r;
					if (s->have < MSG) continue;
					char want[MSG];
					memset(want, 0, sizeof want);
					snprintf(want + 1, MSG - 1, "t%d k%d seq%u", t, k, s->seq);
					if (memcmp(s->got + 1, want + 1, MSG - 1)) atomic_fetch_add(&verify_fail, 1);
					atomic_fetch_add(&exchanges, 1);
					left--;
					s->seq++;
					if (s->got[0] == 'Q') { s->state = 3; continue; }
					/* Next: another exchange, a MOD round trip, a DEL and re-ADD, or a close. */
					uint64_t c = rng(&seed) % 10;
					if (c < 5) {
						send_msg(ep, t, k, s, rng(&seed) % 6 == 0 ? 'Q' : 'E');
					} else if (c < 7) {
						if (ctl(ep, EPOLL_CTL_DEL, s->fd, 0, 0)) atomic_fetch_add(&del_fail, 1);
						s->gen++;
						if (ctl(ep, EPOLL_CTL_ADD, s->fd, EPOLLOUT, tag(t, k, s->gen))) atomic_fetch_add(&add_fail, 1);
						s->state = 1;
					} else if (c < 8) {
						s->gen++;
						if (ctl(ep, EPOLL_CTL_MOD, s->fd, EPOLLOUT, tag(t, k, s->gen))) atomic_fetch_add(&mod_fail, 1);
						s->state = 1;
					} else {
						close_slot(ep, s, c == 8);
					}
					break;
				}
				if (r > 0) { atomic_fetch_add(&verify_fail, 1); continue; } /* bytes where EOF was due */
				if (r == 0) {
					if (s->state == 3) close_slot(ep, s, rng(&seed) % 2);
					else { atomic_fetch_add(&verify_fail, 1); close_slot(ep, s, 1); }
					break;
				}
				if (errno == EAGAIN) break;
				atomic_fetch_add(&verify_fail, 1);
				close_slot(ep, s, 1);
				break;
			}
		}
	}
	for (int k = 0; k < conns; k++)
		if (sl[k].fd >= 0) close_slot(ep, &sl[k], k % 2);
	close(ep);
	free(sl);
	atomic_fetch_add(&done_threads, 1);
	return NULL;
}

static void mt(int t, int c, int r) {
	threads = t, conns = c, rounds = r;
	port = start_server();
	shared_ep = epoll_create1(EPOLL_CLOEXEC);
	if (shared_ep < 0) die("epoll_create1");
	pthread_t w, th[64];
	pthread_create(&w, NULL, shared_watcher, NULL);
	for (int i = 0; i < t && i < 64; i++) pthread_create(&th[i], NULL, client, (void *)(intptr_t)i);
	for (int i = 0; i < t && i < 64; i++) pthread_join(th[i], NULL);
	pthread_join(w, NULL);
	printf("mt %d threads x %d connections: exchanges %s, foreign events %d, failed DEL %d, MOD %d, ADD %d, bad replies %d\n", t, c,
	       atomic_load(&exchanges) >= (long)t * r ? "all" : "missing", atomic_load(&foreign), atomic_load(&del_fail),
	       atomic_load(&mod_fail), atomic_load(&add_fail), atomic_load(&verify_fail));
}

int main(int argc, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IONBF, 0);
	alarm(120);
	if (argc == 3 && !strcmp(argv[1], "unreg")) unreg(atoi(argv[2]));
	else if (argc == 5 && !strcmp(argv[1], "mt")) mt(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
	else { fprintf(stderr, "usage: epollcheck unreg N | mt THREADS CONNS ROUNDS\n"); return 2; }
	kill(server_pid, SIGKILL);
	waitpid(server_pid, NULL, 0);
	return 0;
}
