/*
 * loadgen.c - a small single-threaded epoll TCP (or Unix-socket) load generator for echo
 * servers.
 *
 * Each of C connections keeps exactly I messages of S bytes outstanding: it
 * sends I messages up front and, every time S more bytes have come back, sends
 * one more. TCP may split or glue data arbitrarily, so only bytes are counted,
 * never reads.
 *
 * Every connection sends its own pseudo-random byte stream (a window into a
 * shared random pattern, starting at a per-connection offset) and checks that
 * what comes back is exactly that stream. Any mismatch, unexpected close,
 * socket error or surplus byte is counted in "errors".
 *
 * Output (stdout, one line each, flushed):
 *   START                          when the measured window begins (after warmup)
 *   {"messages": N, ...}           at the end, counting only the measured window
 * Diagnostics go to stderr.
 *
 * Build: gcc -O2 -o loadgen loadgen.c -lssl -lcrypto
 * Usage: loadgen [-H host] [-p port | -U path] [-c conns] [-s size] [-i inflight]
 *                [-d duration] [-w warmup] [-f header_size] [-b] [-W] [-T [-N name]] [-R]
 *
 * -U PATH connects every connection to the Unix-domain stream socket at PATH instead
 * of host:port (-H and -p are then ignored). Everything else works the same.
 *
 * -f H frames every message for a length-prefix server: its first H bytes (1, 2, 4 or
 * 8) hold the length of the rest, big-endian. The stream is still checked byte for byte:
 * a length-prefix echo returns header and payload unchanged.
 *
 * -W speaks WebSocket: each connection first sends an upgrade request (no extensions)
 * and waits for "101", then every message is one masked binary frame of S payload bytes
 * (a random mask key per message). The echoed frames (unmasked, same payload) are
 * checked byte for byte against the stream of expected server frames.
 *
 * -T speaks TLS (OpenSSL, any version the server offers, the certificate not verified: a
 * benchmark) over each connection; with -W that is wss://. -N NAME sets the SNI name
 * (default localhost).
 *
 * -R measures full handshakes: each connection connects, completes a TLS handshake
 * (with -T; a new session every time, never resumed), sends one message of S bytes,
 * reads its echo, closes, and starts again. "messages" then counts those cycles.
 *
 * -b busy-polls (epoll_wait with a zero timeout) instead of sleeping, so the
 * server never has to wake the load generator up: on a VM a cross-CPU wakeup
 * (an IPI) is expensive, and an idle load generator would make the server pay
 * for it on every send. "idle_seconds" in the result is the time of the window
 * the load generator spent waiting with nothing to do (its slack).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* Pattern length: a prime, so that it never lines up with message sizes. */
#define PATTERN_MAX 1048573u /* a prime: connections' streams do not line up */
#define CHUNK (256 * 1024) /* max bytes per read()/send() call */
#define CONNECT_BATCH 64    /* connections in progress at once while connecting */

struct conn {
    int fd;
    SSL *ssl;          /* -T: the connection's TLS, NULL otherwise */
    int state;         /* -R: where the cycle is (CYCLE_*) */
    int failures;      /* -R: connects failed in a row */
    int alive;
    int want_out;      /* EPOLLOUT registered */
    uint32_t start;    /* offset of this connection's stream in the pattern */
    uint32_t rstart;   /* offset of the expected replies in the reply pattern */
    uint64_t sent;     /* bytes written so far */
    uint64_t recvd;    /* bytes received (and checked) so far */
    uint64_t to_send;  /* bytes of outstanding messages not yet written */
};

static unsigned char *pattern; /* pattern_len + CHUNK bytes, tail repeats the head */
static uint32_t pattern_len = PATTERN_MAX;
static unsigned char *rbuf;
/* What comes back: the pattern itself for plain echo, server frames for WebSocket. */
static unsigned char *rpattern;
static uint32_t rpattern_len;
static size_t send_size, reply_size; /* bytes of one message each way */
static int websocket;
static struct conn *conns;
static int nconns;
static size_t msg_size;
static int epfd;
static volatile sig_atomic_t stop_flag;
static SSL_CTX *tls_ctx;       /* -T */
static const char *tls_name = "localhost";
static int reconnect;          /* -R */
static struct sockaddr_storage target;
static socklen_t target_len;

/* -R: a connection's cycle. */
enum { CYCLE_CONNECTING, CYCLE_HANDSHAKING, CYCLE_RUNNING };

