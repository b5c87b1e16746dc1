// Relay: moves the bytes of established proxied connections on a thread of its own, so that payload never
// enters JavaScript. The proxy accepts, reads the original destination, applies policy and connects in JS; once
// the upstream leg is up it hands both sockets here (adopt) and forgets them. One epoll loop per process does
// read/send through a 64 KiB scratch buffer, mirrors FIN per direction and RST across, enforces the idle,
// half-close and max-duration bounds with one coarse sweep, arms TCP keepalive, and reports each connection's
// end (bytes per direction, how it ended) back to JS in batches through a thread-safe function.
//
// Memory: an idle pair costs its Pair struct and a map node; a buffer is held only while a direction has bytes
// its destination has not taken yet (and then that direction stops reading, which is the backpressure).
//
// Threading: the loop thread holds `mu` while it touches pairs, except while blocked in epoll_wait. The hot JS
// calls never wait for it: adopt() queues the new pair in `inbox` (its own short lock) and wakes the loop only
// when it sleeps; end records go out through `outbox` (another short lock). Holding `mu` across a whole batch
// of events (sends that run the peer's network stack, closes) made adopt() wait behind it: ~4 futex calls per
// proxied connection under connect+close load. The rare calls (abort, snapshot) take `mu` and first register
// whatever the inbox holds. A pair closed by either thread is deregistered from epoll, moved to `graveyard` and
// freed only by the loop thread before its next epoll_wait, so an event harvested before the close never
// points to freed memory (its pair is marked closed and skipped) and no later wait can report one.
#include <napi.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "relay.h"
#include "system_error.h"

