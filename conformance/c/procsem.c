/* Process and signal semantics on one TCP connection, printed as observations; run
 * plain and under the shim, the transcripts must be identical.
 *   procsem CASE     (signals | sockopts | dups | spawn | vfork | clone | timeouts | apiedge |
 *                    closewhileblocked)
 * Client and server live in this one process (listen, connect, accept). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static int lsn, cli, srv;

static void die(const char *what) { perror(what); exit(2); }

static void pair(void) {
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	if ((lsn = socket(AF_INET, SOCK_STREAM, 0)) < 0 || bind(lsn, (void *)&a, sizeof a) || listen(lsn, 8) ||
	    getsockname(lsn, (void *)&a, &len))
		die("listen");
	if ((cli = socket(AF_INET, SOCK_STREAM, 0)) < 0 || connect(cli, (void *)&a, sizeof a)) die("connect");
	if ((srv = accept(lsn, NULL, NULL)) < 0) die("accept");
	/* First use decides the path on both ends. */
	if (write(cli, "0", 1) != 1 || read(srv, (char[1]){0}, 1) != 1) die("first byte");
}

static const char *err(ssize_t r) { return r < 0 ? strerrorname_np(errno) : "ok"; }

static void on_alarm(int sig) { (void)sig; }

static void *late_writer(void *arg) {
	usleep(300 * 1000); /* paces the data after the signal; not synchronisation */
	if (write(*(int *)arg, "late", 4) != 4) die("late write");
	return NULL;
}

static void signals(void) {
	char b[16];
	struct sigaction sa = { .sa_handler = on_alarm };
	sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART */
	/* Repeating: a signal that came before the recv blocked (a loaded machine) is
	 * followed by another. */
	ualarm(100 * 1000, 100 * 1000);
	ssize_t r = recv(srv, b, sizeof b, 0);
	ualarm(0, 0);
	printf("recv blocked, SIGALRM without SA_RESTART -> %zd %s\n", r, err(r));
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	pthread_t t;
	pthread_create(&t, NULL, late_writer, &cli);
	ualarm(100 * 1000, 0);
	r = recv(srv, b, sizeof b, 0);
	printf("recv blocked, SIGALRM with SA_RESTART -> %zd bytes \"%.*s\"\n", r, r > 0 ? (int)r : 0, b);
	pthread_join(t, NULL);
	struct timeval tv = { 0, 100 * 1000 };
	setsockopt(srv, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	ualarm(20 * 1000, 0);
	r = recv(srv, b, sizeof b, 0);
	printf("recv with SO_RCVTIMEO, SIGALRM with SA_RESTART -> %zd %s\n", r, err(r));
}

static void sockopts(void) {
	int fds[3] = { lsn, cli, srv };
	const char *names[3] = { "listener", "client", "server" };
	for (int i = 0; i < 3; i++) {
		int v, opts[4] = { SO_TYPE, SO_DOMAIN, SO_PROTOCOL, SO_ACCEPTCONN };
		const char *on[4] = { "SO_TYPE", "SO_DOMAIN", "SO_PROTOCOL", "SO_ACCEPTCONN" };
		for (int k = 0; k < 4; k++) {
			socklen_t l = sizeof v;
			int r = getsockopt(fds[i], SOL_SOCKET, opts[k], &v, &l);
			printf("%s %s -> %d %s\n", names[i], on[k], r ? -1 : v, err(r));
		}
		struct tcp_info ti;
		socklen_t l = sizeof ti;
		int r = getsockopt(fds[i], IPPROTO_TCP, TCP_INFO, &ti, &l);
		printf("%s TCP_INFO state -> %d %s\n", names[i], r ? -1 : ti.tcpi_state, err(r));
		int e;
		l = sizeof e;
		r = getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &e, &l);
		printf("%s SO_ERROR -> %d %s\n", names[i], r ? -1 : e, err(r));
	}
}

static void dups(void) {
	char b[16];
	int d = dup(cli);
	int d2 = dup2(cli, 100);
	int d3 = dup3(cli, 101, O_CLOEXEC);
	printf("dup/dup2/dup3 -> %s %d %d\n", d >= 0 ? "ok" : "fail", d2, d3);
	ssize_t w = write(d2, "A", 1) + write(d3, "B", 1) + write(d, "C", 1);
	close(cli);
	w += write(d, "D", 1);
	ssize_t r = recv(srv, b, 4, MSG_WAITALL);
	printf("writes through dups -> %zd, server got \"%.*s\"\n", w, (int)(r > 0 ? r : 0), b);
	/* dup2 over a fabric fd: the old connection closes there, the number takes the new. */
	int other = socket(AF_INET, SOCK_STREAM, 0);
	int r2 = dup2(other, d2);
	printf("dup2 of a fresh socket over a fabric fd -> %d; send on it -> %s\n", r2, err(send(d2, "x", 1, MSG_NOSIGNAL)));
	close(d); close(d3); close(d2); close(other);
	r = recv(srv, b, sizeof b, 0);
	printf("server recv after every client fd closed -> %zd %s\n", r, err(r));
}

