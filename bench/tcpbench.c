// bench/tcpbench.c: the benchmark's TCP load generator and echo server. One epoll loop per process, no threads,
// no allocation on the hot path. Compiled at bench time with the machine's cc (bench/tools.ts).
//
//   tcpbench serve port=P [threads=N]                          echo server (N processes sharing the port via SO_REUSEPORT)
//   tcpbench rr    host=H port=P conns=C secs=S size=B [warmup=W]   closed-loop ping-pong on persistent connections
//   tcpbench paced host=H port=P conns=C rate=R secs=S size=B [warmup=W]  open loop at R requests/s
//   tcpbench cc    host=H port=P conns=C secs=S size=B [warmup=W] [procs=N]
//                                                              connect + request + response + close, C at a time
//                                                              (procs=N: N processes of C/N connections each, one
//                                                              result: one generator thread must not cap direct)
//   tcpbench hold  host=H port=P conns=N size=B                 N connections, one ping-pong each, held until stdin closes
//   (every client mode: [src=A] binds that source address, the port still chosen by connect())
//
// Every client mode prints one JSON line on stdout. Latency is measured with CLOCK_MONOTONIC:
//   rr:    from the request's first write to the last byte of its echo;
//   paced: from the request's *intended* send time (a fixed schedule, so a stalled proxy cannot hide queueing:
//          no coordinated omission) to the last byte of its echo;
//   cc:    from socket() to close() after the echo arrived.
// The load generator's own CPU time over the measured window is reported (cpu_s) so the harness can show that
// it was not the bottleneck; paced also reports how late the generator itself issued requests (late_p50_us,
// late_p99_us: the machine's timer wake-up latency, which no proxy can be blamed for).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_SIZE (1 << 20)

