/*
 * stream: a verified bidirectional byte stream over TCP.
 *
 *   stream server BIND PORT MODE CONNS [WORKERS]
 *   stream client HOST PORT BYTES_OUT BYTES_IN SEED [CONNS] [THREADS]
 *
 * The server prints "READY <port>" once listening (PORT 0 picks a port),
 * serves exactly CONNS connections and prints
 * "DONE conns=N bytes_in=N bytes_out=N". MODE is how it serves them:
 *   iter     one at a time in the listening process
 *   prefork  WORKERS forked processes accept from the shared listener
 *   forkconn the listener forks a child per connection and closes its copy
 *   threads  a thread per connection
 *
 * The client runs THREADS threads (default 1), each making CONNS connections
 * (default 1) one after the other, and prints
 * "OK conns=N bytes_out=N bytes_in=N". BYTES_OUT and BYTES_IN take K/M/G
 * suffixes; a leading '~' (e.g. ~64K) makes the count random per connection,
 * uniform in 0 .. the value.
 *
 * Protocol of one connection (all integers 64-bit little-endian):
 *   client -> server  header: magic "RSTREAM1", bytes_back, seed_back
 *   client -> server  BYTES_OUT payload bytes, then shutdown(SHUT_WR)
 *   server -> client  hash of the payload it read until EOF
 *   server -> client  bytes_back bytes of the stream generated from
 *                     seed_back, then close
 * The client checks the hash against its own and compares the returned
 * stream byte by byte with its own copy of the generator, then expects EOF.
 * Every read and write uses a random size (1 byte .. 256 KiB) and a random
 * call (read/recv/readv, write/send/writev). Any mismatch or error is fatal:
 * a message on stderr and exit status 1.
 */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define STREAM_MAGIC 0x314D414552545352ull /* "RSTREAM1" little-endian */
#define HEADER_LEN 24
#define SERVER_READ_SALT 0x5EED000000000001ull
#define SERVER_WRITE_SALT 0x5EED000000000002ull

/* ---- server ---------------------------------------------------------------- */

/* Totals shared by all server processes and threads (MAP_SHARED memory). */
struct totals {
    atomic_ullong conns;
    atomic_ullong bytes_in;
    atomic_ullong bytes_out;
    atomic_ullong claimed; /* prefork: connections a worker committed to accept */
};

static struct totals *totals;

static void serve_conn(int fd)
{
    unsigned char hdr[HEADER_LEN];
    ssize_t got = recv_all(fd, hdr, sizeof hdr);
    if (got < 0)
        die_errno("server: reading header");
    if (got != HEADER_LEN)
        die("server: EOF inside the header after %zd bytes", got);
    if (load_le64(hdr) != STREAM_MAGIC)
        die("server: bad header magic %016" PRIx64, load_le64(hdr));
    uint64_t bytes_back = load_le64(hdr + 8);
    uint64_t seed_back = load_le64(hdr + 16);

    unsigned char *buf = malloc(MAX_CHUNK);
    if (!buf)
        die("out of memory");

    uint64_t rng = seed_back ^ SERVER_READ_SALT;
    struct hash h;
    hash_init(&h);
    for (;;) {
        ssize_t r = read_chunk(fd, buf, rand_size(&rng), &rng);
        if (r < 0)
            die("server: read after %" PRIu64 " payload bytes: %s", h.len, strerror(errno));
        if (r == 0)
            break;
        hash_update(&h, buf, (size_t)r);
    }
    uint64_t bytes_in = h.len;

    unsigned char digest[8];
    store_le64(digest, hash_final(&h));
    if (write_all(fd, digest, sizeof digest) < 0)
        die_errno("server: writing the hash");

    rng = seed_back ^ SERVER_WRITE_SALT;
    struct gen g;
    gen_init(&g, seed_back);
    uint64_t left = bytes_back;
    while (left > 0) {
        size_t n = rand_size(&rng);
        if (n > left)
            n = (size_t)left;
        gen_fill(&g, buf, n);
        if (write_chunk(fd, buf, n, &rng) < 0)
            die("server: write after %" PRIu64 " bytes: %s", bytes_back - left, strerror(errno));
        left -= n;
    }
    if (close(fd) < 0)
        die_errno("server: close");
    free(buf);

    atomic_fetch_add(&totals->conns, 1);
    atomic_fetch_add(&totals->bytes_in, bytes_in);
    atomic_fetch_add(&totals->bytes_out, bytes_back);
}

/* Waits for every child; any child that did not exit 0 fails the server. */
static void wait_children(long n)
{
    for (long i = 0; i < n; i++) {
        int status;
        pid_t pid;
        do
            pid = wait(&status);
        while (pid < 0 && errno == EINTR);
        if (pid < 0)
            die_errno("wait");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("server: child %d failed (status 0x%x)", (int)pid, status);
    }
}

