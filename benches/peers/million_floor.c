/*
 * million_floor.c - the floor of benches/million.py (--server floor): the same deployment
 * shape as benches/peers/million_server.py under pygev.run, with a minimal C server in
 * place of pygev, so that one run says what the broadcast costs when a worker does nothing
 * but write() 64 bytes to each socket. Not pygev, and not a peer library.
 *
 * W worker processes (with W > 1 forked from this one, which supervises; with W = 1 the
 * worker is this process, as pygev.run does it), each single-threaded on epoll, with a
 * listener of its own on HOST:PORT (SO_REUSEADDR, and SO_REUSEPORT when W > 1, as
 * million_server.py asks pygev for). Each accepts (accept4, nonblocking, TCP_NODELAY, as
 * pygev's listener does), keeps the descriptors in an array in accept order and registers
 * them with epoll as pygev's loop (mio) does: EPOLLIN | EPOLLOUT | EPOLLRDHUP, edge-
 * triggered; bytes that come are read and dropped, a connection the client closed is
 * closed and leaves a hole in the array. Nothing else per connection.
 *
 * Each worker dials one control connection to million.py (--control HOST:PORT), says
 * "HELLO <pid>" and answers, one line each (newline-delimited), as million_server.py does:
 *
 *   COUNT   -> COUNT <connections held>
 *   STAT    -> STAT <json: "server": "floor", held, the bytes of the descriptor arrays,
 *              and null for what only pygev has (set_bytes, stats)>
 *   BCAST   -> SENT <connections written to> <CLOCK_MONOTONIC ns after the last write>
 *              (one plain write() of the bytes 0..63 to every held descriptor, in accept
 *              order; a write that did not take all 64 bytes is not counted, and is said
 *              on stderr)
 *
 * A worker exits when its control connection closes (million.py went away) or at SIGTERM.
 * The supervisor stops every worker (SIGTERM) at SIGTERM or SIGINT, or once any worker
 * exited (no restarts: a floor run is void without all its workers), then exits; a worker
 * gets SIGTERM if the supervisor dies. Every process raises its soft RLIMIT_NOFILE to the
 * hard one. Diagnostics go to stderr.
 *
 * Build: gcc -O2 -o million_floor million_floor.c   (million.py builds it into benches/build)
 * Usage: million_floor --port PORT --control HOST:PORT [--host 127.0.0.1] [--workers W]
 *                      [--backlog 4096]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 4096

static const char *host = "127.0.0.1";
static int port;
static struct sockaddr_in control_addr;
static int n_workers = 1;
static int backlog = 4096;

static unsigned char payload[64]; /* the broadcast: bytes 0..63, million_client.c checks them */

/* the held connections: fds in accept order (-1 where one closed), and each fd's slot */
static int *order;
static long order_len, order_cap;
static long *slot_of_fd;
static long slot_cap;
static long held;

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "million_floor[%d]: ", (int)getpid());
    perror(what);
    exit(2);
}

static void usage(void)
{
    fprintf(stderr, "usage: million_floor --port PORT --control HOST:PORT [--host H] "
                    "[--workers W] [--backlog N]\n");
    exit(2);
}

static void hold(int fd)
{
    if (order_len == order_cap) {
        order_cap = order_cap ? 2 * order_cap : 1024;
        order = realloc(order, order_cap * sizeof *order);
        if (!order)
            die("realloc");
    }
    if (fd >= slot_cap) {
        long cap = slot_cap ? slot_cap : 1024;
        while (cap <= fd)
            cap *= 2;
        slot_of_fd = realloc(slot_of_fd, cap * sizeof *slot_of_fd);
        if (!slot_of_fd)
            die("realloc");
        slot_cap = cap;
    }
    slot_of_fd[fd] = order_len;
    order[order_len++] = fd;
    held++;
}

static void drop(int fd)
{
    order[slot_of_fd[fd]] = -1;
    held--;
    close(fd); /* leaves the epoll set */
}

/* Writes all of a reply line to the (blocking) control connection. */
static void reply(int fd, const char *line)
{
    size_t len = strlen(line), off = 0;
    while (off < len) {
        ssize_t n = write(fd, line + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write to the control connection");
        }
        off += n;
    }
}

static void command(int control, const char *cmd)
{
    char line[512];
    if (strcmp(cmd, "COUNT") == 0) {
        snprintf(line, sizeof line, "COUNT %ld\n", held);
    } else if (strcmp(cmd, "BCAST") == 0) {
        long sent = 0, short_writes = 0, failed = 0;
        int first_errno = 0;
        for (long i = 0; i < order_len; i++) {
            int fd = order[i];
            if (fd < 0)
                continue;
            ssize_t n = write(fd, payload, sizeof payload);
            if (n == (ssize_t)sizeof payload) {
                sent++;
            } else if (n >= 0) {
                short_writes++;
            } else {
                if (!failed++)
                    first_errno = errno;
            }
        }
        uint64_t t = now_ns();
        if (short_writes || failed)
            fprintf(stderr, "million_floor[%d]: broadcast: %ld short writes, %ld failed (%s)\n",
                    (int)getpid(), short_writes, failed, failed ? strerror(first_errno) : "-");
        snprintf(line, sizeof line, "SENT %ld %llu\n", sent, (unsigned long long)t);
    } else if (strcmp(cmd, "STAT") == 0) {
        snprintf(line, sizeof line,
                 "STAT {\"server\": \"floor\", \"held\": %ld, \"slots\": %ld, "
                 "\"array_bytes\": %zu, \"set_bytes\": null, \"stats\": null}\n",
                 held, order_len,
                 (size_t)order_cap * sizeof *order + (size_t)slot_cap * sizeof *slot_of_fd);
    } else {
        snprintf(line, sizeof line, "ERROR unknown command\n");
    }
    reply(control, line);
}

