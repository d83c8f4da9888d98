/*
 * loadgen: a closed-loop load generator for line protocols (and Redis RESP).
 *
 * N connections, each keeping K requests in flight: every response read is
 * answered by sending one more copy of the same pre-encoded request. One
 * epoll loop per thread, no allocation on the hot path, so the client costs
 * a small fraction of what the server under test spends per request.
 *
 * Latency is measured per request (from the moment it is queued to the
 * moment its response line is complete) into a log-linear histogram with
 * under 1% error. Only responses received between the end of the warm-up
 * and the end of the run count, for the rate and for the latencies.
 *
 * Output: one JSON object on stdout.
 *
 *   loadgen -p PORT -c CONNS -k INFLIGHT -d SECONDS -w WARMUP -f REQUEST_FILE
 *           [-h HOST] [-t THREADS] [-r] [-m MAX_SECONDS_TO_DRAIN]
 *
 * -r: the server speaks RESP (Redis): a "$N" line announces one more line.
 * Otherwise a response is one line; a line with "status":false is an error.
 *
 * Built by `make bench` (and by bench/loadgen.py when missing or stale).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SUB_BITS 7
#define SUB (1 << SUB_BITS)          /* 128 sub-buckets per power of two */
#define NBUCKETS (2 * SUB + 48 * SUB)
#define MAX_EVENTS 256

typedef struct {
    uint64_t counts[NBUCKETS];
} hist_t;

typedef struct conn {
    int fd;
    int inflight;                    /* requests sent, not yet answered */
    int expect_data;                 /* RESP: a bulk string's data line follows */
    int want_out;                    /* EPOLLOUT is registered */
    uint64_t out_remaining;          /* bytes queued, not yet written */
    size_t out_pos;                  /* offset into the request, < req_len */
    uint64_t *sent_at;               /* ring of queue times (ns), capacity K */
    int head, tail;
    char *in;                        /* partial response line */
    size_t in_len, in_cap;
} conn_t;

typedef struct {
    int id;
    int nconns;
    conn_t *conns;
    hist_t hist;
    uint64_t responses, errors, sent;
    char first_error[160];
    int failed;
    char failure[200];
} worker_t;

static const char *g_host = "127.0.0.1";
static int g_port, g_conns = 1, g_inflight = 1, g_threads = 1, g_resp;
static double g_duration = 5, g_warmup = 1, g_drain = 2;
static char *g_req, *g_reqbuf;
static size_t g_req_len, g_reqbuf_len;
static uint64_t g_t_start, g_t_measure, g_t_end, g_t_drain_end;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bucket_of(uint64_t v) {
    if (v < 2 * SUB) return (int)v;
    int b = 63 - __builtin_clzll(v);           /* b >= SUB_BITS + 1 */
    int shift = b - SUB_BITS;
    int idx = 2 * SUB + (b - SUB_BITS - 1) * SUB + (int)((v >> shift) - SUB);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static double value_of(int idx) {
    if (idx < 2 * SUB) return idx;
    int rel = idx - 2 * SUB;
    int b = rel / SUB + SUB_BITS + 1;
    int shift = b - SUB_BITS;
    uint64_t low = ((uint64_t)(rel % SUB + SUB)) << shift;
    return (double)low + (double)(1ull << shift) / 2.0;
}

static double percentile(const hist_t *h, uint64_t total, double p) {
    if (total == 0) return 0;
    uint64_t rank = (uint64_t)(p * (double)total);
    if (rank >= total) rank = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += h->counts[i];
        if (seen > rank) return value_of(i);
    }
    return value_of(NBUCKETS - 1);
}

static void fail(worker_t *w, const char *what) {
    if (!w->failed) {
        w->failed = 1;
        snprintf(w->failure, sizeof w->failure, "%s: %s", what, strerror(errno));
    }
}

/* Queue n more requests on c, stamping their send time. */
static void queue_requests(conn_t *c, int n, uint64_t t) {
    for (int i = 0; i < n; i++) {
        c->sent_at[c->tail] = t;
        c->tail = (c->tail + 1) % g_inflight;
    }
    c->inflight += n;
    c->out_remaining += (uint64_t)n * g_req_len;
}