namespace meshctl {
namespace {

constexpr size_t kChunk = 64 * 1024;
// Free chunks kept for reuse: enough for a few bulk streams, small next to the per-connection budget.
constexpr size_t kPoolMax = 16;
constexpr int kMaxEvents = 256;
constexpr int kClient = 0;
constexpr int kUpstream = 1;

// How a pair ended. JS reads these numbers from the `relayEndCodes` export (kEndNames below, set in InitRelay):
// src/proxy/relay-thread.ts turns them into access-log results by name and mirrors none of them.
enum EndCode : int {
  kFin = 0,          // both FINs relayed; aux = side whose FIN came first
  kReset = 1,        // ECONNRESET / EPIPE on side aux; the other side was reset
  kError = 2,        // another socket error (errno) on side aux; the other side was reset
  kKeepalive = 3,    // ETIMEDOUT (keepalive gave up) on side aux
  kIdle = 4,
  kHalfClose = 5,
  kMaxDuration = 6,
  kAborted = 7,      // closed on request from JS (drain, shutdown)
  kAdoptFailed = 8,  // the loop could not register the pair (errno); both peers were reset
};

struct EndName {
  const char* name;
  EndCode code;
};
// Every EndCode under the name JS uses for it (RelayEnd in src/native/addon.ts, which checks the two agree).
constexpr EndName kEndNames[] = {
    {"fin", kFin},
    {"reset", kReset},
    {"error", kError},
    {"keepalive", kKeepalive},
    {"idle", kIdle},
    {"halfClose", kHalfClose},
    {"maxDuration", kMaxDuration},
    {"aborted", kAborted},
    {"adoptFailed", kAdoptFailed},
};

// Numbers per end record in the Float64Array given to onEnded: id, bytes from client, bytes from upstream, end
// code, side (0 client, 1 upstream), errno. Exported as `relayRecordFields`.
constexpr size_t kRecordFields = 6;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Bytes read from fd[d] and not yet written to fd[1 - d]; `eof` once fd[d] sent FIN, `done` once that FIN was
// passed on (shutdown of fd[1 - d]'s write side, or the close of both).
struct Flow {
  char* buf = nullptr;
  uint32_t off = 0;
  uint32_t len = 0;
  bool eof = false;
  bool done = false;
  uint64_t bytes = 0;
};

struct Pair {
  uint32_t id = 0;
  int fd[2] = {-1, -1};
  Flow flow[2];
  uint32_t events[2] = {0, 0};
  bool parked[2] = {false, false};
  bool closed = false;
  bool keepaliveArmed = false;
  int firstFin = -1;
  int keepaliveSec = -1;
  int64_t maxDeadline = -1;
  int64_t idleMs = -1;
  int64_t halfCloseMs = -1;
  int64_t lastActive = 0;
  int64_t halfClosedAt = 0;
  uint64_t lastBytes = 0;
  Pair* prev = nullptr;
  Pair* next = nullptr;
};

struct Record {
  uint32_t id;
  uint64_t fromClient;
  uint64_t fromUpstream;
  int code;
  int aux;
  int err;
};

// Epoll data: the pair's address with the side in the low bit (Pair is at least 8-byte aligned); 0 is the
// wake-up eventfd.
uint64_t Tag(Pair* p, int side) { return reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(side); }

class Core {
 public:
  Core() = default;
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // Returns 0 or an errno; on failure nothing is left open.
  int Open() {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) return errno;
    wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wakefd_ < 0) {
      const int err = errno;
      close(epfd_);
      return err;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev) != 0) {
      const int err = errno;
      close(wakefd_);
      close(epfd_);
      return err;
    }
    return 0;
  }

  void Start(Napi::ThreadSafeFunction tsfn) {
    tsfn_ = tsfn;
    thread_ = std::thread([this] { Loop(); });
  }

  // Joins the loop, closes what is still open (plain close) and releases the thread-safe function. Idempotent.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    Wake();
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    {
      std::lock_guard<std::mutex> in(inboxMu_);
      for (Pair* p : inbox_) {
        close(p->fd[kClient]);
        close(p->fd[kUpstream]);
        delete p;
      }
      inbox_.clear();
    }
    while (head_ != nullptr) ClosePair(head_, kAborted, 0, 0, false);
    FreeGraveyard();
    for (char* b : pool_) std::free(b);
    pool_.clear();
    std::free(scratch_);
    scratch_ = nullptr;
    close(wakefd_);
    close(epfd_);
    tsfn_.Release();
  }

  void SetSweep(int64_t ms) {
    std::lock_guard<std::mutex> lock(mu_);
    sweepMs_ = ms;
    nextSweep_ = NowMs() + ms;
    Wake();
  }

  // Takes duplicates of both sockets (the caller then closes its own) and queues the pair for the loop; 0 or an
  // errno (the duplicates are the only step that can fail here: a registration the loop cannot make ends the
  // pair with kAdoptFailed).
  int Adopt(uint32_t id, int clientFd, int upstreamFd, int64_t maxRemainingMs, int64_t idleMs, int64_t halfCloseMs,
            int keepaliveSec) {
    const int a = fcntl(clientFd, F_DUPFD_CLOEXEC, 0);
    if (a < 0) return errno;
    const int b = fcntl(upstreamFd, F_DUPFD_CLOEXEC, 0);
    if (b < 0) {
      const int err = errno;
      close(a);
      return err;
    }
    Pair* p = new Pair();
    p->id = id;
    p->fd[kClient] = a;
    p->fd[kUpstream] = b;
    const int64_t now = NowMs();
    p->lastActive = now;
    p->maxDeadline = maxRemainingMs < 0 ? -1 : now + maxRemainingMs;
    p->idleMs = idleMs;
    p->halfCloseMs = halfCloseMs;
    p->keepaliveSec = keepaliveSec;
    {
      std::lock_guard<std::mutex> in(inboxMu_);
      inbox_.push_back(p);
    }
    // Dekker-style with the loop (both seq_cst): either the loop sees the flag before it sleeps, or we see it
    // asleep and wake it. A busy loop picks the pair up at the top of its next pass without a wake-up.
    inboxPending_.store(true);
    if (sleeping_.load()) Wake();
    return 0;
  }

  // With mu_ held: registers the queued pairs. On the loop thread before each wait, and on the JS thread before
  // abort/snapshot, so a pair adopted a moment ago is found.
  void DrainInbox() {
    if (!inboxPending_.exchange(false)) return;
    std::vector<Pair*> batch;
    {
      std::lock_guard<std::mutex> in(inboxMu_);
      batch.swap(inbox_);
    }
    for (Pair* p : batch) Register(p);
  }

  // Ids are unique among open pairs by construction: JS reuses an id only after this pair's end record has
  // reached it, and the record is written after the id has left byId_.
  void Register(Pair* p) {
    p->next = head_;
    if (head_ != nullptr) head_->prev = p;
    head_ = p;
    byId_.emplace(p->id, p);
    for (int s = 0; s < 2; s++) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = Tag(p, s);
      if (epoll_ctl(epfd_, EPOLL_CTL_ADD, p->fd[s], &ev) != 0) {
        // JS has closed its descriptors already: reset both peers, as for any other socket error, and say why.
        const int err = errno;
        for (int u = s; u < 2; u++) p->parked[u] = true;
        ClosePair(p, kAdoptFailed, s, err, true);
        return;
      }
      p->events[s] = EPOLLIN;
    }
  }

  // Closes a pair now on JS's request (RST to both peers when `reset`); false if it is not (or no longer) here.
  bool Abort(uint32_t id, bool reset) {
    std::lock_guard<std::mutex> lock(mu_);
    DrainInbox();
    auto it = byId_.find(id);
    if (it == byId_.end()) return false;
    ClosePair(it->second, kAborted, 0, 0, reset);
    SignalRecords();
    return true;
  }

  // Live byte counts and whether one direction has ended; false if the pair is gone.
  bool Snapshot(uint32_t id, uint64_t* fromClient, uint64_t* fromUpstream, bool* halfClosed) {
    std::lock_guard<std::mutex> lock(mu_);
    DrainInbox();
    auto it = byId_.find(id);
    if (it == byId_.end()) return false;
    *fromClient = it->second->flow[kClient].bytes;
    *fromUpstream = it->second->flow[kUpstream].bytes;
    *halfClosed = it->second->flow[kClient].eof || it->second->flow[kUpstream].eof;
    return true;
  }


  // On the JS thread: hands the finished pairs to `fn` as one flat Float64Array (6 numbers per pair).
  void Deliver(Napi::Env env, Napi::Function fn) {
    std::vector<Record> batch;
    {
      std::lock_guard<std::mutex> out(outMu_);
      batch.swap(outbox_);
      signalled_ = false;
    }
    if (batch.empty() || env == nullptr || fn.IsEmpty()) return;
    Napi::Float64Array out = Napi::Float64Array::New(env, batch.size() * kRecordFields);
    for (size_t i = 0; i < batch.size(); i++) {
      const Record& r = batch[i];
      const size_t at = i * kRecordFields;
      out[at + 0] = r.id;
      out[at + 1] = static_cast<double>(r.fromClient);
      out[at + 2] = static_cast<double>(r.fromUpstream);
      out[at + 3] = r.code;
      out[at + 4] = r.aux;
      out[at + 5] = r.err;
    }
    fn.Call({out});
  }

 private:
  void Wake() {
    const uint64_t one = 1;
    ssize_t ignored = write(wakefd_, &one, sizeof(one));
    (void)ignored;
  }

  void Loop() {
    epoll_event events[kMaxEvents];
    std::unique_lock<std::mutex> lock(mu_);
    nextSweep_ = NowMs() + sweepMs_;
    while (!stopping_) {
      FreeGraveyard();
      DrainInbox();
      SignalRecords();  // ends found while registering
      int64_t wait = nextSweep_ - NowMs();
      lock.unlock();
      sleeping_.store(true);
      if (inboxPending_.load()) wait = 0;
      const int n = epoll_wait(epfd_, events, kMaxEvents, wait < 0 ? 0 : static_cast<int>(wait));
      sleeping_.store(false);
      lock.lock();
      if (stopping_) break;
      for (int i = 0; i < n; i++) {
        const uint64_t tag = events[i].data.u64;
        if (tag == 0) {
          uint64_t count;
          ssize_t ignored = read(wakefd_, &count, sizeof(count));
          (void)ignored;
          continue;
        }
        Pair* p = reinterpret_cast<Pair*>(tag & ~static_cast<uint64_t>(1));
        if (!p->closed) Handle(p, static_cast<int>(tag & 1), events[i].events);
      }
      const int64_t now = NowMs();
      if (now >= nextSweep_) {
        Sweep(now);
        nextSweep_ = now + sweepMs_;
      }
      SignalRecords();
    }
  }

  // With mu_ held: moves this pass's end records to the outbox and asks JS for one delivery per batch.
  void SignalRecords() {
    if (records_.empty() || stopping_) return;
    bool call = false;
    {
      std::lock_guard<std::mutex> out(outMu_);
      if (outbox_.empty()) outbox_.swap(records_);
      else outbox_.insert(outbox_.end(), records_.begin(), records_.end());
      call = !signalled_;
      signalled_ = true;
    }
    records_.clear();
    if (!call) return;
    Core* self = this;
    tsfn_.NonBlockingCall([self](Napi::Env env, Napi::Function fn) { self->Deliver(env, fn); });
  }

  bool WantsRead(const Pair* p, int s) const { return !p->flow[s].eof && p->flow[s].buf == nullptr; }

  // Registers exactly the events side `s` needs: readable while its flow can take bytes, writable while the
  // other flow has bytes waiting for it. An fd parked after EPOLLHUP (which epoll reports even with no events
  // asked for) is re-added only once it needs something again.
  void SetInterest(Pair* p, int s) {
    uint32_t want = 0;
    if (WantsRead(p, s)) want |= EPOLLIN;
    if (p->flow[1 - s].buf != nullptr) want |= EPOLLOUT;
    if (p->parked[s]) {
      if (want == 0) return;
      epoll_event ev{};
      ev.events = want;
      ev.data.u64 = Tag(p, s);
      if (epoll_ctl(epfd_, EPOLL_CTL_ADD, p->fd[s], &ev) == 0) {
        p->parked[s] = false;
        p->events[s] = want;
      }
      return;
    }
    if (want == p->events[s]) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = Tag(p, s);
    if (epoll_ctl(epfd_, EPOLL_CTL_MOD, p->fd[s], &ev) == 0) p->events[s] = want;
  }

  void Handle(Pair* p, int s, uint32_t ev) {
    if (ev & EPOLLERR) {
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(p->fd[s], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) {
        Fail(p, s, err);
        return;
      }
    }
    if ((ev & EPOLLOUT) && p->flow[1 - s].buf != nullptr) {
      Flush(p, 1 - s);
      if (p->closed) return;
    }
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && WantsRead(p, s)) {
      Pump(p, s);
      if (p->closed) return;
    }
    if ((ev & EPOLLHUP) && !WantsRead(p, s) && p->flow[1 - s].buf == nullptr && !p->parked[s]) {
      // Hung up with nothing to read or write here now: level-triggered EPOLLHUP would fire on every wait.
      if (epoll_ctl(epfd_, EPOLL_CTL_DEL, p->fd[s], nullptr) == 0) {
        p->parked[s] = true;
        p->events[s] = 0;
      }
    }
  }

  char* TakeChunk() {
    if (!pool_.empty()) {
      char* b = pool_.back();
      pool_.pop_back();
      return b;
    }
    return static_cast<char*>(std::malloc(kChunk));
  }

  void GiveChunk(char* b) {
    if (pool_.size() < kPoolMax) pool_.push_back(b);
    else std::free(b);
  }

  // One read from side s and an immediate send to the other side; what the other side does not take stays in
  // the flow's buffer (the scratch chunk itself, so nothing is copied) and s stops being read until it drains.
  void Pump(Pair* p, int s) {
    if (scratch_ == nullptr) scratch_ = TakeChunk();
    if (scratch_ == nullptr) return;  // out of memory: try again on the next event
    const ssize_t n = recv(p->fd[s], scratch_, kChunk, 0);
    if (n > 0) {
      p->flow[s].bytes += static_cast<uint64_t>(n);
      ssize_t w = send(p->fd[1 - s], scratch_, static_cast<size_t>(n), MSG_NOSIGNAL);
      if (w == n) return;
      if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          Fail(p, 1 - s, errno);
          return;
        }
        w = 0;
      }
      Flow& f = p->flow[s];
      f.buf = scratch_;
      f.off = static_cast<uint32_t>(w);
      f.len = static_cast<uint32_t>(n);
      scratch_ = nullptr;
      SetInterest(p, s);
      SetInterest(p, 1 - s);
      return;
    }
    if (n == 0) {
      Flow& f = p->flow[s];
      f.eof = true;
      if (p->firstFin < 0) {
        p->firstFin = s;
        p->halfClosedAt = NowMs();
      }
      SetInterest(p, s);
      PassFin(p, s);
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    Fail(p, s, errno);
  }

  // Writes flow d's waiting bytes to side 1 - d.
  void Flush(Pair* p, int d) {
    Flow& f = p->flow[d];
    const ssize_t w = send(p->fd[1 - d], f.buf + f.off, f.len - f.off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      Fail(p, 1 - d, errno);
      return;
    }
    f.off += static_cast<uint32_t>(w);
    if (f.off < f.len) return;
    GiveChunk(f.buf);
    f.buf = nullptr;
    f.off = f.len = 0;
    SetInterest(p, d);
    SetInterest(p, 1 - d);
    if (f.eof) PassFin(p, d);
  }

  // Flow s has seen FIN and has nothing left to write: pass the FIN on. The second FIN closes both sockets
  // (each has been read to its end, so close() sends FIN, never RST).
  void PassFin(Pair* p, int s) {
    Flow& f = p->flow[s];
    if (f.done || f.buf != nullptr) return;
    f.done = true;
    if (p->flow[1 - s].done) {
      ClosePair(p, kFin, p->firstFin, 0, false);
      return;
    }
    if (shutdown(p->fd[1 - s], SHUT_WR) != 0 && errno != ENOTCONN) Fail(p, 1 - s, errno);
  }

  // A socket error on side s: the other side is reset, like the peer would have seen without the proxy.
  void Fail(Pair* p, int s, int err) {
    int code = kError;
    if (err == ECONNRESET || err == EPIPE) code = kReset;
    else if (err == ETIMEDOUT) code = kKeepalive;
    SetLingerZero(p->fd[1 - s]);
    ClosePair(p, code, s, err, false);
  }

  static void SetLingerZero(int fd) {
    linger l{};
    l.l_onoff = 1;
    l.l_linger = 0;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }

  void ClosePair(Pair* p, int code, int aux, int err, bool reset) {
    if (p->closed) return;
    p->closed = true;
    for (int s = 0; s < 2; s++) {
      if (reset) SetLingerZero(p->fd[s]);
      // Deregister before close: close() alone leaves the registration in place while another descriptor of the
      // same socket is open (Node's own, in the moment between adopt and Node closing it), and a later wait
      // would then report an event for a pair already freed.
      if (!p->parked[s]) epoll_ctl(epfd_, EPOLL_CTL_DEL, p->fd[s], nullptr);
      close(p->fd[s]);
      p->fd[s] = -1;
      if (p->flow[s].buf != nullptr) {
        GiveChunk(p->flow[s].buf);
        p->flow[s].buf = nullptr;
      }
    }
    if (p->prev != nullptr) p->prev->next = p->next;
    else head_ = p->next;
    if (p->next != nullptr) p->next->prev = p->prev;
    p->prev = p->next = nullptr;
    byId_.erase(p->id);
    records_.push_back(Record{p->id, p->flow[kClient].bytes, p->flow[kUpstream].bytes, code, aux, err});
    graveyard_.push_back(p);
  }

  void FreeGraveyard() {
    for (Pair* p : graveyard_) delete p;
    graveyard_.clear();
  }

  static void ArmKeepalive(int fd, int idleSec) {
    const int on = 1;
    const int interval = 1;
    const int count = 10;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idleSec, sizeof(idleSec));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  }

  // The coarse timer pass: activity is read from the byte counters (no clock read per chunk), keepalive is armed
  // on the first pass that sees a pair (connections shorter than one sweep never pay for it), then the bounds
  // in the order the JS relay checks them: max duration, half-close, idle.
  void Sweep(int64_t now) {
    Pair* p = head_;
    while (p != nullptr) {
      Pair* next = p->next;
      if (!p->keepaliveArmed) {
        p->keepaliveArmed = true;
        if (p->keepaliveSec > 0) {
          ArmKeepalive(p->fd[kClient], p->keepaliveSec);
          ArmKeepalive(p->fd[kUpstream], p->keepaliveSec);
        }
      }
      const uint64_t total = p->flow[kClient].bytes + p->flow[kUpstream].bytes;
      if (total != p->lastBytes) {
        p->lastBytes = total;
        p->lastActive = now;
      }
      // Strict comparisons: the clock is whole milliseconds (truncated), so a difference of exactly the bound can
      // be up to 1 ms short of it, and a bound must never end a connection early.
      if (p->maxDeadline >= 0 && now > p->maxDeadline) {
        ClosePair(p, kMaxDuration, 0, 0, false);
      } else if (p->halfClosedAt > 0 && p->halfCloseMs >= 0 && now - p->halfClosedAt > p->halfCloseMs) {
        ClosePair(p, kHalfClose, 0, 0, false);
      } else if (p->idleMs >= 0 && now - p->lastActive > p->idleMs) {
        ClosePair(p, kIdle, 0, 0, false);
      }
      p = next;
    }
  }

  std::mutex mu_;
  std::mutex inboxMu_;  // guards inbox_
  std::vector<Pair*> inbox_;
  std::atomic<bool> inboxPending_{false};
  std::atomic<bool> sleeping_{false};
  std::mutex outMu_;  // guards outbox_ and signalled_
  std::vector<Record> outbox_;
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
  int epfd_ = -1;
  int wakefd_ = -1;
  bool stopping_ = false;
  bool signalled_ = false;
  int64_t sweepMs_ = 1000;
  int64_t nextSweep_ = 0;
  Pair* head_ = nullptr;
  std::unordered_map<uint32_t, Pair*> byId_;
  std::vector<Record> records_;
  std::vector<Pair*> graveyard_;
  std::vector<char*> pool_;
  char* scratch_ = nullptr;
};