static void spawn(void) {
	char b[64] = { 0 };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, cli, 1);
	char *argv[] = { "echo", "spawned child wrote this", NULL };
	pid_t pid;
	int r = posix_spawn(&pid, "/bin/echo", &fa, NULL, argv, environ);
	printf("posix_spawn -> %d\n", r);
	waitpid(pid, NULL, 0);
	close(cli); /* the child's copy went with it: the parent lets go too */
	size_t got = 0;
	ssize_t n;
	while ((n = recv(srv, b + got, sizeof b - 1 - got, 0)) > 0) got += n;
	printf("server got \"%s\" then %zd\n", b, n);
}

static void vforked(void) {
	char b[64] = { 0 };
	pid_t pid = vfork();
	if (pid == 0) {
		dup2(cli, 1);
		execl("/bin/echo", "echo", "vforked child wrote this", (char *)NULL);
		_exit(127);
	}
	waitpid(pid, NULL, 0);
	close(cli);
	size_t got = 0;
	ssize_t n;
	while ((n = recv(srv, b + got, sizeof b - 1 - got, 0)) > 0) got += n;
	printf("server got \"%s\" then %zd\n", b, n);
}

/* A connection whose sockets got SO_RCVTIMEO before it existed: on the listener before
 * accept (as Linux: the accepted socket starts with the listener's options) and on the
 * client before connect; and one whose timeout is set through a dup of its fd. */
static void timeouts(void) {
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	struct timeval tv = { 0, 50 * 1000 };
	char b[8];
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) || bind(l, (void *)&a, sizeof a) ||
	    listen(l, 8) || getsockname(l, (void *)&a, &len))
		die("listen");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) || connect(c, (void *)&a, sizeof a))
		die("connect");
	int s = accept(l, NULL, NULL);
	if (s < 0) die("accept");
	ssize_t r = recv(s, b, sizeof b, 0);
	printf("accepted from a listener with SO_RCVTIMEO: recv -> %zd %s\n", r, err(r));
	r = recv(c, b, sizeof b, 0);
	printf("client with SO_RCVTIMEO set before connect: recv -> %zd %s\n", r, err(r));
	int c2 = socket(AF_INET, SOCK_STREAM, 0);
	if (c2 < 0 || connect(c2, (void *)&a, sizeof a)) die("connect");
	int s2 = accept(l, NULL, NULL);
	int d = dup(c2);
	if (s2 < 0 || d < 0 || setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) die("dup");
	r = recv(c2, b, sizeof b, 0);
	printf("SO_RCVTIMEO set through a dup: recv on the original -> %zd %s\n", r, err(r));
	r = send(c, "x", 1, 0) + send(s2, "y", 1, 0);
	printf("sends -> %zd; recv -> %zd", r, recv(s, b, 1, 0));
	printf(", %zd\n", recv(d, b, 1, 0));
}

static char clone_stack[1 << 16] __attribute__((aligned(16)));

/* A child sharing our memory (not our fd table) closes its copy of the connection and
 * dup2s another over it: the parent's connection must not notice. */
static int clone_child(void *arg) {
	(void)arg;
	int fd = dup(cli);
	dup2(fd, cli);
	close(fd);
	close(cli);
	return 0;
}

static void cloned(void) {
	char b[64] = { 0 };
	int st;
	pid_t pid = clone(clone_child, clone_stack + sizeof clone_stack, CLONE_VM | SIGCHLD, NULL);
	if (pid < 0) die("clone");
	waitpid(pid, &st, 0);
	printf("clone child exit %d\n", WEXITSTATUS(st));
	if (send(cli, "after the clone", 15, 0) != 15) die("send");
	close(cli);
	size_t got = 0;
	ssize_t n;
	while ((n = recv(srv, b + got, sizeof b - 1 - got, 0)) > 0) got += n;
	printf("server got \"%s\" then %zd\n", b, n);
}