static void *serve_thread(void *arg)
{
    serve_conn((int)(intptr_t)arg);
    return NULL;
}

static void run_server(int argc, char **argv)
{
    if (argc < 6)
        die("usage: stream server BIND PORT MODE CONNS [WORKERS]");
    const char *mode = argv[4];
    long conns = parse_long(argv[5], "CONNS");

    totals = mmap(NULL, sizeof *totals, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (totals == MAP_FAILED)
        die_errno("mmap");

    int lfd = listen_ready(argv[2], argv[3]);

    if (strcmp(mode, "iter") == 0) {
        for (long i = 0; i < conns; i++)
            serve_conn(accept_one(lfd));
    } else if (strcmp(mode, "threads") == 0) {
        pthread_t *tids = calloc((size_t)conns + 1, sizeof *tids);
        if (!tids)
            die("out of memory");
        for (long i = 0; i < conns; i++) {
            int fd = accept_one(lfd);
            int rc = pthread_create(&tids[i], NULL, serve_thread, (void *)(intptr_t)fd);
            if (rc)
                die("pthread_create: %s", strerror(rc));
        }
        for (long i = 0; i < conns; i++)
            pthread_join(tids[i], NULL);
        free(tids);
    } else if (strcmp(mode, "forkconn") == 0) {
        for (long i = 0; i < conns; i++) {
            int fd = accept_one(lfd);
            pid_t pid = fork();
            if (pid < 0)
                die_errno("fork");
            if (pid == 0) {
                close(lfd);
                serve_conn(fd);
                _exit(0);
            }
            /* The child owns the connection now; the parent's copy must not
               keep it open or affect it. */
            if (close(fd) < 0)
                die_errno("close");
        }
        wait_children(conns);
    } else if (strcmp(mode, "prefork") == 0) {
        if (argc < 7)
            die("prefork needs WORKERS");
        long workers = parse_long(argv[6], "WORKERS");
        for (long w = 0; w < workers; w++) {
            pid_t pid = fork();
            if (pid < 0)
                die_errno("fork");
            if (pid == 0) {
                /* Exactly CONNS clients connect, so a worker that claimed a
                   connection is sure to get one from accept. */
                while (atomic_fetch_add(&totals->claimed, 1) < (unsigned long long)conns)
                    serve_conn(accept_one(lfd));
                _exit(0);
            }
        }
        wait_children(workers);
    } else {
        die("unknown server mode '%s'", mode);
    }
    close(lfd);

    if (atomic_load(&totals->conns) != (unsigned long long)conns)
        die("server: served %llu connections, expected %ld", atomic_load(&totals->conns), conns);
    printf("DONE conns=%llu bytes_in=%llu bytes_out=%llu\n", atomic_load(&totals->conns),
           atomic_load(&totals->bytes_in), atomic_load(&totals->bytes_out));
}

/* ---- client ---------------------------------------------------------------- */

/* A byte count from the command line: fixed, or random per connection. */
struct spec {
    uint64_t max;
    int random;
};

static struct spec parse_spec(const char *s)
{
    struct spec sp = {0, 0};
    if (*s == '~') {
        sp.random = 1;
        s++;
    }
    sp.max = parse_size(s);
    return sp;
}

static uint64_t spec_value(struct spec sp, uint64_t r)
{
    return sp.random ? r % (sp.max + 1) : sp.max;
}

/* What one connection does; derived from (SEED, thread, connection). */
struct plan {
    uint64_t up_seed, back_seed, io_seed, bytes_out, bytes_in;
};

static struct plan plan_conn(uint64_t seed, uint64_t thread, uint64_t conn, struct spec out, struct spec in)
{
    uint64_t st = seed ^ (thread << 40) ^ (conn << 20);
    struct plan p;
    p.up_seed = splitmix64(&st);
    p.back_seed = splitmix64(&st);
    p.io_seed = splitmix64(&st);
    p.bytes_out = spec_value(out, splitmix64(&st));
    p.bytes_in = spec_value(in, splitmix64(&st));
    return p;
}

struct client_args {
    const char *host, *port;
    struct spec out, in;
    uint64_t seed;
    long conns;
    long thread;
    uint64_t bytes_out, bytes_in; /* results */
};

static size_t first_difference(const unsigned char *a, const unsigned char *b, size_t n)
{
    size_t i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

static void client_conn(struct client_args *a, long conn, unsigned char *buf, unsigned char *want)
{
    struct plan p = plan_conn(a->seed, (uint64_t)a->thread, (uint64_t)conn, a->out, a->in);
    uint64_t rng = p.io_seed;
    int fd = connect_to(a->host, a->port);

    unsigned char hdr[HEADER_LEN];
    store_le64(hdr, STREAM_MAGIC);
    store_le64(hdr + 8, p.bytes_in);
    store_le64(hdr + 16, p.back_seed);
    if (write_all(fd, hdr, sizeof hdr) < 0)
        die("client %ld/%ld: writing the header: %s", a->thread, conn, strerror(errno));

    struct gen g;
    gen_init(&g, p.up_seed);
    struct hash h;
    hash_init(&h);
    uint64_t left = p.bytes_out;
    while (left > 0) {
        size_t n = rand_size(&rng);
        if (n > left)
            n = (size_t)left;
        gen_fill(&g, buf, n);
        hash_update(&h, buf, n);
        if (write_chunk(fd, buf, n, &rng) < 0)
            die("client %ld/%ld: write after %" PRIu64 " bytes: %s", a->thread, conn, p.bytes_out - left,
                strerror(errno));
        left -= n;
    }
    /* Half-close: the server reads until this EOF, then answers. */
    if (shutdown(fd, SHUT_WR) < 0)
        die("client %ld/%ld: shutdown: %s", a->thread, conn, strerror(errno));

    unsigned char digest[8];
    ssize_t got = recv_all(fd, digest, sizeof digest);
    if (got < 0)
        die("client %ld/%ld: reading the hash: %s", a->thread, conn, strerror(errno));
    if (got != 8)
        die("client %ld/%ld: EOF after %zd bytes of the hash", a->thread, conn, got);
    if (load_le64(digest) != hash_final(&h))
        die("client %ld/%ld: server hashed %016" PRIx64 " over what it read, sent %" PRIu64
            " bytes hashing to %016" PRIx64,
            a->thread, conn, load_le64(digest), p.bytes_out, hash_final(&h));

    gen_init(&g, p.back_seed);
    uint64_t seen = 0;
    for (;;) {
        ssize_t r = read_chunk(fd, buf, rand_size(&rng), &rng);
        if (r < 0)
            die("client %ld/%ld: read after %" PRIu64 " of %" PRIu64 " bytes: %s", a->thread, conn, seen,
                p.bytes_in, strerror(errno));
        if (r == 0)
            break;
        if (seen + (uint64_t)r > p.bytes_in)
            die("client %ld/%ld: server sent more than the %" PRIu64 " bytes asked for", a->thread, conn,
                p.bytes_in);
        gen_fill(&g, want, (size_t)r);
        if (memcmp(buf, want, (size_t)r) != 0)
            die("client %ld/%ld: returned stream differs at byte %" PRIu64, a->thread, conn,
                seen + first_difference(buf, want, (size_t)r));
        seen += (uint64_t)r;
    }
    if (seen != p.bytes_in)
        die("client %ld/%ld: EOF after %" PRIu64 " of %" PRIu64 " bytes", a->thread, conn, seen, p.bytes_in);
    if (close(fd) < 0)
        die_errno("client: close");
    a->bytes_out += p.bytes_out;
    a->bytes_in += p.bytes_in;
}

static void *client_thread(void *arg)
{
    struct client_args *a = arg;
    unsigned char *buf = malloc(MAX_CHUNK), *want = malloc(MAX_CHUNK);
    if (!buf || !want)
        die("out of memory");
    for (long c = 0; c < a->conns; c++)
        client_conn(a, c, buf, want);
    free(buf);
    free(want);
    return NULL;
}

static void run_client(int argc, char **argv)
{
    if (argc < 7)
        die("usage: stream client HOST PORT BYTES_OUT BYTES_IN SEED [CONNS] [THREADS]");
    long conns = argc > 7 ? parse_long(argv[7], "CONNS") : 1;
    long threads = argc > 8 ? parse_long(argv[8], "THREADS") : 1;
    if (threads < 1)
        die("THREADS must be at least 1");
    struct client_args *args = calloc((size_t)threads, sizeof *args);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    if (!args || !tids)
        die("out of memory");
    for (long t = 0; t < threads; t++) {
        args[t] = (struct client_args){
            .host = argv[2],
            .port = argv[3],
            .out = parse_spec(argv[4]),
            .in = parse_spec(argv[5]),
            .seed = parse_size(argv[6]),
            .conns = conns,
            .thread = t,
        };
        int rc = pthread_create(&tids[t], NULL, client_thread, &args[t]);
        if (rc)
            die("pthread_create: %s", strerror(rc));
    }
    uint64_t out = 0, in = 0;
    for (long t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        out += args[t].bytes_out;
        in += args[t].bytes_in;
    }
    printf("OK conns=%ld bytes_out=%" PRIu64 " bytes_in=%" PRIu64 "\n", conns * threads, out, in);
    free(args);
    free(tids);
}

int main(int argc, char **argv)
{
    prog_name = "stream";
    ignore_sigpipe();
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        run_server(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "client") == 0)
        run_client(argc, argv);
    else
        die("usage: stream server|client ...");
    return 0;
}
