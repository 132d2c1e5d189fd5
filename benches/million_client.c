/*
 * million_client.c - one of the client processes of benches/million.py: opens many idle
 * TCP (or WebSocket) connections to one server port from a few loopback source
 * addresses, holds them, and records when each received the broadcast.
 *
 * Single-threaded, epoll. Connections are opened at a steady rate (-r per second), at
 * most -P in progress at a time; a connect that fails or takes longer than -t seconds is
 * counted by its reason and tried again, at most -R more times. Connection i binds source
 * address i mod A of the -S list with IP_BIND_ADDRESS_NO_PORT, so the kernel picks the
 * port at connect time and only the 4-tuple must be unique: each source address gives
 * about 28,000 connections to one server port.
 *
 * With -W each connection sends a WebSocket upgrade request (no extensions) once TCP is
 * up and counts as established when the 101 arrived; the broadcast is then one unmasked
 * binary frame of M payload bytes. Without -W it is M raw bytes. The payload must be the
 * bytes 0, 1, ..., M-1 (benches/peers/million_server.py sends those); anything else, or
 * more bytes than one message, counts in "bad".
 *
 * stdout (one line each, flushed), read by million.py:
 *   RAMPED {json}     every connection is established or given up
 *   RECEIVED {json}   every established connection received the broadcast
 *   REPORT {json}     the answer to "REPORT T0" (below)
 * stdin, one command a line:
 *   REPORT T0         the state, and the broadcast's arrival times as a histogram of
 *                     milliseconds after T0 (CLOCK_MONOTONIC nanoseconds, as Python's
 *                     time.monotonic_ns() gives on Linux)
 *   QUIT, or EOF      close everything and exit
 * Diagnostics go to stderr.
 *
 * Build: gcc -O2 -o million_client million_client.c
 * Usage: million_client -H 127.0.0.1 -p PORT -n CONNS -S SRC1,SRC2,... [-r RATE] [-P PENDING]
 *                       [-t CONNECT_TIMEOUT] [-R RETRIES] [-M BYTES] [-W]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_SOURCES 256
#define MAX_ERRNO 256
#define HIST_MS 60000 /* arrival histogram: 1 ms buckets up to a minute, then one more */
#define STDIN_TOKEN UINT32_MAX

enum state { IDLE, CONNECTING, UPGRADING, OPEN, DONE, CLOSED };

struct conn {
    int fd;
    uint8_t state;
    uint8_t attempts;
    uint16_t got;          /* bytes of the 101 response's head, then of the message */
    uint64_t started_ns;   /* when the current connect began */
    uint64_t received_ns;  /* when the whole broadcast had arrived (0: not yet) */
};

static struct conn *conns;
static int n_conns;
static int ep;
static int websocket;
static int msg_size = 64;
static struct sockaddr_in server;
static struct sockaddr_in sources[MAX_SOURCES];
static int n_sources;
static int max_attempts = 4; /* 1 + retries */

/* counters */
static long n_open;          /* established (WebSocket: upgraded) and not closed */
static long n_given_up;      /* failed every attempt */
static long n_in_progress;   /* connecting or upgrading */
static long n_attempts;
static long n_failures;      /* failed attempts (each is retried while attempts remain) */
static long failures_by_errno[MAX_ERRNO];
static long n_timeouts;      /* attempts past the connect timeout */
static long n_refused_upgrade;
static long n_closed_after_open; /* the server closed an established connection */
static long n_received;
static long n_bad;
static uint64_t first_connect_ns, last_connect_ns, first_received_ns, last_received_ns;
static int next_conn;        /* the next connection never tried yet */
static int *retry_queue;     /* connections waiting for another attempt */
static int retry_head, retry_tail;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static const char upgrade_request[] =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

static void watch(int fd, uint32_t index, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.u64 = index};
    if (epoll_ctl(ep, op, fd, &ev) < 0)
        die("epoll_ctl");
}

/* Gives the current attempt of connection i up with reason err (an errno, or 0 for a
 * timeout / refused upgrade counted elsewhere); queues another attempt if any remain. */