/* counters (total since traffic started) */
static uint64_t c_messages, c_bytes, c_errors, c_mismatch, c_closed;
/* -R: connects refused or failed, tried again (a new port may meet an old one's TIME_WAIT
 * under heavy churn on loopback): not the server's error, but reported. */
static uint64_t c_connect_retries;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t xorshift64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [-H host] [-p port | -U path] [-c conns] [-s size] [-i inflight]\n"
            "          [-d duration_s] [-w warmup_s] [-f header_size] [-b] [-W] [-T [-N name]]\n"
            "          [-R]\n",
            argv0);
    exit(2);
}

/* What a failed SSL call means, as send(2)/recv(2) would say it: -1 with EAGAIN when it
 * must wait, 0 at the end of the stream, -1 with errno otherwise. */
static ssize_t tls_result(struct conn *c, int ret) {
    int err = SSL_get_error(c->ssl, ret);
    switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0) return 0;
        return -1;
    default:
        if (!stop_flag) ERR_print_errors_fp(stderr);
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
}

/* send(2) and recv(2), through TLS with -T. */
static ssize_t io_send(struct conn *c, const void *buf, size_t n) {
    if (!c->ssl) return send(c->fd, buf, n, MSG_NOSIGNAL);
    size_t done;
    int ret = SSL_write_ex(c->ssl, buf, n, &done);
    return ret == 1 ? (ssize_t)done : tls_result(c, ret);
}

static ssize_t io_recv(struct conn *c, void *buf, size_t n) {
    if (!c->ssl) return recv(c->fd, buf, n, 0);
    size_t done;
    int ret = SSL_read_ex(c->ssl, buf, n, &done);
    return ret == 1 ? (ssize_t)done : tls_result(c, ret);
}

/* A new TLS session over c->fd (client side, SNI tls_name). */
static void tls_attach(struct conn *c) {
    c->ssl = SSL_new(tls_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_set_tlsext_host_name(c->ssl, tls_name) != 1) {
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    SSL_set_connect_state(c->ssl);
}

/* One step of the handshake: 1 done, 0 must wait, -1 failed. */
static int tls_step(struct conn *c) {
    int ret = SSL_do_handshake(c->ssl);
    if (ret == 1) return 1;
    if (tls_result(c, ret) < 0 && errno == EAGAIN) return 0;
    return -1;
}

static void tls_setup(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) {
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(tls_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_read_ahead(tls_ctx, 1);
}

static void set_out(struct conn *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {0};
    ev.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0);
    ev.data.u32 = (uint32_t)(c - conns);
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        perror("epoll_ctl MOD");
        exit(1);
    }
    c->want_out = on;
}

static void kill_conn(struct conn *c, const char *why, int err) {
    if (!c->alive) return;
    if (err)
        fprintf(stderr, "loadgen: connection %d: %s: %s\n", (int)(c - conns), why, strerror(err));
    else
        fprintf(stderr, "loadgen: connection %d: %s\n", (int)(c - conns), why);
    c->alive = 0;
    c_errors++;
    c_closed++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
}

/* Write as much of the outstanding data as the socket takes. */
static void flush_conn(struct conn *c) {
    while (c->alive && c->to_send > 0) {
        size_t off = (size_t)((c->start + c->sent) % pattern_len);
        size_t n = c->to_send < CHUNK ? (size_t)c->to_send : CHUNK;
        ssize_t w = io_send(c, pattern + off, n);
        if (w > 0) {
            c->sent += (uint64_t)w;
            c->to_send -= (uint64_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_out(c, 1);
            return;
        }
        if (w < 0 && errno == EINTR) continue;
        kill_conn(c, "send", w < 0 ? errno : 0);
        return;
    }
    if (c->alive) set_out(c, 0);
}

static void account(struct conn *c, size_t n);
static void cycle_start(struct conn *c);

/* Reads what there is (once in plain TCP: level-triggered epoll brings us back; until
 * TLS has nothing left, as what it read ahead raises no event), checks and accounts. */
static void read_conn(struct conn *c) {
    for (int round = 0; round < 64 && c->alive; round++) {
        ssize_t r = io_recv(c, rbuf, CHUNK);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
            kill_conn(c, "recv", errno);
            return;
        }
        if (r == 0) {
            kill_conn(c, "closed by server", 0);
            return;
        }
        account(c, (size_t)r);
        if (!c->ssl) return;
    }
}

