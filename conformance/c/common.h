/*
 * Shared helpers for the conformance test programs (stream.c, killpeer.c,
 * threadsock.c).
 *
 * The byte generator, the stream hash, the seed derivation and the size
 * distribution defined here are mirrored bit for bit by
 * conformance/src/proto.rs, so that C and Rust peers can check each other's
 * data. Change both or neither.
 *
 * Everything here uses plain blocking BSD socket calls on purpose: the shim
 * under test interposes exactly these. The helpers are static inline so that
 * each program compiles cleanly with -Wall -Werror while using only some.
 */
#ifndef RDMASOCK_CONFORMANCE_COMMON_H
#define RDMASOCK_CONFORMANCE_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* Largest single read or write the programs issue. */
#define MAX_CHUNK (256u * 1024u)

static const char *prog_name = "conformance";

__attribute__((noreturn, format(printf, 1, 2))) static inline void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s[%d]: ", prog_name, (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

#define die_errno(what) die("%s: %s", (what), strerror(errno))

/* ---- PRNG and byte generator -------------------------------------------- */

static inline uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void store_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/*
 * The payload stream for a seed: the little-endian bytes of successive
 * splitmix64 outputs. gen_fill may be called with any sizes; the stream does
 * not depend on how it is cut.
 */
struct gen {
    uint64_t state;
    uint64_t word; /* unused bytes of the current output, low byte first */
    unsigned left; /* how many bytes of word are unused */
};

static inline void gen_init(struct gen *g, uint64_t seed)
{
    g->state = seed;
    g->word = 0;
    g->left = 0;
}

static inline void gen_fill(struct gen *g, unsigned char *p, size_t n)
{
    while (n > 0 && g->left > 0) {
        *p++ = (unsigned char)g->word;
        g->word >>= 8;
        g->left--;
        n--;
    }
    while (n >= 8) {
        store_le64(p, splitmix64(&g->state));
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        g->word = splitmix64(&g->state);
        g->left = 8;
        while (n > 0) {
            *p++ = (unsigned char)g->word;
            g->word >>= 8;
            g->left--;
            n--;
        }
    }
}

/* ---- Stream hash ------------------------------------------------------- */

/*
 * A 64-bit hash over a byte stream, independent of how the stream is cut:
 * 8-byte little-endian words go through an xxhash-like round, a final partial
 * word is zero-padded, the total length is mixed in and the result goes
 * through the splitmix64 finalizer.
 */
struct hash {
    uint64_t h;
    uint64_t word;
    unsigned have; /* bytes collected in word */
    uint64_t len;
};

static inline void hash_init(struct hash *s)
{
    s->h = 0x243F6A8885A308D3ull;
    s->word = 0;
    s->have = 0;
    s->len = 0;
}

static inline uint64_t hash_round(uint64_t h, uint64_t w)
{
    h ^= w * 0x9E3779B97F4A7C15ull;
    h = (h << 29) | (h >> 35);
    return h * 0xC2B2AE3D27D4EB4Full + 0x165667B19E3779F9ull;
}

static inline void hash_update(struct hash *s, const unsigned char *p, size_t n)
{
    s->len += n;
    while (n > 0 && s->have > 0) {
        s->word |= (uint64_t)*p++ << (8 * s->have);
        n--;
        if (++s->have == 8) {
            s->h = hash_round(s->h, s->word);
            s->word = 0;
            s->have = 0;
        }
    }
    while (n >= 8) {
        s->h = hash_round(s->h, load_le64(p));
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        s->word |= (uint64_t)*p++ << (8 * s->have);
        s->have++;
        n--;
    }
}

static inline uint64_t hash_final(const struct hash *s)
{
    uint64_t h = s->h;
    if (s->have > 0)
        h = hash_round(h, s->word);
    h ^= s->len;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
}

/* ---- Sizes ---------------------------------------------------------------- */

/*
 * A random I/O size in 1 .. MAX_CHUNK, log-uniform over the power of two so
 * that tiny and large calls are both common.
 */
static inline size_t rand_size(uint64_t *rng)
{
    unsigned bits = (unsigned)(splitmix64(rng) % 19); /* 2^18 == MAX_CHUNK */
    return 1 + (size_t)(splitmix64(rng) & ((1ull << bits) - 1));
}