static void fail_attempt(int i, int err)
{
    struct conn *c = &conns[i];
    n_failures++;
    if (err > 0 && err < MAX_ERRNO)
        failures_by_errno[err]++;
    if (c->fd >= 0) {
        close(c->fd); /* removes it from the epoll set */
        c->fd = -1;
    }
    n_in_progress--;
    c->got = 0;
    if (c->attempts < max_attempts) {
        c->state = IDLE;
        retry_queue[retry_tail++ % n_conns] = i;
    } else {
        c->state = CLOSED;
        n_given_up++;
    }
}

static void established(int i)
{
    uint64_t t = now_ns();
    conns[i].state = OPEN;
    conns[i].got = 0;
    n_in_progress--;
    n_open++;
    if (!first_connect_ns)
        first_connect_ns = t;
    last_connect_ns = t;
    watch(conns[i].fd, (uint32_t)i, EPOLLIN, EPOLL_CTL_MOD);
}

static void start_attempt(int i)
{
    struct conn *c = &conns[i];
    c->attempts++;
    n_attempts++;
    n_in_progress++;
    c->state = CONNECTING;
    c->got = 0;
    c->started_ns = now_ns();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->fd = -1;
        fail_attempt(i, errno);
        return;
    }
    c->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in *src = &sources[i % n_sources];
    if (bind(fd, (struct sockaddr *)src, sizeof *src) < 0) {
        fail_attempt(i, errno);
        return;
    }
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS) {
        fail_attempt(i, errno);
        return;
    }
    watch(fd, (uint32_t)i, EPOLLOUT, EPOLL_CTL_ADD);
}

/* The socket of connection i is writable while connecting: TCP is up, or it failed. */
static void on_connected(int i)
{
    struct conn *c = &conns[i];
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fail_attempt(i, err);
        return;
    }
    if (!websocket) {
        established(i);
        return;
    }
    ssize_t n = send(c->fd, upgrade_request, sizeof upgrade_request - 1, MSG_NOSIGNAL);
    if (n != (ssize_t)(sizeof upgrade_request - 1)) {
        fail_attempt(i, n < 0 ? errno : EMSGSIZE);
        return;
    }
    c->state = UPGRADING;
    watch(c->fd, (uint32_t)i, EPOLLIN, EPOLL_CTL_MOD);
}

/* Message bytes that arrived on an open connection: a 2-byte frame header first with -W,
 * then bytes 0..M-1. */
static void on_message_bytes(int i, const unsigned char *p, ssize_t n)
{
    struct conn *c = &conns[i];
    int header = websocket ? 2 : 0;
    int total = header + msg_size;
    for (ssize_t k = 0; k < n; k++, c->got++) {
        int at = c->got;
        int ok;
        if (at >= total)
            ok = 0;
        else if (at < header)
            ok = at == 0 ? p[k] == 0x82 : p[k] == (unsigned char)msg_size;
        else
            ok = p[k] == (unsigned char)(at - header);
        if (!ok) {
            if (n_bad++ < 5)
                fprintf(stderr, "million_client: connection %d: unexpected byte 0x%02x at %d\n",
                        i, p[k], at);
            return;
        }
    }
    if (c->got == total && c->state == OPEN) {
        uint64_t t = now_ns();
        c->state = DONE;
        c->received_ns = t;
        n_received++;
        if (!first_received_ns || t < first_received_ns)
            first_received_ns = t;
        if (t > last_received_ns)
            last_received_ns = t;
    }
}