/* Buffers that are not user memory, and zero lengths (issue 21.8). */
static double now_s(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void apiedge(void) {
	char b[16];
	ssize_t r;
	r = send(cli, NULL, 10, 0);
	printf("send(NULL, 10) -> %zd %s\n", r, err(r));
	r = send(cli, (void *)1, 10, MSG_DONTWAIT);
	printf("send((void *)1, 10) -> %zd %s\n", r, err(r));
	r = recv(srv, NULL, 10, MSG_DONTWAIT);
	printf("recv(NULL, 10, MSG_DONTWAIT), nothing there -> %zd %s\n", r, err(r));
	r = recv(srv, b, 0, MSG_DONTWAIT);
	printf("recv(len 0, MSG_DONTWAIT), nothing there -> %zd %s\n", r, err(r));
	int d = dup(cli);
	close(d);
	r = send(d, "x", 1, MSG_NOSIGNAL);
	printf("send on a closed dup of a connection -> %zd %s\n", r, err(r));
	r = recv(d, b, sizeof b, MSG_DONTWAIT);
	printf("recv on it -> %zd %s\n", r, err(r));
	r = read(srv, b, 0);
	printf("read(len 0), nothing there -> %zd %s\n", r, err(r));
	if (write(cli, "data", 4) != 4) die("write");
	usleep(50 * 1000); /* lets the bytes arrive; not synchronisation: the recv below waits */
	r = recv(srv, NULL, 10, 0);
	printf("recv(NULL, 10), bytes waiting -> %zd %s\n", r, err(r));
	r = recv(srv, (void *)1, 10, 0);
	printf("recv((void *)1, 10), bytes waiting -> %zd %s\n", r, err(r));
	r = recv(srv, b, 0, 0);
	printf("recv(len 0), bytes waiting -> %zd %s\n", r, err(r));
	r = recv(srv, b, sizeof b, 0);
	printf("recv afterwards -> %zd %.*s\n", r, (int)(r > 0 ? r : 0), b);
	/* A blocking recv of length 0 waits for bytes, as Linux's tcp_recvmsg does. */
	pthread_t t;
	pthread_create(&t, NULL, late_writer, &cli);
	double t0 = now_s();
	r = recv(srv, b, 0, 0);
	printf("blocking recv(len 0), bytes later -> %zd %s, waited for them: %s\n", r, err(r), now_s() - t0 > 0.15 ? "yes" : "no");
	pthread_join(t, NULL);
	r = recv(srv, b, sizeof b, 0);
	printf("recv afterwards -> %zd %.*s\n", r, (int)(r > 0 ? r : 0), b);
	shutdown(cli, SHUT_WR);
	r = recv(srv, NULL, 10, 0);
	printf("recv(NULL, 10) at the end -> %zd %s\n", r, err(r));
	r = recv(srv, b, 0, 0);
	printf("recv(len 0) at the end -> %zd %s\n", r, err(r));
}

/* close(2) of a socket while another thread is blocked in recv on it: as Linux, the
 * blocked call goes on (the socket lives until it returns) and gets what comes. */
static void *blocked_reader(void *arg) {
	char b[16];
	ssize_t r = recv(*(int *)arg, b, sizeof b, 0);
	printf("recv blocked across close -> %zd %.*s\n", r, (int)(r > 0 ? r : 0), b);
	return NULL;
}

static void closewhileblocked(void) {
	int fd = srv;
	pthread_t t;
	pthread_create(&t, NULL, blocked_reader, &fd);
	usleep(100 * 1000); /* lets the reader block; not synchronisation */
	printf("close -> %d\n", close(srv));
	usleep(100 * 1000);
	if (write(cli, "after", 5) != 5) die("write");
	pthread_join(t, NULL);
	char b[4];
	ssize_t r = recv(cli, b, sizeof b, 0);
	printf("peer reads after the reader returned -> %zd %s\n", r, err(r));
}

int main(int argc, char **argv) {
	if (argc != 2) return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	pair();
	if (!strcmp(argv[1], "signals")) signals();
	else if (!strcmp(argv[1], "sockopts")) sockopts();
	else if (!strcmp(argv[1], "dups")) dups();
	else if (!strcmp(argv[1], "spawn")) spawn();
	else if (!strcmp(argv[1], "vfork")) vforked();
	else if (!strcmp(argv[1], "clone")) cloned();
	else if (!strcmp(argv[1], "timeouts")) timeouts();
	else if (!strcmp(argv[1], "apiedge")) apiedge();
	else if (!strcmp(argv[1], "closewhileblocked")) closewhileblocked();
	else return 2;
	return 0;
}
