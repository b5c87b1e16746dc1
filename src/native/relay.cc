// Relay: moves the bytes of established proxied connections on a thread of its own, so that payload never
// enters JavaScript. Pairs arrive two ways: JS accepts, decides and connects, then hands both sockets here (adopt);
// or the thread's own front door (front_door.cc) accepts on a listening socket JS gave it and connects upstream
// natively. One epoll loop per Core does read/send through a 64 KiB scratch buffer, mirrors FIN per direction and
// RST across, enforces the idle, half-close, max-duration and connect bounds with one coarse sweep, arms TCP
// keepalive, and reports each connection's end (bytes per direction, how it ended) back to JS in batches through a
// thread-safe function. The JS class is in relay_binding.cc.
//
// Memory: an idle pair costs its Pair struct and a map node; a buffer is held only while a direction has bytes
// its destination has not taken yet (and then that direction stops reading, which is the backpressure).
//
// Threading: the loop thread holds `mu` while it touches pairs, except while blocked in epoll_wait. The hot JS
// calls never wait for it: adopt() queues the new pair in `inbox` (its own short lock) and wakes the loop only
// when it sleeps; end records go out through `outbox` (another short lock). Holding `mu` across a whole batch
// of events (sends that run the peer's network stack, closes) made adopt() wait behind it: ~4 futex calls per
// proxied connection under connect+close load. The rare calls (abort, snapshot, listen, list) take `mu` and first
// register whatever the inbox holds. A pair (or listener) closed by either thread is deregistered from epoll, moved
// to a graveyard and freed only by the loop thread before its next epoll_wait, so an event harvested before the
// close never points to freed memory (it is marked closed and skipped) and no later wait can report one.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "relay_core.h"

namespace meshctl {

namespace {
constexpr size_t kChunk = 64 * 1024;
// Free chunks kept for reuse: enough for a few bulk streams, small next to the per-connection budget.
constexpr size_t kPoolMax = 16;
// Freed Pair structs kept for the next connections: churn then allocates nothing but the id map's node.
constexpr size_t kPairPoolMax = 1024;
constexpr int kMaxEvents = 256;
// Epoll data: a Pair's address with the side (0, 1) in the low bits, or a Listener's with kListenerTag; both are
// at least 8-byte aligned. 0 is the wake-up eventfd.
constexpr uint64_t kListenerTag = 2;
constexpr uint64_t kTagMask = 7;

uint64_t Tag(Pair* p, int side) { return reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(side); }

void ArmKeepalive(int fd, int idleSec) {
  const int on = 1;
  const int interval = 1;
  const int count = 10;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idleSec, sizeof(idleSec));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}
}  // namespace

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int64_t NowUs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

void SetLingerZero(int fd) {
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

int SocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ? errno : err;
}

// Returns 0 or an errno; on failure nothing is left open.
int Core::Open() {
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
  TakeOwnSlot();
  return 0;
}

void Core::Start(Napi::ThreadSafeFunction tsfn, Napi::Function onAccepted) {
  tsfn_ = tsfn;
  if (!onAccepted.IsEmpty()) {
    onAccepted_ = Napi::Persistent(onAccepted);
    hasOnAccepted_ = true;
  }
  thread_ = std::thread([this] { Loop(); });
}

// Joins the loop, closes what is still open (plain close; connections not yet given to JS are reset) and releases
// the thread-safe function. Idempotent.
void Core::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  // The records of pairs that ended before the stop and still wait for their batch's tick: delivered (the thread-safe
  // function runs queued calls before its release completes); the pairs closed below are closed without one.
  if (!records_.empty()) QueueRecords();
  {
    std::lock_guard<std::mutex> in(inboxMu_);
    for (Pair* p : inbox_) {
      close(p->fd[kClient]);
      close(p->fd[kUpstream]);
      delete p;
    }
    inbox_.clear();
  }
  CloseListeners();
  while (head_ != nullptr) ClosePair(head_, kAborted, 0, 0, false);
  ReleaseOwnSlot();
  FreeGraveyard();
  for (Pair* p : pairPool_) delete p;
  pairPool_.clear();
  for (char* b : pool_) std::free(b);
  pool_.clear();
  std::free(scratch_);
  scratch_ = nullptr;
  if (diagFd_ >= 0) close(diagFd_);
  close(wakefd_);
  close(epfd_);
  tsfn_.Release();
}