/* Checks `n` bytes just received against the stream expected back, and sends one more
 * message for each completed. */
static void account(struct conn *c, size_t n) {
    /* A WebSocket server can only answer whole frames; a raw echo answers any byte. */
    uint64_t answerable = websocket ? (c->sent / send_size) * reply_size : c->sent;
    if (c->recvd + n > answerable) {
        if (c_mismatch < 10)
            fprintf(stderr, "loadgen: connection %d: received %llu bytes but sent only %llu\n",
                    (int)(c - conns), (unsigned long long)(c->recvd + n),
                    (unsigned long long)c->sent);
        c_errors++;
        c_mismatch++;
    } else {
        size_t off = (size_t)((c->rstart + c->recvd) % rpattern_len);
        if (memcmp(rbuf, rpattern + off, n) != 0) {
            if (c_mismatch < 10) {
                size_t i = 0;
                while (i < n && rbuf[i] == rpattern[off + i]) i++;
                fprintf(stderr,
                        "loadgen: connection %d: echoed data mismatch at stream byte %llu "
                        "(got 0x%02x, want 0x%02x)\n",
                        (int)(c - conns), (unsigned long long)(c->recvd + i), rbuf[i],
                        rpattern[off + i]);
            }
            c_errors++;
            c_mismatch++;
        }
    }
    uint64_t before = c->recvd / reply_size;
    c->recvd += n;
    uint64_t done = c->recvd / reply_size - before;
    c_bytes += n;
    if (done && reconnect) {
        c_messages += done;
        cycle_start(c); /* the next full handshake */
    } else if (done) {
        c_messages += done;
        c->to_send += done * send_size;
        flush_conn(c);
    }
}

static int make_socket(const struct sockaddr_storage *sa, socklen_t salen) {
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    if (sa->ss_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A Unix socket connects at once, or fails with EAGAIN when the listen backlog is full. */
    if (connect(fd, (const struct sockaddr *)sa, salen) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    return fd;
}

/* -R: (re)starts connection c's cycle: a new socket connecting, then (with -T) a new TLS
 * session, one message, its echo. */
static void cycle_start(struct conn *c) {
    if (c->fd > 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        if (c->ssl) {
            SSL_shutdown(c->ssl); /* close_notify, as a polite client sends */
            SSL_free(c->ssl);
            c->ssl = NULL;
        }
        close(c->fd);
    }
    c->fd = make_socket(&target, target_len);
    c->state = CYCLE_CONNECTING;
    c->sent = c->recvd = c->to_send = 0;
    struct epoll_event ev = {0};
    ev.events = EPOLLOUT;
    ev.data.u32 = (uint32_t)(c - conns);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        perror("epoll_ctl ADD");
        exit(1);
    }
    c->want_out = 1;
    c->alive = 1;
}

/* -R: the message of this cycle goes out. */
static void cycle_run(struct conn *c) {
    c->state = CYCLE_RUNNING;
    c->to_send = send_size;
    flush_conn(c);
}

/* -R: a readiness event of a connection in its cycle. */
static void cycle_event(struct conn *c, uint32_t events) {
    if (c->state == CYCLE_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            /* Retried, but a server that refuses again and again is an error. */
            if (++c->failures > 100) return kill_conn(c, "connect", err);
            c_connect_retries++;
            return cycle_start(c);
        }
        c->failures = 0;
        c->want_out = -1; /* set_out below re-registers */
        if (!tls_ctx) return cycle_run(c);
        tls_attach(c);
        c->state = CYCLE_HANDSHAKING;
        events = 0;
    }
    if (c->state == CYCLE_HANDSHAKING) {
        int step = tls_step(c);
        if (step < 0) return kill_conn(c, "TLS handshake", errno);
        if (step == 0) return set_out(c, SSL_want_write(c->ssl));
        return cycle_run(c);
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_conn(c);
    if (c->alive && c->state == CYCLE_RUNNING && (events & EPOLLOUT)) flush_conn(c);
}

/* Starts a TLS session on every connection and completes every handshake. */
static void handshake_all(double timeout) {
    double deadline = now() + timeout;
    for (int i = 0; i < nconns; i++) tls_attach(&conns[i]);
    int left = nconns;
    while (left > 0) {
        left = 0;
        for (int i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            if (!SSL_is_init_finished(c->ssl)) {
                int step = tls_step(c);
                if (step < 0) {
                    fprintf(stderr, "loadgen: TLS handshake failed\n");
                    exit(1);
                }
                left += step == 0;
            }
        }
        if (now() > deadline) {
            fprintf(stderr, "loadgen: TLS handshakes timed out (%d left)\n", left);
            exit(1);
        }
        if (left) {
            struct epoll_event ev;
            epoll_wait(epfd, &ev, 1, 1);
        }
    }
}

/* Connect all connections, at most CONNECT_BATCH in progress at a time. */
static void connect_all(const struct sockaddr_storage *sa, socklen_t salen, double timeout) {
    int next = 0, pending = 0, done = 0;
    struct epoll_event evs[CONNECT_BATCH];
    double deadline = now() + timeout;
    while (done < nconns) {
        while (pending < CONNECT_BATCH && next < nconns) {
            struct conn *c = &conns[next];
            c->fd = make_socket(sa, salen);
            struct epoll_event ev = {0};
            ev.events = EPOLLOUT;
            ev.data.u32 = (uint32_t)next;
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
                perror("epoll_ctl ADD");
                exit(1);
            }
            next++;
            pending++;
        }
        int n = epoll_wait(epfd, evs, CONNECT_BATCH, 1000);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(1);
        }
        if (stop_flag || now() > deadline) {
            fprintf(stderr, "loadgen: connect timed out (%d of %d connected)\n", done, nconns);
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                fprintf(stderr, "loadgen: connect: %s\n", strerror(err));
                exit(1);
            }
            struct epoll_event ev = {0};
            ev.events = EPOLLIN | EPOLLRDHUP;
            ev.data.u32 = evs[i].data.u32;
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
            c->alive = 1;
            c->want_out = 0;
            pending--;
            done++;
        }
    }
}