static void die(const char *what) {
  fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
  exit(2);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- arguments: key=value pairs ---- */
static int argc_g;
static char **argv_g;

static const char *arg(const char *key, const char *fallback) {
  size_t n = strlen(key);
  for (int i = 2; i < argc_g; i++) {
    if (strncmp(argv_g[i], key, n) == 0 && argv_g[i][n] == '=') return argv_g[i] + n + 1;
  }
  if (!fallback) {
    fprintf(stderr, "tcpbench: missing argument %s=\n", key);
    exit(2);
  }
  return fallback;
}

static double num(const char *key, const char *fallback) {
  const char *v = arg(key, fallback);
  char *end;
  double d = strtod(v, &end);
  if (*end != '\0') {
    fprintf(stderr, "tcpbench: %s=%s is not a number\n", key, v);
    exit(2);
  }
  return d;
}

/* ---- latency samples (ns, capped at ~4.29 s) ---- */
static uint32_t *samples;
static size_t nsamples, capsamples;

static void record(uint64_t ns) {
  if (nsamples == capsamples) {
    capsamples = capsamples ? capsamples * 2 : 1 << 16;
    samples = realloc(samples, capsamples * sizeof *samples);
    if (!samples) die("realloc");
  }
  samples[nsamples++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

/* paced only: how late the generator itself issued requests that found an idle connection (timer wake-up
 * latency of this machine), so a report can tell the environment's stalls from the proxy's. */
static uint32_t *late;
static size_t nlate, caplate;

static void record_late(uint64_t ns) {
  if (nlate == caplate) {
    caplate = caplate ? caplate * 2 : 1 << 16;
    late = realloc(late, caplate * sizeof *late);
    if (!late) die("realloc");
  }
  late[nlate++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(double p) {
  if (nsamples == 0) return 0;
  size_t i = (size_t)(p * (double)(nsamples - 1) + 0.5);
  return samples[i] / 1000.0;
}

/* ---- sockets ---- */
static int ep;
static struct sockaddr_in target;
/* src=ADDR: the source address of every client connection (bound with IP_BIND_ADDRESS_NO_PORT, so connect() still
 * picks the port), so that the generator's connections never share a port tuple with anyone else's. */
static struct sockaddr_in source;
static int have_source;
static char *payload;
static size_t size;

static void ep_ctl(int op, int fd, uint32_t events, void *ptr) {
  struct epoll_event ev = {.events = events, .data.ptr = ptr};
  if (epoll_ctl(ep, op, fd, &ev) < 0) die("epoll_ctl");
}

enum state { IDLE, CONNECTING, SENDING, RECEIVING };

struct conn {
  int fd;
  enum state state;
  size_t sent, rcvd;
  uint64_t t_start;    /* rr: first write; cc: socket(); paced: intended send time */
  uint64_t t_intended; /* paced only */
  struct conn *next_idle;
};

static struct conn *conns;
static long nconns;
static long errors;
/* Every completed request, warm-up included: the denominator of the proxy's CPU per op (measured over the whole run). */
static long total_ops;

static int open_conn(struct conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (have_source) {
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(c->fd, (struct sockaddr *)&source, sizeof source) < 0) die("bind src");
  }
  c->sent = c->rcvd = 0;
  if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
    close(c->fd);
    c->fd = -1;
    errors++;
    return -1;
  }
  c->state = CONNECTING;
  ep_ctl(EPOLL_CTL_ADD, c->fd, EPOLLOUT | EPOLLIN, c);
  return 0;
}

static void close_conn(struct conn *c) {
  if (c->fd >= 0) close(c->fd); /* close() also removes it from the epoll set */
  c->fd = -1;
  c->state = IDLE;
}

/* Writes what is left of the request; returns -1 on error. Switches to RECEIVING when all is written. */
static int pump_write(struct conn *c) {
  while (c->sent < size) {
    ssize_t n = send(c->fd, payload + c->sent, size - c->sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN) {
        if (c->state != SENDING) ep_ctl(EPOLL_CTL_MOD, c->fd, EPOLLOUT | EPOLLIN, c);
        c->state = SENDING;
        return 0;
      }
      return -1;
    }
    c->sent += (size_t)n;
  }
  if (c->state != RECEIVING) ep_ctl(EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
  c->state = RECEIVING;
  return 0;
}

static int start_request(struct conn *c) {
  c->sent = c->rcvd = 0;
  return pump_write(c);
}

/* Reads the echo; returns 1 when the whole response arrived, 0 when more is expected, -1 on error/EOF. */
static int pump_read(struct conn *c) {
  static char buf[65536];
  for (;;) {
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n > 0) {
      c->rcvd += (size_t)n;
      if (c->rcvd >= size) return 1;
      continue;
    }
    if (n == 0) return -1;
    return errno == EAGAIN ? 0 : -1;
  }
}

/* Drives one connection's I/O. Returns 1 when a response completed, 0 otherwise, -1 when the connection failed. */
static int on_event(struct conn *c, uint32_t events) {
  if (c->state == CONNECTING) {
    if (events & (EPOLLERR | EPOLLHUP)) return -1;
    if (!(events & EPOLLOUT)) return 0;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return -1;
    c->state = IDLE;
    return 2; /* connected */
  }
  if (c->state == SENDING && (events & EPOLLOUT)) {
    if (pump_write(c) < 0) return -1;
  }
  if (c->state == RECEIVING && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return pump_read(c);
  if (events & (EPOLLERR | EPOLLHUP)) return -1;
  return 0;
}

static double late_p50_us = -1, late_p99_us = -1;

static void print_result(const char *mode, double secs, double cpu, long ops, long extra_unfinished) {
  qsort(samples, nsamples, sizeof *samples, cmp_u32);
  printf("{\"mode\":\"%s\",\"ops\":%ld,\"secs\":%.6f,\"rate\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
         "\"p999_us\":%.1f,\"max_us\":%.1f,\"errors\":%ld,\"unfinished\":%ld,\"cpu_s\":%.4f,\"conns\":%ld,\"size\":%zu,"
         "\"total_ops\":%ld,\"late_p50_us\":%.1f,\"late_p99_us\":%.1f}\n",
         mode, ops, secs, secs > 0 ? ops / secs : 0, pct_us(0.50), pct_us(0.90), pct_us(0.99), pct_us(0.999),
         nsamples ? samples[nsamples - 1] / 1000.0 : 0, errors, extra_unfinished, cpu, nconns, size, total_ops, late_p50_us, late_p99_us);
  fflush(stdout);
}

static void setup_client(void) {
  const char *host = arg("host", NULL);
  memset(&target, 0, sizeof target);
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)num("port", NULL));
  if (inet_pton(AF_INET, host, &target.sin_addr) != 1) {
    fprintf(stderr, "tcpbench: host=%s is not an IPv4 address\n", host);
    exit(2);
  }
  const char *src = arg("src", "");
  if (*src) {
    memset(&source, 0, sizeof source);
    source.sin_family = AF_INET;
    if (inet_pton(AF_INET, src, &source.sin_addr) != 1) {
      fprintf(stderr, "tcpbench: src=%s is not an IPv4 address\n", src);
      exit(2);
    }
    have_source = 1;
  }
  size = (size_t)num("size", "64");
  if (size < 1 || size > MAX_SIZE) {
    fprintf(stderr, "tcpbench: size=%zu out of range 1..%d\n", size, MAX_SIZE);
    exit(2);
  }
  payload = malloc(size);
  memset(payload, 'x', size);
  nconns = (long)num("conns", NULL);
  if (nconns < 1 || nconns > 100000) {
    fprintf(stderr, "tcpbench: conns=%ld out of range 1..100000\n", nconns);
    exit(2);
  }
  conns = calloc((size_t)nconns, sizeof *conns);
  for (long i = 0; i < nconns; i++) conns[i].fd = -1;
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
}

/* Opens all connections (at most 256 handshakes in flight) and waits until they are established. */
static void connect_all(uint64_t deadline) {
  long opened = 0, ready = 0, inflight = 0;
  struct epoll_event evs[MAX_EVENTS];
  while (ready < nconns) {
    while (opened < nconns && inflight < 256) {
      if (open_conn(&conns[opened]) < 0) {
        fprintf(stderr, "tcpbench: connect: %s\n", strerror(errno));
        exit(3);
      }
      opened++;
      inflight++;
    }
    if (now_ns() > deadline) {
      fprintf(stderr, "tcpbench: only %ld of %ld connections established in time\n", ready, nconns);
      exit(3);
    }
    int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      int r = on_event(c, evs[i].events);
      if (r == 2) {
        ep_ctl(EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
        ready++;
        inflight--;
      } else if (r < 0) {
        fprintf(stderr, "tcpbench: connection %ld failed while connecting\n", (long)(c - conns));
        exit(3);
      }
    }
  }
}

/* ---- rr: closed loop ---- */
static int run_rr(void) {
  double secs = num("secs", NULL), warmup = num("warmup", "0");
  connect_all(now_ns() + 10000000000ull);
  uint64_t t0 = now_ns(), t_measure = t0 + (uint64_t)(warmup * 1e9), t_end = t_measure + (uint64_t)(secs * 1e9);
  double cpu0 = 0;
  int measuring = 0;
  long ops = 0;
  for (long i = 0; i < nconns; i++) {
    conns[i].t_start = now_ns();
    if (start_request(&conns[i]) < 0) errors++;
  }
  struct epoll_event evs[MAX_EVENTS];
  long active = nconns;
  while (active > 0) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
    uint64_t now = now_ns();
    if (!measuring && now >= t_measure) {
      measuring = 1;
      cpu0 = cpu_seconds();
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      int r = on_event(c, evs[i].events);
      if (r == 1) {
        total_ops++;
        if (c->t_start >= t_measure && now <= t_end) {
          record(now - c->t_start);
          ops++;
        }
        if (now >= t_end) {
          close_conn(c);
          active--;
        } else {
          c->t_start = now;
          if (start_request(c) < 0) r = -1;
        }
      }
      if (r < 0) {
        errors++;
        close_conn(c);
        active--;
      }
    }
    if (now > t_end + 2000000000ull) break; /* responses lost: stop anyway */
  }
  double cpu = cpu_seconds() - cpu0;
  print_result("rr", secs, cpu, ops, active);
  return 0;
}

