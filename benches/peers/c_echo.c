/*
 * c_echo.c - a minimal single-threaded epoll echo server in C: the ceiling
 * reference for the echo benchmark (what the load generator can drive on this
 * machine when the server costs as little as possible). Not a peer library.
 *
 * Build: gcc -O2 -o c_echo c_echo.c
 * Usage: c_echo [--host 127.0.0.1] [--port 0] [--unix PATH]
 * Prints "listening on HOST:PORT" once bound; serves until SIGINT/SIGTERM.
 * With --unix PATH it listens on a Unix-domain socket at PATH instead (a stale file
 * there is replaced, and removed at exit) and prints "listening on unix:PATH".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    const char *unix_path = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--unix")) unix_path = argv[i + 1];
        else { fprintf(stderr, "usage: %s [--host H] [--port P] [--unix PATH]\n", argv[0]); return 2; }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int one = 1;
    int l;
    if (unix_path) {
        struct sockaddr_un u = {0};
        u.sun_family = AF_UNIX;
        if (strlen(unix_path) >= sizeof u.sun_path) { fprintf(stderr, "path too long: %s\n", unix_path); return 2; }
        strcpy(u.sun_path, unix_path);
        unlink(unix_path);
        l = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (bind(l, (struct sockaddr *)&u, sizeof u) < 0 || listen(l, 1024) < 0) { perror("bind/listen"); return 1; }
        printf("listening on unix:%s\n", unix_path);
    } else {
        l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); return 2; }
        if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0) { perror("bind/listen"); return 1; }
        socklen_t al = sizeof a;
        getsockname(l, (struct sockaddr *)&a, &al);
        printf("listening on %s:%d\n", host, ntohs(a.sin_port));
    }
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    static char buf[256 * 1024];
    struct epoll_event evs[512];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c;
                while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (!unix_path) setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { close(fd); continue; }
            /* Echo everything; a full socket buffer is simply waited out (the
             * client always reads, and this server is only a ceiling reference). */
            for (ssize_t o = 0; o < r;) {
                ssize_t w = write(fd, buf + o, (size_t)(r - o));
                if (w > 0) o += w;
                else if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                else { close(fd); break; }
            }
        }
    }
    if (unix_path) unlink(unix_path);
    return 0;
}