/* Write what is queued; returns 0, or -1 on a dead connection. */
static int flush_out(worker_t *w, int ep, conn_t *c) {
    while (c->out_remaining > 0) {
        size_t room = g_reqbuf_len - c->out_pos;
        size_t len = c->out_remaining < room ? (size_t)c->out_remaining : room;
        ssize_t n = send(c->fd, g_reqbuf + c->out_pos, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            fail(w, "send");
            return -1;
        }
        c->out_remaining -= (uint64_t)n;
        c->out_pos = (c->out_pos + (size_t)n) % g_req_len;
    }
    int want = c->out_remaining > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

/* One complete response line arrived on c (line excludes the newline). */
static int on_line(worker_t *w, conn_t *c, const char *line, size_t len, uint64_t t) {
    int error = 0;
    if (g_resp) {
        if (c->expect_data) {
            c->expect_data = 0;
        } else if (len > 0 && line[0] == '$' && !(len > 1 && line[1] == '-')) {
            c->expect_data = 1;
            return 0;               /* the data line completes the response */
        } else if (len > 0 && line[0] == '-') {
            error = 1;
        }
    } else {
        size_t scan = len < 200 ? len : 200;
        error = memmem(line, scan, "\"status\":false", 14) != NULL;
    }
    if (c->inflight <= 0) return 0;  /* an unsolicited line: ignore */
    uint64_t sent = c->sent_at[c->head];
    c->head = (c->head + 1) % g_inflight;
    c->inflight--;
    if (t >= g_t_measure && t <= g_t_end) {
        w->responses++;
        w->hist.counts[bucket_of((t - sent) / 1000)]++;
        if (error) {
            if (w->errors == 0) {
                size_t n = len < sizeof w->first_error - 1 ? len : sizeof w->first_error - 1;
                memcpy(w->first_error, line, n);
                w->first_error[n] = 0;
            }
            w->errors++;
        }
    }
    return 1;
}

static int on_readable(worker_t *w, int ep, conn_t *c) {
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            c->in_cap *= 2;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in) { fail(w, "realloc"); return -1; }
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            fail(w, "recv");
            return -1;
        }
        if (n == 0) {
            errno = ECONNRESET;
            fail(w, "server closed the connection");
            return -1;
        }
        uint64_t t = now_ns();
        size_t scan_from = c->in_len;
        c->in_len += (size_t)n;
        char *start = c->in;
        char *end = c->in + c->in_len;
        char *p = c->in + scan_from;
        int done = 0;
        char *nl;
        while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
            size_t len = (size_t)(nl - start);
            if (len > 0 && start[len - 1] == '\r') len--;
            done += on_line(w, c, start, len, t);
            start = p = nl + 1;
        }
        size_t rest = (size_t)(end - start);
        if (rest && start != c->in) memmove(c->in, start, rest);
        c->in_len = rest;
        if (done > 0 && t < g_t_end) {
            queue_requests(c, done, t);
            w->sent += (uint64_t)done;
        }
        if (flush_out(w, ep, c) < 0) return -1;
        if ((size_t)n < 65536) break;
    }
    return 0;
}

static int connect_one(worker_t *w, conn_t *c) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    if (inet_pton(AF_INET, g_host, &addr.sin_addr) != 1) { errno = EINVAL; fail(w, "address"); return -1; }
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) { fail(w, "socket"); return -1; }
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) { fail(w, "connect"); return -1; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->sent_at = calloc((size_t)g_inflight, sizeof(uint64_t));
    c->in_cap = 1 << 17;
    c->in = malloc(c->in_cap);
    if (!c->sent_at || !c->in) { fail(w, "malloc"); return -1; }
    return 0;
}