void Core::SetSweep(int64_t ms) {
  std::lock_guard<std::mutex> lock(mu_);
  sweepMs_ = ms;
  nextSweep_ = NowMs() + ms;
  Wake();
}

// Takes duplicates of both sockets (the caller then closes its own) and queues the pair for the loop; 0 or an
// errno (the duplicates are the only step that can fail here: a registration the loop cannot make ends the
// pair with kAdoptFailed).
int Core::Adopt(uint32_t id, int clientFd, int upstreamFd, int64_t maxRemainingMs, int64_t idleMs,
                int64_t halfCloseMs, int keepaliveSec) {
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
void Core::DrainInbox() {
  if (!inboxPending_.exchange(false)) return;
  std::vector<Pair*> batch;
  {
    std::lock_guard<std::mutex> in(inboxMu_);
    batch.swap(inbox_);
  }
  for (Pair* p : batch) Register(p);
}

// A pair from the pool (or new), reset; with mu_ held.
Pair* Core::NewPair() {
  if (pairPool_.empty()) return new Pair();
  Pair* p = pairPool_.back();
  pairPool_.pop_back();
  *p = Pair();
  return p;
}

// Into the list of open pairs and the id map. Ids are unique among open pairs by construction: JS reuses an
// adopt() id only after that pair's end record has reached it (the record is written after the id has left
// byId_), and front-door ids come from their own process-wide range (front_door.cc).
void Core::Link(Pair* p) {
  p->next = head_;
  if (head_ != nullptr) head_->prev = p;
  head_ = p;
  byId_.emplace(p->id, p);
}

void Core::Register(Pair* p) {
  Link(p);
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
bool Core::Abort(uint64_t id, bool reset) {
  std::lock_guard<std::mutex> lock(mu_);
  DrainInbox();
  auto it = byId_.find(id);
  if (it == byId_.end()) return false;
  ClosePair(it->second, kAborted, 0, 0, reset);
  SignalRecords(true);
  return true;
}

// Live byte counts and whether one direction has ended; false if the pair is gone.
bool Core::Snapshot(uint64_t id, uint64_t* fromClient, uint64_t* fromUpstream, bool* halfClosed) {
  std::lock_guard<std::mutex> lock(mu_);
  DrainInbox();
  auto it = byId_.find(id);
  if (it == byId_.end()) return false;
  *fromClient = it->second->flow[kClient].bytes;
  *fromUpstream = it->second->flow[kUpstream].bytes;
  *halfClosed = it->second->flow[kClient].eof || it->second->flow[kUpstream].eof;
  return true;
}

void Core::Wake() {
  const uint64_t one = 1;
  ssize_t ignored = write(wakefd_, &one, sizeof(one));
  (void)ignored;
}

void Core::Loop() {
  epoll_event events[kMaxEvents];
  std::unique_lock<std::mutex> lock(mu_);
  nextSweep_ = NowMs() + sweepMs_;
  while (!stopping_) {
    FreeGraveyard();
    DrainInbox();
    SignalRecords(false);  // ends found while registering
    int64_t wait = nextSweep_ - NowMs();
    if (recordsDueUs_ != 0) {
      // Wake for the batch's tick (rounded up: epoll_wait counts whole ms).
      const int64_t due = (recordsDueUs_ - NowUs() + 999) / 1000;
      if (due < wait) wait = due;
    }
    lock.unlock();
    sleeping_.store(true);
    if (inboxPending_.load()) wait = 0;
    const int n = epoll_wait(epfd_, events, kMaxEvents, wait < 0 ? 0 : static_cast<int>(wait));
    sleeping_.store(false);
    lock.lock();
    if (stopping_) break;
    for (int i = 0; i < n; i++) Dispatch(events[i].data.u64, events[i].events);
    Rebalance();
    const int64_t now = NowMs();
    if (now >= nextSweep_) {
      Sweep(now);
      nextSweep_ = now + sweepMs_;
    }
    SignalRecords(false);
    SignalAccepted();
  }
}

void Core::Dispatch(uint64_t tag, uint32_t events) {
  if (tag == 0) {
    uint64_t count;
    ssize_t ignored = read(wakefd_, &count, sizeof(count));
    (void)ignored;
    return;
  }
  if ((tag & kTagMask) == kListenerTag) {
    Listener* l = reinterpret_cast<Listener*>(tag & ~kTagMask);
    if (!l->closed) AcceptSome(l);
    return;
  }
  Pair* p = reinterpret_cast<Pair*>(tag & ~kTagMask);
  if (p->closed) return;
  if (p->connecting) FinishConnect(p, events);
  else Handle(p, static_cast<int>(tag & 1), events);
}

// With mu_ held: moves the end records to the outbox and asks JS for one delivery per batch. Not on every loop
// pass: a batch leaves at the next whole millisecond of the monotonic clock after its first record (so the relay
// threads of a process, on the same clock, wake the JS thread together), or at once when it holds kBatchRecords,
// or when `force` (JS's own abort, which it waits to see). The loop sleeps no longer than to that tick, so the last
// records of a quiet moment arrive within ~1 ms too; Stop() hands over whatever is left.
void Core::SignalRecords(bool force) {
  if (records_.empty() || stopping_) return;
  if (!force && records_.size() < kBatchRecords) {
    const int64_t now = NowUs();
    if (recordsDueUs_ == 0) recordsDueUs_ = (now / kBatchUs + 1) * kBatchUs;
    if (now < recordsDueUs_) return;
  }
  recordsDueUs_ = 0;
  QueueRecords();
}

// With mu_ held: records_ to the outbox, and a delivery call unless one is queued already.
void Core::QueueRecords() {
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

// Registers exactly the events side `s` needs: readable while its flow can take bytes, writable while the
// other flow has bytes waiting for it. An fd parked after EPOLLHUP (which epoll reports even with no events
// asked for) is re-added only once it needs something again.
void Core::SetInterest(Pair* p, int s) {
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

void Core::Handle(Pair* p, int s, uint32_t ev) {
  if (ev & EPOLLERR) {
    const int err = SocketError(p->fd[s]);
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

char* Core::TakeChunk() {
  if (!pool_.empty()) {
    char* b = pool_.back();
    pool_.pop_back();
    return b;
  }
  return static_cast<char*>(std::malloc(kChunk));
}

void Core::GiveChunk(char* b) {
  if (pool_.size() < kPoolMax) pool_.push_back(b);
  else std::free(b);
}

// One read from side s and an immediate send to the other side; what the other side does not take stays in
// the flow's buffer (the scratch chunk itself, so nothing is copied) and s stops being read until it drains.
void Core::Pump(Pair* p, int s) {
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
    // The FIN first: when it is the second one the pair closes, and re-arming s (an epoll_ctl) would be wasted.
    PassFin(p, s);
    if (!p->closed) SetInterest(p, s);
    return;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
  Fail(p, s, errno);
}

// Writes flow d's waiting bytes to side 1 - d.
void Core::Flush(Pair* p, int d) {
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
void Core::PassFin(Pair* p, int s) {
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
void Core::Fail(Pair* p, int s, int err) {
  int code = kError;
  if (err == ECONNRESET || err == EPIPE) code = kReset;
  else if (err == ETIMEDOUT) code = kKeepalive;
  SetLingerZero(p->fd[1 - s]);
  ClosePair(p, code, s, err, false);
}

// The end record; a front-door pair's endpoints are copied as they are (JS formats them only when it needs the text).
static Record RecordOf(const Pair* p, int code, int aux, int err) {
  Record r{};
  r.id = p->id;
  r.fromClient = p->flow[kClient].bytes;
  r.fromUpstream = p->flow[kUpstream].bytes;
  r.code = code;
  r.aux = aux;
  r.err = err;
  r.front = p->front;
  if (!p->front) return r;
  r.listenerId = p->listenerId;
  r.flags = p->flags;
  r.durationUs = NowUs() - p->acceptedUs;
  r.connectUs = p->connectUs;
  r.source = p->source;
  r.dst = p->dst;
  // Known from connect() on, reported once the upstream answered (a failed connect has no upstream to speak of).
  if (p->connectUs >= 0) r.upstreamLocal = p->upstreamLocal;
  return r;
}

void Core::ClosePair(Pair* p, int code, int aux, int err, bool reset) {
  if (p->closed) return;
  p->closed = true;
  if (p->front) {
    if (p->connecting) connecting_--;
    frontOpen_--;
    PublishOpen();
  }
  if (p->ownListed) UnlistOwn(p);
  for (int s = 0; s < 2; s++) {
    if (p->fd[s] < 0) continue;
    if (reset) SetLingerZero(p->fd[s]);
    // Deregister before close: close() alone leaves the registration in place while another descriptor of the
    // same socket is open (Node's own, in the moment between adopt and Node closing it), and a later wait
    // would then report an event for a pair already freed. A front-door pair's sockets never had another
    // descriptor (accept4 / socket here, close-on-exec), so their close() ends the registration itself.
    if (!p->parked[s] && !p->front) epoll_ctl(epfd_, EPOLL_CTL_DEL, p->fd[s], nullptr);
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
  records_.push_back(RecordOf(p, code, aux, err));
  graveyard_.push_back(p);
}

void Core::FreeGraveyard() {
  for (Pair* p : graveyard_) {
    if (pairPool_.size() < kPairPoolMax) pairPool_.push_back(p);
    else delete p;
  }
  graveyard_.clear();
  for (Listener* l : deadListeners_) delete l;
  deadListeners_.clear();
}

// The epoll events a connecting socket has pending now (writable: connected; error or hang-up: refused), or 0
// while its handshake is still unanswered.
static uint32_t ConnectAnswer(int fd) {
  pollfd pfd{fd, POLLOUT, 0};
  if (poll(&pfd, 1, 0) <= 0) return 0;
  uint32_t events = 0;
  if (pfd.revents & POLLOUT) events |= EPOLLOUT;
  if (pfd.revents & POLLERR) events |= EPOLLERR;
  if (pfd.revents & POLLHUP) events |= EPOLLHUP;
  return events;
}

// The coarse timer pass over every pair, then the listeners that backed off since the last one.
void Core::Sweep(int64_t now) {
  Pair* p = head_;
  while (p != nullptr) {
    Pair* next = p->next;
    SweepPair(p, now);
    p = next;
  }
  RearmListeners();
}

// Activity is read from the byte counters (no clock read per chunk), keepalive is armed on the first pass that
// sees a pair (connections shorter than one sweep never pay for it), then the bounds in the order the JS relay
// checks them: max duration, half-close, idle. A connect in progress has only its own bound (and max duration).
void Core::SweepPair(Pair* p, int64_t now) {
  // Strict comparisons: the clock is whole milliseconds (truncated), so a difference of exactly the bound can be
  // up to 1 ms short of it, and a bound must never end a connection early.
  if (p->connecting) {
    if (p->connectDeadline >= 0 && now > p->connectDeadline) {
      // The bound is on the kernel's answer, not on this thread's turn: a thread that lost the CPU between its
      // connect() and this sweep (a loaded host) has not harvested a completion that came in time. Ask the socket.
      const uint32_t answered = ConnectAnswer(p->fd[kUpstream]);
      if (answered != 0) {
        stats_.connectAnsweredLate++;
        FinishConnect(p, answered);
      } else {
        ConnectFailed(p, kConnectTimeout, ETIMEDOUT);
      }
    } else if (p->maxDeadline >= 0 && now > p->maxDeadline) ConnectFailed(p, kMaxDuration, 0);
    return;
  }
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
  if (p->maxDeadline >= 0 && now > p->maxDeadline) {
    ClosePair(p, kMaxDuration, 0, 0, false);
  } else if (p->halfClosedAt > 0 && p->halfCloseMs >= 0 && now - p->halfClosedAt > p->halfCloseMs) {
    ClosePair(p, kHalfClose, 0, 0, false);
  } else if (p->idleMs >= 0 && now - p->lastActive > p->idleMs) {
    ClosePair(p, kIdle, 0, 0, false);
  }
}

}  // namespace meshctl