/* Parses a byte count with an optional binary suffix: 123, 64K, 16M, 1G. */
static inline uint64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        die("bad size '%s'", s);
    switch (*end) {
    case 'K': v <<= 10; end++; break;
    case 'M': v <<= 20; end++; break;
    case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end)
        die("bad size '%s'", s);
    return v;
}

static inline long parse_long(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        die("bad %s '%s'", what, s);
    return v;
}

/* ---- Blocking I/O loops ----------------------------------------------------- */

/* write() until all of p is written; returns 0, or -1 with errno set. */
static inline int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n > 0) {
        ssize_t r = write(fd, b, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/*
 * recv(MSG_WAITALL) until n bytes arrived. Returns n, fewer at EOF, or -1
 * with errno set. MSG_WAITALL may still return early (signal, EOF), hence the
 * loop.
 */
static inline ssize_t recv_all(int fd, void *p, size_t n)
{
    unsigned char *b = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, b + got, n - got, MSG_WAITALL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/*
 * Writes all of p in one chunk using write, send or writev (split into up to
 * four pieces), chosen by rng. Returns 0, or -1 with errno set.
 */
static inline int write_chunk(int fd, const unsigned char *p, size_t n, uint64_t *rng)
{
    while (n > 0) {
        ssize_t r;
        switch (splitmix64(rng) % 3) {
        case 0:
            r = write(fd, p, n);
            break;
        case 1:
            r = send(fd, p, n, 0);
            break;
        default: {
            struct iovec iov[4];
            int cnt = 0;
            size_t off = 0;
            int pieces = 1 + (int)(splitmix64(rng) % 4);
            while (cnt < pieces && off < n) {
                size_t len = (cnt == pieces - 1) ? n - off : 1 + (size_t)(splitmix64(rng) % (n - off));
                iov[cnt].iov_base = (void *)(p + off);
                iov[cnt].iov_len = len;
                off += len;
                cnt++;
            }
            r = writev(fd, iov, cnt);
            break;
        }
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/*
 * One read of up to n bytes using read, recv or readv (two pieces), chosen by
 * rng. Returns the count (0 at EOF), or -1 with errno set. Always inlined so
 * that, when the caller reads into an array of known size, _FORTIFY_SOURCE
 * turns read and recv into glibc's __read_chk and __recv_chk: entry points
 * the shim must interpose as well.
 */
__attribute__((always_inline)) static inline ssize_t read_chunk(int fd, unsigned char *p, size_t n, uint64_t *rng)
{
    for (;;) {
        ssize_t r;
        switch (splitmix64(rng) % 3) {
        case 0:
            r = read(fd, p, n);
            break;
        case 1:
            r = recv(fd, p, n, 0);
            break;
        default: {
            size_t first = n > 1 ? 1 + (size_t)(splitmix64(rng) % (n - 1)) : n;
            struct iovec iov[2] = {{p, first}, {p + first, n - first}};
            r = readv(fd, iov, n - first > 0 ? 2 : 1);
            break;
        }
        }
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

/* ---- Addresses ------------------------------------------------------------ */

/* Numeric address and port to a sockaddr (IPv4 or IPv6); dies on error. */
static inline void resolve(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        die("address %s port %s: %s", host, port, gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
}

/*
 * Listens on host:port (port 0 picks one) and prints "READY <port>" on
 * stdout, the line the tests wait for before starting clients.
 */
static inline int listen_ready(const char *host, const char *port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    resolve(host, port, &ss, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        die_errno("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die_errno("setsockopt SO_REUSEADDR");
    if (bind(fd, (struct sockaddr *)&ss, len) < 0)
        die_errno("bind");
    if (listen(fd, 128) < 0)
        die_errno("listen");
    len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        die_errno("getsockname");
    unsigned p = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    printf("READY %u\n", p);
    fflush(stdout);
    return fd;
}

static inline int connect_to(const char *host, const char *port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    resolve(host, port, &ss, &len);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        die_errno("socket");
    if (connect(fd, (struct sockaddr *)&ss, len) < 0)
        die_errno("connect");
    return fd;
}

static inline int accept_one(int lfd)
{
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0)
            return fd;
        if (errno != EINTR)
            die_errno("accept");
    }
}

/* Writes to a dead peer must fail with EPIPE rather than kill the process. */
static inline void ignore_sigpipe(void)
{
    signal(SIGPIPE, SIG_IGN);
}

#endif