/* ---- paced: open loop on a fixed schedule ---- */
static int run_paced(void) {
  double secs = num("secs", NULL), warmup = num("warmup", "0"), rate = num("rate", NULL);
  if (rate <= 0 || rate > 1e7) {
    fprintf(stderr, "tcpbench: rate=%g out of range\n", rate);
    exit(2);
  }
  connect_all(now_ns() + 10000000000ull);
  /* Backlog of intended send times for requests due while every connection was busy. */
  size_t qcap = (size_t)(rate * (secs + warmup)) + 16, qhead = 0, qtail = 0;
  uint64_t *queue = malloc(qcap * sizeof *queue);
  struct conn *idle = NULL;
  for (long i = 0; i < nconns; i++) {
    conns[i].next_idle = idle;
    idle = &conns[i];
  }
  double interval = 1e9 / rate;
  uint64_t t0 = now_ns() + 1000000, t_measure = t0 + (uint64_t)(warmup * 1e9), t_end = t_measure + (uint64_t)(secs * 1e9);
  uint64_t total = (uint64_t)((warmup + secs) * rate);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) die("timerfd_create");
  struct itimerspec its = {.it_interval = {.tv_sec = 0, .tv_nsec = (long)interval},
                           .it_value = {.tv_sec = (time_t)(t0 / 1000000000ull), .tv_nsec = (long)(t0 % 1000000000ull)}};
  if (its.it_interval.tv_nsec < 1000) its.it_interval.tv_nsec = 1000;
  if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
  static int timer_tag;
  ep_ctl(EPOLL_CTL_ADD, tfd, EPOLLIN, &timer_tag);
  uint64_t issued = 0;
  long ops = 0, outstanding = 0;
  double cpu0 = 0;
  int measuring = 0;
  struct epoll_event evs[MAX_EVENTS];
  for (;;) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
    uint64_t now = now_ns();
    if (!measuring && now >= t_measure) {
      measuring = 1;
      cpu0 = cpu_seconds();
    }
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == &timer_tag) {
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("read timerfd");
        continue;
      }
      struct conn *c = evs[i].data.ptr;
      int r = on_event(c, evs[i].events);
      if (r == 1) {
        total_ops++;
        if (c->t_intended >= t_measure) {
          record(now - c->t_intended);
          ops++;
        }
        outstanding--;
        if (qhead != qtail) {
          c->t_intended = queue[qhead++];
          if (start_request(c) < 0) r = -1;
          else outstanding++;
        } else {
          c->next_idle = idle;
          idle = c;
        }
      }
      if (r < 0) {
        fprintf(stderr, "tcpbench: paced connection failed\n");
        errors++;
        close_conn(c);
      }
    }
    /* Issue every request whose scheduled time has come. */
    while (issued < total) {
      uint64_t due = t0 + (uint64_t)((double)issued * interval);
      if (due > now) break;
      issued++;
      if (idle) {
        struct conn *c = idle;
        idle = c->next_idle;
        c->t_intended = due;
        if (due >= t_measure) record_late(now - due);
        if (start_request(c) < 0) {
          errors++;
          close_conn(c);
        } else {
          outstanding++;
        }
      } else {
        queue[qtail++] = due;
      }
    }
    if (issued >= total && outstanding == 0 && qhead == qtail) break;
    if (now > t_end + 2000000000ull) break;
  }
  double cpu = cpu_seconds() - cpu0;
  qsort(late, nlate, sizeof *late, cmp_u32);
  late_p50_us = nlate ? late[(size_t)(0.50 * (double)(nlate - 1) + 0.5)] / 1000.0 : 0;
  late_p99_us = nlate ? late[(size_t)(0.99 * (double)(nlate - 1) + 0.5)] / 1000.0 : 0;
  print_result("paced", secs, cpu, ops, outstanding + (long)(qtail - qhead));
  return 0;
}