static void on_readable(int i)
{
    struct conn *c = &conns[i];
    unsigned char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            if (c->state == UPGRADING) {
                /* the 101 head ends with CRLFCRLF; count its bytes in got, then what
                 * follows is message bytes (in practice nothing: the broadcast comes
                 * much later) */
                static const char end[] = "\r\n\r\n";
                ssize_t k = 0;
                if (c->got == 0 && (n < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0)) {
                    n_refused_upgrade++;
                    fail_attempt(i, 0);
                    return;
                }
                /* got counts how many bytes of "\r\n\r\n" matched so far (in the high
                 * bits a flag that the status line was checked) */
                int matched = c->got & 0xff;
                for (; k < n && matched < 4; k++)
                    matched = buf[k] == end[matched] ? matched + 1 : (buf[k] == '\r' ? 1 : 0);
                c->got = 0x100 | matched;
                if (matched == 4) {
                    established(i);
                    if (k < n)
                        on_message_bytes(i, buf + k, n - k);
                }
                continue;
            }
            on_message_bytes(i, buf, n);
            /* epoll is level-triggered: a short read took everything, and saves the
             * recv that would only say EAGAIN (a million of them in a broadcast) */
            if (n < (ssize_t)sizeof buf)
                return;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            int err = n == 0 ? ECONNRESET : errno;
            if (c->state == UPGRADING) {
                fail_attempt(i, err);
                return;
            }
            if (n_closed_after_open++ < 5)
                fprintf(stderr, "million_client: connection %d closed by the server (%s)\n", i,
                        n == 0 ? "EOF" : strerror(err));
            n_open--; /* OPEN or DONE */
            c->state = CLOSED;
            close(c->fd);
            c->fd = -1;
            return;
        }
        if (errno == EAGAIN)
            return;
    }
}

static void print_state(const char *tag, const char *extra)
{
    printf("%s {\"connections\": %d, \"established\": %ld, \"given_up\": %ld, \"attempts\": %ld, "
           "\"failed_attempts\": %ld, \"timeouts\": %ld, \"refused_upgrades\": %ld, "
           "\"closed_by_server\": %ld, \"received\": %ld, \"bad\": %ld, "
           "\"first_connect_ns\": %llu, \"last_connect_ns\": %llu, "
           "\"first_received_ns\": %llu, \"last_received_ns\": %llu, \"errors\": {",
           tag, n_conns, n_open, n_given_up, n_attempts, n_failures, n_timeouts,
           n_refused_upgrade, n_closed_after_open, n_received, n_bad,
           (unsigned long long)first_connect_ns, (unsigned long long)last_connect_ns,
           (unsigned long long)first_received_ns, (unsigned long long)last_received_ns);
    const char *sep = "";
    for (int e = 1; e < MAX_ERRNO; e++) {
        if (failures_by_errno[e]) {
            printf("%s\"%s\": %ld", sep, strerrorname_np(e) ? strerrorname_np(e) : "?",
                   failures_by_errno[e]);
            sep = ", ";
        }
    }
    printf("}%s}\n", extra ? extra : "");
    fflush(stdout);
}

/* REPORT T0: the state and the arrival histogram ("ms": [[ms after T0, count], ...]). */
static void report(uint64_t t0)
{
    static uint32_t hist[HIST_MS + 1];
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < n_conns; i++) {
        uint64_t t = conns[i].received_ns;
        if (!t)
            continue;
        uint64_t ms = t > t0 ? (t - t0) / 1000000ull : 0;
        hist[ms > HIST_MS ? HIST_MS : ms]++;
    }
    size_t cap = 64, len = 0;
    char *extra = malloc(cap);
    len += snprintf(extra + len, cap - len, ", \"ms\": [");
    const char *sep = "";
    for (int ms = 0; ms <= HIST_MS; ms++) {
        if (!hist[ms])
            continue;
        if (cap - len < 48) {
            cap *= 2;
            extra = realloc(extra, cap);
        }
        len += snprintf(extra + len, cap - len, "%s[%d, %u]", sep, ms, hist[ms]);
        sep = ", ";
    }
    if (cap - len < 4)
        extra = realloc(extra, cap += 4);
    snprintf(extra + len, cap - len, "]");
    print_state("REPORT", extra);
    free(extra);
}

