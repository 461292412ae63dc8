/*
 * threadsock: several threads writing records to one socket at once.
 *
 *   threadsock server BIND PORT THREADS RECORDS RECSIZE
 *   threadsock client HOST PORT THREADS RECORDS RECSIZE
 *
 * The client starts THREADS writer threads on ONE connected socket; each
 * writes RECORDS records of RECSIZE bytes, every record with a single write()
 * call. A record is
 *   u32 magic "TREC", u32 thread, u64 sequence number,
 *   RECSIZE-24 bytes generated from (thread, sequence),
 *   u64 hash of everything before it
 * (little-endian). The server reads the stream with random read sizes and
 * checks that every record is intact (no bytes of another write inside it)
 * and that each thread's records arrive in order, then prints
 * "DONE records=N" once the client's EOF arrives; the client prints
 * "OK records=N".
 *
 * Why records are expected intact: the socket lock makes a write() on a Linux
 * TCP socket atomic with respect to other writers unless the call has to wait
 * for send-buffer space in the middle. So the server acknowledges progress
 * (u64 count of records received, every ACK_EVERY records and at the end) on
 * the same socket, read by a separate client thread, and writers keep at most
 * WINDOW records in flight, far below the send buffer the client sets. A
 * socket layer that interleaves concurrent write() calls without such a wait
 * fails this test. Both sides set TCP_NODELAY: the small acks and records
 * would otherwise wait on Nagle's algorithm and delayed ACKs for milliseconds
 * each.
 */
#include "common.h"

#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>

#define REC_MAGIC 0x43455254u /* "TREC" little-endian */
#define REC_MIN 32
#define ACK_EVERY 8
#define WINDOW 32
#define SNDBUF (256 * 1024)

struct params {
    long threads, records, recsize;
};

static struct params parse_params(char **argv)
{
    struct params p = {
        parse_long(argv[4], "THREADS"),
        parse_long(argv[5], "RECORDS"),
        parse_long(argv[6], "RECSIZE"),
    };
    if (p.threads < 1 || p.records < 1 || p.recsize < REC_MIN || p.recsize > (long)MAX_CHUNK)
        die("need THREADS >= 1, RECORDS >= 1, %d <= RECSIZE <= %u", REC_MIN, MAX_CHUNK);
    return p;
}

static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void fill_record(unsigned char *rec, long size, uint32_t thread, uint64_t seq)
{
    for (int i = 0; i < 4; i++) {
        rec[i] = (unsigned char)(REC_MAGIC >> (8 * i));
        rec[4 + i] = (unsigned char)(thread >> (8 * i));
    }
    store_le64(rec + 8, seq);
    struct gen g;
    gen_init(&g, ((uint64_t)thread << 48) ^ seq);
    gen_fill(&g, rec + 16, (size_t)size - 24);
    struct hash h;
    hash_init(&h);
    hash_update(&h, rec, (size_t)size - 8);
    store_le64(rec + size - 8, hash_final(&h));
}

/* ---- server ---------------------------------------------------------------- */

static void send_ack(int fd, uint64_t count)
{
    unsigned char b[8];
    store_le64(b, count);
    if (write_all(fd, b, sizeof b) < 0)
        die_errno("server: writing an ack");
}

static void set_nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die_errno("setsockopt TCP_NODELAY");
}