static void *run_worker(void *arg) {
    worker_t *w = arg;
    if (w->failed) return NULL;
    int ep = epoll_create1(0);
    if (ep < 0) { fail(w, "epoll_create1"); return NULL; }
    for (int i = 0; i < w->nconns; i++) {
        conn_t *c = &w->conns[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    while (now_ns() < g_t_start) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint64_t t = now_ns();
    for (int i = 0; i < w->nconns; i++) {
        conn_t *c = &w->conns[i];
        queue_requests(c, g_inflight, t);
        w->sent += (uint64_t)g_inflight;
        if (flush_out(w, ep, c) < 0) return NULL;
    }
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        t = now_ns();
        if (t >= g_t_drain_end) break;
        if (t >= g_t_end) {
            int pending = 0;
            for (int i = 0; i < w->nconns; i++) pending += w->conns[i].inflight;
            if (pending == 0) break;
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(w, "epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (on_readable(w, ep, c) < 0) goto out;
            } else if (events[i].events & EPOLLOUT) {
                if (flush_out(w, ep, c) < 0) goto out;
            }
        }
    }
out:
    for (int i = 0; i < w->nconns; i++)
        if (w->conns[i].fd > 0) close(w->conns[i].fd);
    close(ep);
    return NULL;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) { fclose(f); return NULL; }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen -p PORT -f REQUEST_FILE [-h HOST] [-c CONNS] [-k INFLIGHT] "
                    "[-d SECONDS] [-w WARMUP] [-t THREADS] [-m DRAIN] [-r]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *file = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:c:k:d:w:t:m:f:r")) != -1) {
        switch (opt) {
        case 'h': g_host = optarg; break;
        case 'p': g_port = atoi(optarg); break;
        case 'c': g_conns = atoi(optarg); break;
        case 'k': g_inflight = atoi(optarg); break;
        case 'd': g_duration = atof(optarg); break;
        case 'w': g_warmup = atof(optarg); break;
        case 't': g_threads = atoi(optarg); break;
        case 'm': g_drain = atof(optarg); break;
        case 'f': file = optarg; break;
        case 'r': g_resp = 1; break;
        default: usage();
        }
    }
    if (!g_port || !file || g_conns < 1 || g_inflight < 1 || g_threads < 1 || g_duration <= 0) usage();
    if (g_threads > g_conns) g_threads = g_conns;
    g_req = read_file(file, &g_req_len);
    if (!g_req || g_req_len == 0) { fprintf(stderr, "loadgen: cannot read %s\n", file); return 2; }
    /* K+1 copies back to back: any run of queued bytes is one contiguous send. */
    g_reqbuf_len = g_req_len * (size_t)(g_inflight + 1);
    g_reqbuf = malloc(g_reqbuf_len);
    for (int i = 0; i <= g_inflight; i++) memcpy(g_reqbuf + (size_t)i * g_req_len, g_req, g_req_len);

    worker_t *workers = calloc((size_t)g_threads, sizeof(worker_t));
    pthread_t *tids = calloc((size_t)g_threads, sizeof(pthread_t));
    conn_t *conns = calloc((size_t)g_conns, sizeof(conn_t));
    int given = 0;
    for (int i = 0; i < g_threads; i++) {
        int n = g_conns / g_threads + (i < g_conns % g_threads);
        workers[i].id = i;
        workers[i].nconns = n;
        workers[i].conns = conns + given;
        given += n;
    }
    /* Every connection is made before the clock starts: a server whose
     * accept queue overflows (SYN retried after a second) delays the
     * start, never the measurement. */
    for (int i = 0; i < g_threads; i++)
        for (int j = 0; j < workers[i].nconns && !workers[i].failed; j++)
            connect_one(&workers[i], &workers[i].conns[j]);
    g_t_start = now_ns() + 50000000ull;
    g_t_measure = g_t_start + (uint64_t)(g_warmup * 1e9);
    g_t_end = g_t_measure + (uint64_t)(g_duration * 1e9);
    g_t_drain_end = g_t_end + (uint64_t)(g_drain * 1e9);
    for (int i = 0; i < g_threads; i++) pthread_create(&tids[i], NULL, run_worker, &workers[i]);
    hist_t *total = calloc(1, sizeof(hist_t));
    uint64_t responses = 0, errors = 0, sent = 0;
    const char *first_error = "", *failure = "";
    for (int i = 0; i < g_threads; i++) {
        pthread_join(tids[i], NULL);
        worker_t *w = &workers[i];
        for (int b = 0; b < NBUCKETS; b++) total->counts[b] += w->hist.counts[b];
        responses += w->responses;
        errors += w->errors;
        sent += w->sent;
        if (!*first_error && w->errors) first_error = w->first_error;
        if (!*failure && w->failed) failure = w->failure;
    }
    double rate = (double)responses / g_duration;
    printf("{\"connections\":%d,\"inflight\":%d,\"seconds\":%.3f,\"responses\":%llu,\"sent\":%llu,"
           "\"errors\":%llu,\"rate\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
           "\"max_us\":%.1f,\"failure\":\"",
           g_conns, g_inflight, g_duration, (unsigned long long)responses, (unsigned long long)sent,
           (unsigned long long)errors, rate, percentile(total, responses, 0.50),
           percentile(total, responses, 0.90), percentile(total, responses, 0.99),
           percentile(total, responses, 1.0));
    for (const char *p = failure; *p; p++)
        if (*p != '"' && *p != '\\') putchar(*p);
    printf("\",\"first_error\":\"");
    for (const char *p = first_error; *p; p++) {
        if (*p == '"' || *p == '\\') putchar('\\');
        if ((unsigned char)*p >= 32) putchar(*p);
    }
    printf("\"}\n");
    return *failure ? 1 : 0;
}
