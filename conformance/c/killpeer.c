/*
 * killpeer: one side of a transfer whose other side gets SIGKILLed.
 *
 *   killpeer server BIND PORT BEHAVIOUR
 *   killpeer client HOST PORT BEHAVIOUR
 *
 * The server prints "READY <port>", accepts one connection and closes the
 * listener; the client connects. Both then act out BEHAVIOUR on the
 * connection:
 *   read           read (and verify) until EOF or an error
 *   write          write the generated stream until an error
 *   read-stall:N   read (and verify) exactly N bytes, then stall
 *   write-stall:N  write exactly N bytes, then stall
 * A stalling side prints "STALLED" and then waits in pause() to be killed.
 * The surviving side reports what ended its transfer and exits 0:
 *   "EOF after N bytes last_io_ms=T"
 *   "ERR <ECONNRESET|EPIPE|...> after N bytes last_io_ms=T errno=E"
 * where N counts the payload bytes it moved and T is how long its last
 * blocking call took (the time from the call until the peer's death reached
 * it, when it was blocked at the kill). Corrupt data exits 1.
 *
 * Data is the generator stream for a fixed seed, so a reader can check every
 * byte it got, including the bytes still in flight when the writer died.
 */
#include "common.h"

#include <time.h>

#define KILLPEER_SEED 0x4B494C4C50454552ull /* "KILLPEER" */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const char *errno_name(int e)
{
    switch (e) {
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case ECONNABORTED: return "ECONNABORTED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ENOTCONN: return "ENOTCONN";
    default: return "other";
    }
}

__attribute__((noreturn)) static void stall(void)
{
    printf("STALLED\n");
    fflush(stdout);
    for (;;)
        pause();
}

__attribute__((noreturn)) static void report_error(int err, uint64_t bytes, double call_ms)
{
    printf("ERR %s after %" PRIu64 " bytes last_io_ms=%.1f errno=%d\n", errno_name(err), bytes, call_ms, err);
    exit(0);
}

/*
 * Kept out of reach of the optimizer (noipa) so that it cannot prove the
 * sizes fit the arrays do_read reads into; _FORTIFY_SOURCE then routes those
 * reads through glibc's __read_chk and __recv_chk, which a shim has to
 * interpose as well as read and recv.
 */
__attribute__((noipa)) static size_t read_size(uint64_t *rng)
{
    return rand_size(rng);
}

/* Reads up to limit bytes (UINT64_MAX: until EOF), verifying each byte. */
static void do_read(int fd, uint64_t limit)
{
    static unsigned char buf[MAX_CHUNK], want[MAX_CHUNK];
    struct gen g;
    gen_init(&g, KILLPEER_SEED);
    uint64_t rng = KILLPEER_SEED ^ 1;
    uint64_t got = 0;
    while (got < limit) {
        size_t n = read_size(&rng);
        if (n > limit - got)
            n = (size_t)(limit - got);
        double start = now_ms();
        ssize_t r = read_chunk(fd, buf, n, &rng);
        double took = now_ms() - start;
        if (r < 0)
            report_error(errno, got, took);
        if (r == 0) {
            if (limit != UINT64_MAX)
                die("EOF after %" PRIu64 " of %" PRIu64 " bytes", got, limit);
            printf("EOF after %" PRIu64 " bytes last_io_ms=%.1f\n", got, took);
            exit(0);
        }
        gen_fill(&g, want, (size_t)r);
        if (memcmp(buf, want, (size_t)r) != 0)
            die("data differs within bytes %" PRIu64 "..%" PRIu64, got, got + (uint64_t)r);
        got += (uint64_t)r;
    }
}

/* Writes limit bytes (UINT64_MAX: until an error). */
static void do_write(int fd, uint64_t limit)
{
    unsigned char *buf = malloc(MAX_CHUNK);
    if (!buf)
        die("out of memory");
    struct gen g;
    gen_init(&g, KILLPEER_SEED);
    uint64_t rng = KILLPEER_SEED ^ 2;
    uint64_t put = 0;
    while (put < limit) {
        size_t n = rand_size(&rng);
        if (n > limit - put)
            n = (size_t)(limit - put);
        gen_fill(&g, buf, n);
        /* One write call per chunk so that the time of the failing call is
           what gets reported; a short write resumes with the rest. */
        size_t off = 0;
        while (off < n) {
            double start = now_ms();
            ssize_t r = write(fd, buf + off, n - off);
            double took = now_ms() - start;
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                report_error(errno, put + off, took);
            off += (size_t)r;
        }
        put += n;
    }
    free(buf);
}

static void act(int fd, const char *behaviour)
{
    if (strcmp(behaviour, "read") == 0) {
        do_read(fd, UINT64_MAX);
    } else if (strcmp(behaviour, "write") == 0) {
        do_write(fd, UINT64_MAX);
    } else if (strncmp(behaviour, "read-stall:", 11) == 0) {
        do_read(fd, parse_size(behaviour + 11));
        stall();
    } else if (strncmp(behaviour, "write-stall:", 12) == 0) {
        do_write(fd, parse_size(behaviour + 12));
        stall();
    } else {
        die("unknown behaviour '%s'", behaviour);
    }
}

int main(int argc, char **argv)
{
    prog_name = "killpeer";
    ignore_sigpipe();
    if (argc != 5)
        die("usage: killpeer server BIND PORT BEHAVIOUR | killpeer client HOST PORT BEHAVIOUR");
    int fd;
    if (strcmp(argv[1], "server") == 0) {
        int lfd = listen_ready(argv[2], argv[3]);
        fd = accept_one(lfd);
        close(lfd);
    } else if (strcmp(argv[1], "client") == 0) {
        fd = connect_to(argv[2], argv[3]);
    } else {
        die("unknown role '%s'", argv[1]);
    }
    act(fd, argv[4]);
    die("behaviour '%s' ended without an EOF or an error", argv[4]);
}