static void run_server(struct params p, int fd)
{
    set_nodelay(fd);
    uint64_t total = (uint64_t)p.threads * (uint64_t)p.records;
    uint64_t *next = calloc((size_t)p.threads, sizeof *next);
    size_t cap = MAX_CHUNK + (size_t)p.recsize;
    unsigned char *buf = malloc(cap), *want = malloc((size_t)p.recsize);
    if (!next || !buf || !want)
        die("out of memory");
    uint64_t rng = 0x7EAD;
    size_t have = 0;
    uint64_t count = 0;
    for (;;) {
        ssize_t r = read_chunk(fd, buf + have, rand_size(&rng), &rng);
        if (r < 0)
            die("server: read after %" PRIu64 " records: %s", count, strerror(errno));
        if (r == 0)
            break;
        have += (size_t)r;
        size_t off = 0;
        while (have - off >= (size_t)p.recsize) {
            unsigned char *rec = buf + off;
            uint32_t thread = load_le32(rec + 4);
            uint64_t seq = load_le64(rec + 8);
            if (load_le32(rec) != REC_MAGIC || thread >= (uint64_t)p.threads)
                die("record %" PRIu64 ": bad magic or thread (interleaved writes?)", count);
            if (seq != next[thread])
                die("record %" PRIu64 ": thread %u sequence %" PRIu64 ", expected %" PRIu64, count, thread, seq,
                    next[thread]);
            fill_record(want, p.recsize, thread, seq);
            if (memcmp(rec, want, (size_t)p.recsize) != 0)
                die("record %" PRIu64 " (thread %u, sequence %" PRIu64 ") is corrupt (interleaved writes?)", count,
                    thread, seq);
            next[thread]++;
            count++;
            off += (size_t)p.recsize;
            if (count % ACK_EVERY == 0 || count == total)
                send_ack(fd, count);
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        if (count > total)
            die("more records than expected");
    }
    if (have != 0)
        die("EOF inside a record (%zu stray bytes)", have);
    for (long t = 0; t < p.threads; t++)
        if (next[t] != (uint64_t)p.records)
            die("thread %ld: %" PRIu64 " records of %ld", t, next[t], p.records);
    if (close(fd) < 0)
        die_errno("close");
    printf("DONE records=%" PRIu64 "\n", count);
    free(next);
    free(buf);
    free(want);
}

/* ---- client ---------------------------------------------------------------- */

struct shared {
    int fd;
    struct params p;
    atomic_ullong slots; /* records handed out to writers */
    pthread_mutex_t lock;
    pthread_cond_t acked_cv;
    uint64_t acked; /* records the server confirmed */
};

struct writer {
    struct shared *s;
    uint32_t thread;
};

static void *writer_thread(void *arg)
{
    struct writer *w = arg;
    struct shared *s = w->s;
    unsigned char *rec = malloc((size_t)s->p.recsize);
    if (!rec)
        die("out of memory");
    for (uint64_t seq = 0; seq < (uint64_t)s->p.records; seq++) {
        uint64_t slot = atomic_fetch_add(&s->slots, 1);
        pthread_mutex_lock(&s->lock);
        while (slot >= s->acked + WINDOW)
            pthread_cond_wait(&s->acked_cv, &s->lock);
        pthread_mutex_unlock(&s->lock);
        fill_record(rec, s->p.recsize, w->thread, seq);
        ssize_t r;
        do
            r = write(s->fd, rec, (size_t)s->p.recsize);
        while (r < 0 && errno == EINTR);
        if (r < 0)
            die("thread %u: write: %s", w->thread, strerror(errno));
        /* Finishing a short write with a second call could interleave with
           another thread, so a short write is a failure in itself. */
        if (r != s->p.recsize)
            die("thread %u: short write %zd of %ld", w->thread, r, s->p.recsize);
    }
    free(rec);
    return NULL;
}

static void run_client(struct params p, int fd)
{
    set_nodelay(fd);
    int sndbuf = SNDBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0)
        die_errno("setsockopt SO_SNDBUF");
    struct shared s = {.fd = fd, .p = p, .acked = 0};
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.acked_cv, NULL);
    struct writer *ws = calloc((size_t)p.threads, sizeof *ws);
    pthread_t *tids = calloc((size_t)p.threads, sizeof *tids);
    if (!ws || !tids)
        die("out of memory");
    for (long t = 0; t < p.threads; t++) {
        ws[t] = (struct writer){&s, (uint32_t)t};
        int rc = pthread_create(&tids[t], NULL, writer_thread, &ws[t]);
        if (rc)
            die("pthread_create: %s", strerror(rc));
    }

    /* This thread reads the acknowledgements while the writers write. */
    uint64_t total = (uint64_t)p.threads * (uint64_t)p.records;
    uint64_t acked = 0;
    while (acked < total) {
        unsigned char b[8];
        ssize_t got = recv_all(fd, b, sizeof b);
        if (got != 8)
            die("reading an ack: %s", got < 0 ? strerror(errno) : "EOF");
        acked = load_le64(b);
        pthread_mutex_lock(&s.lock);
        s.acked = acked;
        pthread_cond_broadcast(&s.acked_cv);
        pthread_mutex_unlock(&s.lock);
    }
    for (long t = 0; t < p.threads; t++)
        pthread_join(tids[t], NULL);
    if (shutdown(fd, SHUT_WR) < 0)
        die_errno("shutdown");
    unsigned char extra;
    ssize_t r = read(fd, &extra, 1);
    if (r != 0)
        die("expected EOF after the last ack, read returned %zd", r);
    if (close(fd) < 0)
        die_errno("close");
    printf("OK records=%" PRIu64 "\n", total);
    free(ws);
    free(tids);
}

int main(int argc, char **argv)
{
    prog_name = "threadsock";
    ignore_sigpipe();
    if (argc != 7)
        die("usage: threadsock server|client HOST PORT THREADS RECORDS RECSIZE");
    struct params p = parse_params(argv);
    if (strcmp(argv[1], "server") == 0) {
        int lfd = listen_ready(argv[2], argv[3]);
        int fd = accept_one(lfd);
        close(lfd);
        run_server(p, fd);
    } else if (strcmp(argv[1], "client") == 0) {
        run_client(p, connect_to(argv[2], argv[3]));
    } else {
        die("unknown role '%s'", argv[1]);
    }
    return 0;
}