/* ---- cc: connect + request + close ---- */

/* What a cc child process hands its parent through a pipe: its counters, then its latency samples. */
struct cc_part {
  long ops, errors, total_ops, active;
  double cpu;
  size_t nsamples;
};

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("write to parent");
    p += n;
    len -= (size_t)n;
  }
}

static void read_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fprintf(stderr, "tcpbench: cc: a generator process ended without its result\n");
      exit(3);
    }
    p += n;
    len -= (size_t)n;
  }
}

static int run_cc(void) {
  double secs = num("secs", NULL), warmup = num("warmup", "0");
  long procs = (long)num("procs", "1");
  if (procs < 1 || procs > 64 || procs > nconns) {
    fprintf(stderr, "tcpbench: procs=%ld out of range 1..min(64, conns)\n", procs);
    exit(2);
  }
  /* procs > 1: children take the first slices of the connections, this process the last; each has its own epoll. */
  long first = 0, count = nconns;
  int to_parent = -1, from_child[64];
  for (long p = 0; p < procs - 1; p++) {
    int fds[2];
    if (pipe(fds) < 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      for (long q = 0; q < p; q++) close(from_child[q]);
      close(fds[0]);
      to_parent = fds[1];
      first = nconns * p / procs;
      count = nconns * (p + 1) / procs - first;
      break;
    }
    close(fds[1]);
    from_child[p] = fds[0];
  }
  if (to_parent < 0 && procs > 1) {
    first = nconns * (procs - 1) / procs;
    count = nconns - first;
  }
  if (procs > 1) {
    close(ep);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
  }
  uint64_t t0 = now_ns(), t_measure = t0 + (uint64_t)(warmup * 1e9), t_end = t_measure + (uint64_t)(secs * 1e9);
  long ops = 0, active = 0;
  double cpu0 = 0;
  int measuring = 0;
  for (long i = first; i < first + count; i++) {
    conns[i].t_start = now_ns();
    if (open_conn(&conns[i]) == 0) active++;
  }
  struct epoll_event evs[MAX_EVENTS];
  while (active > 0) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
    uint64_t now = now_ns();
    if (!measuring && now >= t_measure) {
      measuring = 1;
      cpu0 = cpu_seconds();
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      int r = on_event(c, evs[i].events);
      if (r == 2) r = start_request(c) < 0 ? -1 : 0;
      if (r == 0) continue;
      close_conn(c);
      uint64_t done = now_ns();
      if (r == 1) total_ops++;
      if (r == 1 && c->t_start >= t_measure && done <= t_end) {
        record(done - c->t_start);
        ops++;
      }
      if (r < 0) errors++;
      active--;
      if (done < t_end) {
        c->t_start = done;
        if (open_conn(c) == 0) active++;
      }
    }
    if (now > t_end + 2000000000ull) break;
  }
  double cpu = cpu_seconds() - cpu0;
  if (to_parent >= 0) {
    struct cc_part part = {ops, errors, total_ops, active, cpu, nsamples};
    write_all(to_parent, &part, sizeof part);
    write_all(to_parent, samples, nsamples * sizeof *samples);
    close(to_parent);
    return 0;
  }
  for (long p = 0; p < procs - 1; p++) {
    struct cc_part part;
    read_all(from_child[p], &part, sizeof part);
    for (size_t i = 0; i < part.nsamples; i++) {
      uint32_t v;
      read_all(from_child[p], &v, sizeof v);
      record(v);
    }
    close(from_child[p]);
    ops += part.ops;
    errors += part.errors;
    total_ops += part.total_ops;
    active += part.active;
    cpu += part.cpu;
  }
  while (wait(NULL) > 0) {
  }
  print_result("cc", secs, cpu, ops, active);
  return 0;
}