/* Header bytes of a frame carrying `len` payload bytes (without a mask key). */
static size_t ws_header(size_t len) { return len < 126 ? 2 : len <= 0xffff ? 4 : 10; }

static void ws_put_header(unsigned char *out, size_t len, int masked) {
    unsigned char m = masked ? 0x80 : 0;
    out[0] = 0x82; /* FIN, binary */
    if (len < 126) {
        out[1] = m | (unsigned char)len;
    } else if (len <= 0xffff) {
        out[1] = m | 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
    } else {
        out[1] = m | 127;
        for (int b = 0; b < 8; b++) out[2 + b] = (unsigned char)((uint64_t)len >> (56 - 8 * b));
    }
}

/* Builds the client frames (masked, random keys) and the server frames expected back
 * (unmasked), message k at k * send_size and k * reply_size, from the random payloads
 * already in `pattern`. */
static int make_ws_patterns(uint64_t *seed) {
    size_t hdr = ws_header(msg_size);
    send_size = hdr + 4 + msg_size;
    reply_size = hdr + msg_size;
    uint32_t count = (uint32_t)(PATTERN_MAX / send_size);
    if (count == 0) count = 1;
    uint32_t slen = count * (uint32_t)send_size, rlen = count * (uint32_t)reply_size;
    unsigned char *sp = malloc(slen + CHUNK), *rp = malloc(rlen + CHUNK);
    if (!sp || !rp) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    for (uint32_t k = 0; k < count; k++) {
        unsigned char *s = sp + (size_t)k * send_size, *r = rp + (size_t)k * reply_size;
        ws_put_header(s, msg_size, 1);
        ws_put_header(r, msg_size, 0);
        uint64_t key = xorshift64(seed);
        unsigned char mask[4] = {(unsigned char)key, (unsigned char)(key >> 8),
                                 (unsigned char)(key >> 16), (unsigned char)(key >> 24)};
        memcpy(s + hdr, mask, 4);
        for (size_t i = 0; i < msg_size; i++) {
            unsigned char byte = pattern[((size_t)k * msg_size + i) % pattern_len];
            s[hdr + 4 + i] = byte ^ mask[i & 3];
            r[hdr + i] = byte;
        }
    }
    /* The tails repeat the heads (CHUNK bytes, wrapping as often as needed). */
    for (uint32_t i = 0; i < CHUNK; i++) {
        sp[slen + i] = sp[i % slen];
        rp[rlen + i] = rp[i % rlen];
    }
    pattern = sp;
    pattern_len = slen;
    rpattern = rp;
    rpattern_len = rlen;
    return 0;
}