static int listen_socket(void)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l < 0)
        die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (n_workers > 1 && setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        die("SO_REUSEPORT");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        usage();
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    if (listen(l, backlog) < 0)
        die("listen");
    return l;
}

/* One worker: serves until its control connection closes or SIGTERM; returns its status. */
static int worker(void)
{
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait says EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int l = listen_socket();
    int control = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (control < 0)
        die("socket");
    if (connect(control, (struct sockaddr *)&control_addr, sizeof control_addr) < 0)
        die("connect to the control address");
    char hello[64];
    snprintf(hello, sizeof hello, "HELLO %d\n", (int)getpid());
    reply(control, hello);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0)
        die("epoll_ctl");
    ev.data.fd = control;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, control, &ev) < 0)
        die("epoll_ctl");

    static char line[4096];
    size_t have = 0;
    static unsigned char buf[4096];
    struct epoll_event evs[1024];
    long emfile = 0;
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, 1024, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            uint32_t what = evs[k].events;
            if (fd == l) {
                for (;;) {
                    int c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) {
                        if (errno == EMFILE || errno == ENFILE) {
                            if (!emfile++)
                                fprintf(stderr, "million_floor[%d]: accept: %s at %ld held\n",
                                        (int)getpid(), strerror(errno), held);
                        } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                            die("accept4");
                        }
                        break;
                    }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {
                        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0)
                        die("epoll_ctl");
                    hold(c);
                }
            } else if (fd == control) {
                ssize_t got = read(control, line + have, sizeof line - 1 - have);
                if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
                    return 0; /* million.py went away: no reason to go on */
                if (got < 0)
                    continue;
                have += got;
                line[have] = 0;
                char *start = line, *nl;
                while ((nl = strchr(start, '\n'))) {
                    *nl = 0;
                    if (nl > start && nl[-1] == '\r')
                        nl[-1] = 0;
                    command(control, start);
                    start = nl + 1;
                }
                have -= start - line;
                memmove(line, start, have);
                if (have == sizeof line - 1)
                    have = 0; /* a line too long: dropped */
            } else if (what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                /* edge-triggered: read until EAGAIN; what comes is dropped */
                for (;;) {
                    ssize_t got = read(fd, buf, sizeof buf);
                    if (got > 0)
                        continue;
                    if (got < 0 && errno == EINTR)
                        continue;
                    if (got == 0 || errno != EAGAIN)
                        drop(fd);
                    break;
                }
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *control = NULL;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--host"))
            host = argv[i + 1];
        else if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--control"))
            control = argv[i + 1];
        else if (!strcmp(argv[i], "--workers"))
            n_workers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--backlog"))
            backlog = atoi(argv[i + 1]);
        else
            usage();
    }
    if (port <= 0 || port > 65535 || !control || n_workers < 1 || n_workers > MAX_WORKERS)
        usage();
    static char chost[256];
    const char *colon = strrchr(control, ':');
    if (!colon || colon == control || (size_t)(colon - control) >= sizeof chost)
        usage();
    memcpy(chost, control, colon - control);
    control_addr.sin_family = AF_INET;
    control_addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, chost, &control_addr.sin_addr) != 1)
        usage();
    for (int i = 0; i < (int)sizeof payload; i++)
        payload[i] = (unsigned char)i;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    printf("listening on %s:%d (C floor, %d worker(s), connections in accept order)\n", host,
           port, n_workers);
    fflush(stdout);
    if (n_workers == 1)
        return worker();

    /* The supervisor: signals are taken with sigwaitinfo, the workers get the old mask. */
    sigset_t mask, old;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, &old);
    static pid_t pids[MAX_WORKERS];
    pid_t supervisor = getpid();
    for (int i = 0; i < n_workers; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &old, NULL);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != supervisor)
                return 0;
            return worker();
        }
        pids[i] = pid;
    }
    int alive = n_workers, stopping = 0, status = 0;
    while (alive > 0) {
        siginfo_t si;
        int sig = sigwaitinfo(&mask, &si);
        if (sig < 0)
            continue;
        if (sig == SIGCHLD) {
            pid_t pid;
            int st;
            while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
                for (int i = 0; i < n_workers; i++) {
                    if (pids[i] == pid) {
                        pids[i] = 0;
                        alive--;
                    }
                }
                if (!stopping) {
                    fprintf(stderr, "million_floor: worker %d exited (status 0x%x): stopping "
                                    "the others\n", (int)pid, st);
                    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
                        status = 1;
                }
            }
        } else if (!stopping) {
            fprintf(stderr, "million_floor: signal %d: stopping the workers\n", sig);
        }
        if (!stopping) {
            stopping = 1;
            for (int i = 0; i < n_workers; i++)
                if (pids[i])
                    kill(pids[i], SIGTERM);
        }
    }
    return status;
}