/* ---- hold: N idle connections ---- */
static int run_hold(void) {
  uint64_t t0 = now_ns();
  connect_all(t0 + 60000000000ull);
  /* One ping-pong per connection proves the proxy has its upstream leg open too. */
  long done = 0;
  for (long i = 0; i < nconns; i++) {
    if (start_request(&conns[i]) < 0) {
      fprintf(stderr, "tcpbench: hold: write failed\n");
      exit(3);
    }
  }
  struct epoll_event evs[MAX_EVENTS];
  while (done < nconns) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, 1000);
    if (n == 0 && now_ns() > t0 + 60000000000ull) {
      fprintf(stderr, "tcpbench: hold: only %ld of %ld echoes arrived in time\n", done, nconns);
      exit(3);
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      int r = on_event(c, evs[i].events);
      if (r == 1) {
        c->state = IDLE;
        ep_ctl(EPOLL_CTL_MOD, c->fd, 0, c);
        done++;
      } else if (r < 0) {
        fprintf(stderr, "tcpbench: hold: connection failed\n");
        exit(3);
      }
    }
  }
  printf("{\"mode\":\"hold\",\"held\":%ld,\"secs\":%.3f}\n", done, (now_ns() - t0) / 1e9);
  fflush(stdout);
  char b[64];
  while (read(0, b, sizeof b) > 0) {
  }
  return 0;
}