/* Sends every connection's upgrade request and reads each 101 response. */
static void upgrade_all(double timeout) {
    static const char request[] =
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    double deadline = now() + timeout;
    for (int i = 0; i < nconns; i++) {
        if (io_send(&conns[i], request, sizeof request - 1) != (ssize_t)(sizeof request - 1)) {
            fprintf(stderr, "loadgen: could not send the upgrade request\n");
            exit(1);
        }
    }
    char head[4096];
    for (int i = 0; i < nconns; i++) {
        size_t got = 0;
        /* Byte by byte, so nothing past the response head is read. */
        while (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0) {
            if (now() > deadline || got == sizeof head) {
                fprintf(stderr, "loadgen: no upgrade response\n");
                exit(1);
            }
            ssize_t r = io_recv(&conns[i], head + got, 1);
            if (r == 1) got++;
            else if (r == 0) {
                fprintf(stderr, "loadgen: closed during the upgrade\n");
                exit(1);
            } else if (errno != EAGAIN && errno != EINTR) {
                perror("recv");
                exit(1);
            }
        }
        if (memcmp(head, "HTTP/1.1 101", 12) != 0) {
            fprintf(stderr, "loadgen: upgrade refused: %.*s\n", (int)got, head);
            exit(1);
        }
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    const char *port = NULL;
    const char *unix_path = NULL;
    int inflight = 1;
    int busy_poll = 0;
    int frame_header = 0;
    double duration = 5, warmup = 1;
    nconns = 50;
    msg_size = 64;

    int opt;
    while ((opt = getopt(argc, argv, "H:p:U:c:s:i:d:w:f:bWTN:Rh")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = optarg; break;
        case 'U': unix_path = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 's': msg_size = (size_t)atol(optarg); break;
        case 'i': inflight = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'f': frame_header = atoi(optarg); break;
        case 'b': busy_poll = 1; break;
        case 'W': websocket = 1; break;
        case 'T': tls_setup(); break;
        case 'N': tls_name = optarg; break;
        case 'R': reconnect = 1; break;
        default: usage(argv[0]);
        }
    }
    if ((!port && !unix_path) || nconns <= 0 || msg_size == 0 || inflight <= 0 || duration <= 0 ||
        warmup < 0)
        usage(argv[0]);

    struct sigaction sa_sig = {0};
    sa_sig.sa_handler = on_signal;
    sigaction(SIGINT, &sa_sig, NULL);
    sigaction(SIGTERM, &sa_sig, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct sockaddr_storage sa = {0};
    socklen_t salen;
    if (unix_path) {
        struct sockaddr_un *un = (struct sockaddr_un *)&sa;
        size_t len = strlen(unix_path);
        if (len >= sizeof un->sun_path) {
            fprintf(stderr, "loadgen: -U %s: path too long (at most %zu bytes)\n", unix_path,
                    sizeof un->sun_path - 1);
            return 2;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, unix_path, len + 1);
        salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    } else {
        struct addrinfo hints = {0}, *res;
        hints.ai_socktype = SOCK_STREAM;
        int gai = getaddrinfo(host, port, &hints, &res);
        if (gai != 0) {
            fprintf(stderr, "loadgen: %s:%s: %s\n", host, port, gai_strerror(gai));
            return 1;
        }
        salen = res->ai_addrlen;
        memcpy(&sa, res->ai_addr, salen);
        freeaddrinfo(res);
    }

    /* The shared random pattern; its first CHUNK bytes repeat at the end, so a
     * read or write of up to CHUNK bytes from any offset is contiguous. */
    if (frame_header) {
        if ((frame_header != 1 && frame_header != 2 && frame_header != 4 && frame_header != 8) ||
            msg_size <= (size_t)frame_header ||
            (frame_header < 8 && msg_size - frame_header >= (1ull << (8 * frame_header)))) {
            fprintf(stderr, "loadgen: -f needs 1, 2, 4 or 8 and a payload that fits it\n");
            return 2;
        }
        /* Whole messages only, so every message-aligned offset starts a frame. */
        pattern_len = (uint32_t)((PATTERN_MAX / msg_size) * msg_size);
    }
    pattern = malloc(pattern_len + CHUNK);
    rbuf = malloc(CHUNK);
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!pattern || !rbuf || !conns) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (uint32_t i = 0; i < pattern_len; i++) pattern[i] = (unsigned char)(xorshift64(&seed) >> 56);
    if (frame_header) {
        uint64_t payload = msg_size - (size_t)frame_header;
        for (uint32_t m = 0; m < pattern_len; m += (uint32_t)msg_size)
            for (int b = 0; b < frame_header; b++)
                pattern[m + b] = (unsigned char)(payload >> (8 * (frame_header - 1 - b)));
    }
    memcpy(pattern + pattern_len, pattern, CHUNK);
    send_size = reply_size = msg_size;
    rpattern = pattern;
    rpattern_len = pattern_len;
    if (websocket && make_ws_patterns(&seed) != 0) return 1;
    for (int i = 0; i < nconns; i++) {
        conns[i].start = (uint32_t)(xorshift64(&seed) % pattern_len);
        if (frame_header) conns[i].start -= conns[i].start % (uint32_t)msg_size;
        conns[i].rstart = conns[i].start;
        if (websocket) {
            uint32_t k = conns[i].start / (uint32_t)send_size;
            conns[i].start = k * (uint32_t)send_size;
            conns[i].rstart = k * (uint32_t)reply_size;
        }
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        return 1;
    }
    target = sa;
    target_len = salen;
    if (reconnect) {
        if (websocket) {
            fprintf(stderr, "loadgen: -R does not speak WebSocket\n");
            return 2;
        }
        for (int i = 0; i < nconns; i++) cycle_start(&conns[i]);
    } else {
        connect_all(&sa, salen, 30.0);
        if (tls_ctx) handshake_all(30.0);
        if (websocket) upgrade_all(10.0);
        /* Start the traffic: every connection queues `inflight` messages. */
        for (int i = 0; i < nconns; i++) {
            conns[i].to_send = (uint64_t)inflight * send_size;
            flush_conn(&conns[i]);
        }
    }

    double t0 = now();
    double t_start = t0 + warmup, t_end = t_start + duration;
    int measuring = 0;
    double idle_s = 0; /* seconds of the window spent waiting with nothing to do */
    uint64_t m0 = 0, b0 = 0;
    double w0 = t0;
    if (warmup == 0) {
        measuring = 1;
        printf("START\n");
        fflush(stdout);
    }

    int maxev = nconns < 1024 ? nconns : 1024;
    struct epoll_event *evs = malloc(sizeof *evs * (size_t)maxev);
    int alive = nconns;
    double t = t0;
    while (!stop_flag) {
        double deadline = measuring ? t_end : t_start;
        int timeout_ms = (int)((deadline - t) * 1000.0) + 1;
        if (timeout_ms < 0 || busy_poll) timeout_ms = 0;
        int n = epoll_wait(epfd, evs, maxev, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        /* Slack: time spent waiting for the server with nothing to do (a
         * blocking wait, or an empty poll when busy polling). */
        if (measuring && (n <= 0 || !busy_poll)) idle_s += now() - t;
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            if (!c->alive) continue;
            uint32_t e = evs[i].events;
            if (reconnect) {
                cycle_event(c, e);
            } else {
                if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_conn(c);
                if (c->alive && (e & EPOLLOUT)) flush_conn(c);
            }
            if (!c->alive) alive--;
        }
        t = now();
        if (!measuring && t >= t_start) {
            measuring = 1;
            m0 = c_messages;
            b0 = c_bytes;
            w0 = t;
            idle_s = 0;
            printf("START\n");
            fflush(stdout);
        }
        if (measuring && t >= t_end) break;
        if (alive == 0) {
            fprintf(stderr, "loadgen: all connections are gone\n");
            break;
        }
    }
    t = now();
    if (!measuring) { /* interrupted during warmup: report an empty window */
        m0 = c_messages;
        b0 = c_bytes;
        w0 = t;
    }
    /* Errors are reported whenever they happened (warmup included): a broken
     * echo must never look like a clean run. */
    printf("{\"messages\": %llu, \"bytes\": %llu, \"seconds\": %.6f, \"errors\": %llu, "
           "\"mismatches\": %llu, \"closed\": %llu, \"connections\": %d, \"size\": %zu, "
           "\"inflight\": %d, \"idle_seconds\": %.6f, \"busy_poll\": %s, \"interrupted\": %s, "
           "\"connect_retries\": %llu}\n",
           (unsigned long long)(c_messages - m0), (unsigned long long)(c_bytes - b0), t - w0,
           (unsigned long long)c_errors, (unsigned long long)c_mismatch,
           (unsigned long long)c_closed, nconns, msg_size, inflight, idle_s,
           busy_poll ? "true" : "false", stop_flag ? "true" : "false",
           (unsigned long long)c_connect_retries);
    fflush(stdout);
    return 0;
}