class Relay : public Napi::ObjectWrap<Relay> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Relay",
                       {
                           InstanceMethod<&Relay::AdoptJs>("adopt"),
                           InstanceMethod<&Relay::AbortJs>("abort"),
                           InstanceMethod<&Relay::SnapshotJs>("snapshot"),
                           InstanceMethod<&Relay::SetSweepJs>("setSweepInterval"),
                           InstanceMethod<&Relay::RefJs>("ref"),
                           InstanceMethod<&Relay::UnrefJs>("unref"),
                           InstanceMethod<&Relay::CloseJs>("close"),
                       });
  }

  // new Relay(onEnded: (records: Float64Array) => void, sweepMs: number)
  explicit Relay(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Relay>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 2 || !info[0].IsFunction() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "new Relay(onEnded, sweepMs) expects a function and a number").ThrowAsJavaScriptException();
      return;
    }
    core_ = new Core();
    const int err = core_->Open();
    if (err != 0) {
      delete core_;
      core_ = nullptr;
      ThrowSystemError(env, err, "epoll_create1");
      return;
    }
    core_->SetSweep(static_cast<int64_t>(info[1].As<Napi::Number>().Int64Value()));
    // The finalizer runs once the loop has released the function (Stop) and every queued delivery has run.
    Napi::ThreadSafeFunction tsfn = Napi::ThreadSafeFunction::New(
        env, info[0].As<Napi::Function>(), "meshctl-relay", 0, 1, core_, [](Napi::Env, Core* core) { delete core; });
    tsfn.Unref(env);
    tsfn_ = tsfn;
    core_->Start(tsfn);
    napi_add_env_cleanup_hook(env, CleanupHook, this);
    hooked_ = true;
  }

  ~Relay() override { Shutdown(); }

 private:
  static void CleanupHook(void* arg) {
    Relay* self = static_cast<Relay*>(arg);
    self->hooked_ = false;
    self->Shutdown();
  }

  void Shutdown() {
    if (core_ == nullptr) return;
    Core* core = core_;
    core_ = nullptr;
    core->Stop();  // the tsfn finalizer deletes it
    if (hooked_) {
      napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
      hooked_ = false;
    }
  }

  bool Check(Napi::Env env) {
    if (core_ != nullptr) return true;
    Napi::Error::New(env, "the relay is closed").ThrowAsJavaScriptException();
    return false;
  }

  // adopt(id, clientFd, upstreamFd, maxRemainingMs, idleMs, halfCloseMs, keepaliveSec): -1 = no bound.
  Napi::Value AdoptJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 7) {
      Napi::TypeError::New(env, "adopt expects 7 numbers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int64_t v[7];
    for (size_t i = 0; i < 7; i++) {
      if (!info[i].IsNumber()) {
        Napi::TypeError::New(env, "adopt expects 7 numbers").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      v[i] = info[i].As<Napi::Number>().Int64Value();
    }
    if (v[0] < 0 || v[0] > 0xffffffffLL || v[1] < 0 || v[2] < 0 || v[1] > 0x7fffffff || v[2] > 0x7fffffff) {
      Napi::TypeError::New(env, "adopt: id and fds must be non-negative integers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const int err = core_->Adopt(static_cast<uint32_t>(v[0]), static_cast<int>(v[1]), static_cast<int>(v[2]), v[3], v[4], v[5],
                                 static_cast<int>(v[6]));
    if (err != 0) return ThrowSystemError(env, err, "adopt");
    return env.Undefined();
  }

  // abort(id, reset: boolean) -> whether the pair was still open
  Napi::Value AbortJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsBoolean()) {
      Napi::TypeError::New(env, "abort(id, reset) expects a number and a boolean").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const bool found = core_->Abort(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::Boolean>().Value());
    return Napi::Boolean::New(env, found);
  }

  // snapshot(id, out: Float64Array(3)) -> false if gone; else out = [fromClient, fromUpstream, halfClosed 0|1]
  Napi::Value SnapshotJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsTypedArray()) {
      Napi::TypeError::New(env, "snapshot(id, out) expects a number and a Float64Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::TypedArray array = info[1].As<Napi::TypedArray>();
    if (array.TypedArrayType() != napi_float64_array || array.ElementLength() < 3) {
      Napi::TypeError::New(env, "snapshot: out must be a Float64Array of at least 3").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Float64Array out = array.As<Napi::Float64Array>();
    uint64_t fromClient = 0;
    uint64_t fromUpstream = 0;
    bool halfClosed = false;
    if (!core_->Snapshot(info[0].As<Napi::Number>().Uint32Value(), &fromClient, &fromUpstream, &halfClosed)) {
      return Napi::Boolean::New(env, false);
    }
    out[0] = static_cast<double>(fromClient);
    out[1] = static_cast<double>(fromUpstream);
    out[2] = halfClosed ? 1 : 0;
    return Napi::Boolean::New(env, true);
  }

  Napi::Value SetSweepJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int64Value() < 1) {
      Napi::TypeError::New(env, "setSweepInterval(ms) expects a positive number").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    core_->SetSweep(info[0].As<Napi::Number>().Int64Value());
    return env.Undefined();
  }

  // While connections are relayed, their end reports must keep the event loop alive.
  Napi::Value RefJs(const Napi::CallbackInfo& info) {
    if (core_ != nullptr) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value UnrefJs(const Napi::CallbackInfo& info) {
    if (core_ != nullptr) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }


  Napi::Value CloseJs(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  Core* core_ = nullptr;
  Napi::ThreadSafeFunction tsfn_;
  bool hooked_ = false;
};

}  // namespace

void InitRelay(Napi::Env env, Napi::Object exports) {
  exports.Set("Relay", Relay::Define(env));
  Napi::Object codes = Napi::Object::New(env);
  for (const EndName& end : kEndNames) codes.Set(end.name, Napi::Number::New(env, end.code));
  codes.Freeze();
  exports.Set("relayEndCodes", codes);
  exports.Set("relayRecordFields", Napi::Number::New(env, static_cast<double>(kRecordFields)));
}

}  // namespace meshctl