/* ---- serve: echo ---- */
struct peer {
  int fd;
  size_t off, len;
  char buf[16384];
};

static void serve_loop(int lfd) {
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  static int listen_tag;
  ep_ctl(EPOLL_CTL_ADD, lfd, EPOLLIN, &listen_tag);
  struct epoll_event evs[MAX_EVENTS];
  for (;;) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait");
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == &listen_tag) {
        for (;;) {
          int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct peer *p = malloc(sizeof *p);
          p->fd = fd;
          p->off = p->len = 0;
          ep_ctl(EPOLL_CTL_ADD, fd, EPOLLIN, p);
        }
        continue;
      }
      struct peer *p = evs[i].data.ptr;
      int dead = 0;
      if (p->len > p->off) { /* flush what the peer could not take before */
        ssize_t w = send(p->fd, p->buf + p->off, p->len - p->off, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) dead = 1;
        if (w > 0) p->off += (size_t)w;
        if (!dead && p->off == p->len) {
          p->off = p->len = 0;
          ep_ctl(EPOLL_CTL_MOD, p->fd, EPOLLIN, p);
        }
      }
      while (!dead && p->len == 0) {
        ssize_t r = recv(p->fd, p->buf, sizeof p->buf, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN)) dead = 1;
        if (r <= 0) break;
        ssize_t w = send(p->fd, p->buf, (size_t)r, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) dead = 1;
        if (w < 0) w = 0;
        if (w < r) { /* backpressure: stop reading until the rest is written */
          p->off = (size_t)w;
          p->len = (size_t)r;
          ep_ctl(EPOLL_CTL_MOD, p->fd, EPOLLOUT, p);
        }
      }
      if (dead) {
        close(p->fd);
        free(p);
      }
    }
  }
}

static int run_serve(void) {
  int port = (int)num("port", NULL), threads = (int)num("threads", "1");
  signal(SIGPIPE, SIG_IGN);
  for (int t = 0; t < threads; t++) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    if (t == threads - 1) {
      printf("{\"mode\":\"serve\",\"port\":%d,\"threads\":%d}\n", port, threads);
      fflush(stdout);
      serve_loop(lfd);
    }
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the server the harness started */
      serve_loop(lfd);
    }
    close(lfd);
  }
  return 0;
}

int main(int argc, char **argv) {
  argc_g = argc;
  argv_g = argv;
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    fprintf(stderr, "usage: tcpbench serve|rr|paced|cc|hold key=value...\n");
    return 2;
  }
  const char *mode = argv[1];
  if (strcmp(mode, "serve") == 0) return run_serve();
  setup_client();
  if (strcmp(mode, "rr") == 0) return run_rr();
  if (strcmp(mode, "paced") == 0) return run_paced();
  if (strcmp(mode, "cc") == 0) return run_cc();
  if (strcmp(mode, "hold") == 0) return run_hold();
  fprintf(stderr, "tcpbench: unknown mode %s\n", mode);
  return 2;
}