/* Reads stdin's commands; returns 0 on QUIT or EOF. */
static int on_stdin(void)
{
    static char line[256];
    static size_t have;
    ssize_t n = read(0, line + have, sizeof line - 1 - have);
    if (n <= 0)
        return n < 0 && errno == EAGAIN;
    have += n;
    line[have] = 0;
    char *nl;
    while ((nl = strchr(line, '\n'))) {
        *nl = 0;
        if (strncmp(line, "REPORT", 6) == 0)
            report(strtoull(line + 6, NULL, 10));
        else if (strcmp(line, "QUIT") == 0)
            return 0;
        else
            fprintf(stderr, "million_client: unknown command '%s'\n", line);
        have -= (nl + 1 - line);
        memmove(line, nl + 1, have + 1);
    }
    if (have == sizeof line - 1)
        have = 0;
    return 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: million_client -H host -p port -n conns -S src1,src2,... [-r rate] "
                    "[-P pending] [-t connect_timeout] [-R retries] [-M bytes] [-W]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    double rate = 1000, connect_timeout = 10;
    int max_pending = 64, retries = 3;
    char *source_list = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "H:p:n:S:r:P:t:R:M:W")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': n_conns = atoi(optarg); break;
        case 'S': source_list = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'P': max_pending = atoi(optarg); break;
        case 't': connect_timeout = atof(optarg); break;
        case 'R': retries = atoi(optarg); break;
        case 'M': msg_size = atoi(optarg); break;
        case 'W': websocket = 1; break;
        default: usage();
        }
    }
    if (!port || n_conns <= 0 || !source_list || msg_size <= 0 || msg_size > 125 || rate <= 0)
        usage();
    for (char *tok = strtok(source_list, ","); tok; tok = strtok(NULL, ",")) {
        if (n_sources == MAX_SOURCES)
            usage();
        struct sockaddr_in *s = &sources[n_sources++];
        s->sin_family = AF_INET;
        if (inet_pton(AF_INET, tok, &s->sin_addr) != 1)
            usage();
    }
    server.sin_family = AF_INET;
    server.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &server.sin_addr) != 1)
        usage();

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)n_conns + 16 > rl.rlim_cur) {
        fprintf(stderr, "million_client: %d connections need more than RLIMIT_NOFILE=%llu\n",
                n_conns, (unsigned long long)rl.rlim_cur);
        return 2;
    }

    conns = calloc(n_conns, sizeof *conns);
    retry_queue = calloc(n_conns, sizeof *retry_queue);
    if (!conns || !retry_queue)
        die("calloc");
    for (int i = 0; i < n_conns; i++)
        conns[i].fd = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    watch(0, STDIN_TOKEN, EPOLLIN, EPOLL_CTL_ADD);

    max_attempts = retries + 1;
    const uint64_t timeout_ns = (uint64_t)(connect_timeout * 1e9);
    uint64_t ramp_start = now_ns(), last_sweep = ramp_start;
    long started = 0; /* attempts started, against the rate */
    int ramped = 0, received_said = 0;
    struct epoll_event events[1024];
    for (;;) {
        uint64_t t = now_ns();
        if (!ramped) {
            long allowed = (long)((double)(t - ramp_start) * 1e-9 * rate) + 1;
            while (started < allowed && n_in_progress < max_pending) {
                int i;
                if (retry_head != retry_tail)
                    i = retry_queue[retry_head++ % n_conns];
                else if (next_conn < n_conns)
                    i = next_conn++;
                else
                    break;
                start_attempt(i);
                started++;
            }
            if (t - last_sweep > 100000000ull) { /* every 0.1 s: attempts past the timeout */
                last_sweep = t;
                for (int i = 0; i < n_conns; i++) {
                    struct conn *c = &conns[i];
                    /* started_ns may be later than t: attempts started above */
                    if ((c->state == CONNECTING || c->state == UPGRADING) &&
                        t > c->started_ns && t - c->started_ns > timeout_ns) {
                        n_timeouts++;
                        fail_attempt(i, ETIMEDOUT);
                    }
                }
            }
            if (next_conn == n_conns && n_in_progress == 0 && retry_head == retry_tail) {
                ramped = 1;
                print_state("RAMPED", NULL);
            }
        }
        if (ramped && !received_said && n_open > 0 && n_received == n_open) {
            received_said = 1;
            print_state("RECEIVED", NULL);
        }
        int timeout_ms = ramped ? -1 : 2;
        int n = epoll_wait(ep, events, 1024, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            uint32_t idx = (uint32_t)events[k].data.u64;
            if (idx == STDIN_TOKEN) {
                if (!on_stdin())
                    return 0;
                continue;
            }
            struct conn *c = &conns[idx];
            if (c->fd < 0)
                continue;
            if (c->state == CONNECTING)
                on_connected((int)idx);
            else if (c->state == UPGRADING || c->state == OPEN || c->state == DONE)
                on_readable((int)idx);
        }
    }
}
