// The front door: the relay thread accepts on listening sockets JS gave it (listen), reads each connection's original
// destination, refuses what must not be proxied (not redirected, the proxy's own socket looped back), hands the
// destinations JS decides to it in batches (onAccepted), and for everything else connects upstream itself and relays
// the pair like an adopted one (relay.cc). This takes JavaScript off the common connection path: two net.Sockets,
// policy and the connect cost ~47 µs per connection there, and the thread needs accept4, getsockopt, socket, two
// setsockopt(TCP_NODELAY), connect, getsockname and epoll_ctl (SO_ERROR only for a failed connect; the self-loop check
// asks sock_diag only where the set of the threads' own upstream sockets cannot answer: OwnRegistry below).
//
// Several relay threads of one process listen on the same socket: each registers its own dup with EPOLLEXCLUSIVE,
// so the kernel wakes one of them per connection instead of all. Everything here runs with Core::mu_ held: the loop
// thread's accept/connect path, and JS's rare calls (listen, unlisten, list, stats).
#include <arpa/inet.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <unordered_map>

#include "relay_core.h"
#include "socket_owner.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

namespace meshctl {

namespace {
// Connections accepted per listener wake-up before the loop serves the pairs again (fairness under a flood).
constexpr int kAcceptBurst = 64;
constexpr uint64_t kListenerTag = 2;

// Front-door ids: one counter for the whole process (every relay thread), above the uint32 range of the ids JS
// picks for adopt(), so the two never meet in an end record or in abort().
std::atomic<uint64_t> frontIds{0};
uint64_t NextFrontId() { return (uint64_t{1} << 32) + frontIds.fetch_add(1, std::memory_order_relaxed); }

const void* AddressBytes(const Endpoint& e) {
  return e.sa.sa_family == AF_INET6 ? static_cast<const void*>(&e.v6.sin6_addr) : static_cast<const void*>(&e.v4.sin_addr);
}

uint16_t PortOf(const Endpoint& e) { return e.sa.sa_family == AF_INET6 ? e.v6.sin6_port : e.v4.sin_port; }

// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST: 0 or the errno (ENOENT: conntrack has no NAT entry for it).
int ReadOriginalDst(int fd, int family, Endpoint* dst) {
  socklen_t len = family == 4 ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  const int level = family == 4 ? SOL_IP : SOL_IPV6;
  const int name = family == 4 ? SO_ORIGINAL_DST : IP6T_SO_ORIGINAL_DST;
  if (getsockopt(fd, level, name, &dst->sa, &len) != 0) return errno;
  return 0;
}

bool PrefixMatches(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole)) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

bool MatchesAny(const std::vector<AskEntry>& entries, int family, const uint8_t* addr) {
  for (const AskEntry& a : entries) {
    if (a.family == family && PrefixMatches(addr, a.addr, a.prefix)) return true;
  }
  return false;
}

bool Asked(const FrontDoorOptions& o, const Endpoint& dst) {
  const int family = dst.sa.sa_family == AF_INET6 ? 6 : 4;
  const uint8_t* addr = static_cast<const uint8_t*>(AddressBytes(dst));
  if (MatchesAny(o.askAnyPort, family, addr)) return true;
  if (o.askByPort.empty()) return false;
  auto it = o.askByPort.find(ntohs(PortOf(dst)));
  return it != o.askByPort.end() && MatchesAny(it->second, family, addr);
}

// Splits `ask` into the index Asked() reads (on the JS thread, before the options reach the loop).
void IndexAsk(FrontDoorOptions* o) {
  for (const AskEntry& a : o->ask) {
    if (a.port == 0) o->askAnyPort.push_back(a);
    else o->askByPort[a.port].push_back(a);
  }
}

// Whether the original destination is the listener itself: conntrack, active in a namespace with NAT rules, gives
// a connection made straight to the listener its own address instead of ENOENT, and connecting there would loop.
bool IsListenerItself(const Endpoint& local, const Endpoint& dst) {
  if (local.sa.sa_family != dst.sa.sa_family || PortOf(local) != PortOf(dst)) return false;
  if (local.sa.sa_family == AF_INET) {
    return local.v4.sin_addr.s_addr == INADDR_ANY || local.v4.sin_addr.s_addr == dst.v4.sin_addr.s_addr;
  }
  return IN6_IS_ADDR_UNSPECIFIED(&local.v6.sin6_addr) || IN6_ARE_ADDR_EQUAL(&local.v6.sin6_addr, &dst.v6.sin6_addr);
}

void SetNoDelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool AcceptIsTransient(int err) { return err == EINTR || err == ECONNABORTED || err == EPROTO || err == EPERM; }

// The relay threads' own upstream sockets, process-wide: a connection that loops back (the proxy's own upstream
// connection redirected to its listener) has that socket's local endpoint as its peer and that socket's
// destination as its original destination (REDIRECT changes only the destination, unless conntrack must also
// change the source port: IsSelfLoop), so the 4-tuple finds it without asking the kernel (sock_diag: a netlink
// sendto + recvfrom, ~3 µs). Entries go in right after connect() (the port is chosen by then; getsockname there is
// the one the end record needed anyway) and out before close().
//
// The race: on loopback the looped SYN can be accepted by another thread before connect() has even returned. So a
// thread sets its slot's sequence odd before connect() and even after the insert; an accepting thread reads every
// slot before it looks the 4-tuple up, and on a miss with a slot that was odd (a connect under way somewhere) it
// asks sock_diag instead. If a slot was even, that thread's connects so far are all in the set already (inserted
// before the sequence moved; seq_cst), and a connect started later cannot be the one that made the looped SYN it
// already accepted.
//
// Where the set cannot answer, sock_diag still does: asked connections (JavaScript decides them), listeners whose
// options do not say the set is final (FrontDoorOptions.selfLoopOwnSet: false with more than one proxy process),
// and a thread without a slot (more than kOwnSlots relay threads). Not in the set at all: sockets JavaScript
// connects (the Node streams path: services, the mTLS tunnel) and other processes' — see selfLoopOwnSet.
struct OwnKey {
  uint8_t family;
  uint16_t localPort;
  uint16_t remotePort;
  uint8_t local[16];
  uint8_t remote[16];
  bool operator==(const OwnKey& o) const {
    return family == o.family && localPort == o.localPort && remotePort == o.remotePort &&
           std::memcmp(local, o.local, 16) == 0 && std::memcmp(remote, o.remote, 16) == 0;
  }
};

struct OwnKeyHash {
  size_t operator()(const OwnKey& k) const {
    uint64_t h = 1469598103934665603ULL;
    const auto mix = [&h](const uint8_t* b, size_t n) {
      for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
    };
    mix(k.local, k.family == 4 ? 4 : 16);
    mix(k.remote, k.family == 4 ? 4 : 16);
    h ^= (static_cast<uint64_t>(k.localPort) << 16) | k.remotePort;
    return static_cast<size_t>(h * 0x9E3779B97F4A7C15ULL);
  }
};

constexpr int kOwnSlots = 64;

struct OwnRegistry {
  std::mutex mu;
  std::unordered_map<OwnKey, bool, OwnKeyHash> set;  // value: the socket is a loop suspect's upstream
  std::atomic<uint64_t> seq[kOwnSlots];  // odd while that slot's thread is between connect() and its insert
  std::atomic<bool> used[kOwnSlots];
  std::atomic<int> unslotted{0};  // threads that could not take a slot: their connects are not flagged
  // Balance (Core::Busier): each slot's open front-door pairs, and the listener ids it accepts on (bit id % 64).
  std::atomic<uint64_t> open[kOwnSlots];
  std::atomic<uint64_t> listening[kOwnSlots];
  std::atomic<int> slots{0};  // one past the highest slot ever taken: Busier looks no further
  Core* core[kOwnSlots];      // guarded by mu: Core::Yield wakes the thread it leaves accepting to
  OwnRegistry() {
    for (int i = 0; i < kOwnSlots; i++) {
      seq[i].store(0);
      used[i].store(false);
      open[i].store(0);
      listening[i].store(0);
      core[i] = nullptr;
    }
  }
};

// A thread leaves accepting to another once it carries more than this many front-door pairs beyond it, plus 1/16
// of its own (Core::Busier): eight bulk streams spread 4 / 4 or 5 / 3; a large count need not match pair for pair.
constexpr uint64_t kBalanceSlack = 1;
constexpr uint64_t kBalanceShareDivisor = 16;

uint64_t ListenerBit(int32_t id) { return uint64_t{1} << (static_cast<uint32_t>(id) % 64); }

OwnRegistry& Own() {
  static OwnRegistry* registry = new OwnRegistry();  // never destroyed: threads may outlive static destructors
  return *registry;
}

bool OwnKeyOf(const Endpoint& local, const Endpoint& remote, OwnKey* k) {
  std::memset(k, 0, sizeof(*k));
  if (local.sa.sa_family != remote.sa.sa_family) return false;
  if (local.sa.sa_family == AF_INET) {
    k->family = 4;
    std::memcpy(k->local, &local.v4.sin_addr, 4);
    std::memcpy(k->remote, &remote.v4.sin_addr, 4);
  } else if (local.sa.sa_family == AF_INET6) {
    k->family = 6;
    std::memcpy(k->local, &local.v6.sin6_addr, 16);
    std::memcpy(k->remote, &remote.v6.sin6_addr, 16);
  } else {
    return false;
  }
  k->localPort = PortOf(local);
  k->remotePort = PortOf(remote);
  return true;
}
}  // namespace

void Core::TakeOwnSlot() {
  OwnRegistry& r = Own();
  for (int i = 0; i < kOwnSlots; i++) {
    bool expected = false;
    if (r.used[i].compare_exchange_strong(expected, true)) {
      ownSlot_ = i;
      {
        std::lock_guard<std::mutex> lock(r.mu);
        r.core[i] = this;
      }
      int seen = r.slots.load();
      while (seen < i + 1 && !r.slots.compare_exchange_weak(seen, i + 1)) {
      }
      return;
    }
  }
  r.unslotted.fetch_add(1);
}

void Core::ReleaseOwnSlot() {
  OwnRegistry& r = Own();
  if (ownSlot_ < 0) {
    r.unslotted.fetch_sub(1);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(r.mu);
    r.core[ownSlot_] = nullptr;  // after this no Yield wakes the thread: its wake fd closes next
  }
  r.open[ownSlot_].store(0);
  r.listening[ownSlot_].store(0);
  r.used[ownSlot_].store(false);
  ownSlot_ = -1;
}

void Core::PublishOpen() {
  if (ownSlot_ >= 0) Own().open[ownSlot_].store(frontOpen_, std::memory_order_relaxed);
}

// With mu_ held, after listeners_ changed.
void Core::PublishListening() {
  if (ownSlot_ < 0) return;
  uint64_t bits = 0;
  for (const auto& entry : listeners_) bits |= ListenerBit(entry.first);
  Own().listening[ownSlot_].store(bits, std::memory_order_relaxed);
}

// Balance. EPOLLEXCLUSIVE wakes one thread per arrival, the first in the listener's wait queue that sleeps; and a
// woken thread accepts what the backlog holds. So one thread could take every connection of a burst (32 RR
// connections opened at once: RR c=32 ran on one core, 42.7k-57.3k op/s between runs) or of a slow series
// (iperf3 -P 8 connects its streams one by one while both threads sleep: bulk-8 on one core). Before each accept a
// thread asks whether it carries more than its share (Busier); if so it deregisters from the listener (Yield) and
// wakes the least busy thread that accepts on it, which accepts what is waiting and is the one woken for new
// arrivals. A yielded thread registers again (Rebalance) once it no longer carries more, when woken by a thread
// that yields to it, and at every sweep whatever it carries (so nothing waits on a thread that could not accept).
// Balanced threads pay one relaxed load per other thread per accept.
bool Core::Busier(int32_t listenerId, int* least) const {
  if (ownSlot_ < 0) return false;
  OwnRegistry& r = Own();
  const uint64_t bit = ListenerBit(listenerId);
  const int slots = r.slots.load(std::memory_order_relaxed);
  uint64_t fewest = UINT64_MAX;
  for (int i = 0; i < slots; i++) {
    if (i == ownSlot_ || (r.listening[i].load(std::memory_order_relaxed) & bit) == 0) continue;
    const uint64_t n = r.open[i].load(std::memory_order_relaxed);
    if (n < fewest) {
      fewest = n;
      *least = i;
    }
  }
  return fewest != UINT64_MAX && fewest + kBalanceSlack + frontOpen_ / kBalanceShareDivisor < frontOpen_;
}

// Deregisters l and wakes the thread in slot `least`. False (go on accepting) if the listener stays registered.
bool Core::Yield(Listener* l, int least) {
  if (epoll_ctl(epfd_, EPOLL_CTL_DEL, l->fd, nullptr) != 0) return false;
  l->yielded = true;
  yieldedCount_++;
  stats_.acceptYields++;
  OwnRegistry& r = Own();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.core[least] != nullptr) r.core[least]->Poke(ListenerBit(l->id));
  return true;
}

void Core::Poke(uint64_t listenerBits) {
  pokedMask_.fetch_or(listenerBits);
  Wake();
}

// Loop, mu_ held, after the events of a pass: what another thread left to this one is accepted now (its arrivals
// may all be in the backlog already, with no wake-up left to come), and a yielded listener is registered again
// once this thread no longer carries more than its share.
void Core::Rebalance() {
  // Every loop pass comes here: a plain load first, the exchange only when a thread did poke.
  if (yieldedCount_ == 0 && pokedMask_.load(std::memory_order_relaxed) == 0) return;
  const uint64_t poked = pokedMask_.exchange(0);
  for (auto& entry : listeners_) {
    Listener* l = entry.second;
    if (l->closed || l->backedOff) continue;
    int least;
    if (l->yielded && !Busier(l->id, &least)) Rearm(l);
    if (!l->yielded && (poked & ListenerBit(l->id)) != 0) AcceptSome(l);
  }
}

// A deregistered listener (yielded or backed off) back in this thread's epoll, at the back of its wait queue.
void Core::Rearm(Listener* l) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = reinterpret_cast<uintptr_t>(l) | kListenerTag;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, l->fd, &ev) != 0) return;
  if (l->yielded) yieldedCount_--;
  l->yielded = false;
  l->backedOff = false;
}

// The upstream's local endpoint, and (with the pair's destination) its entry in the own-socket set. Right after
// connect(): the kernel has chosen the port.
void Core::ListOwn(Pair* p) {
  socklen_t len = sizeof(p->upstreamLocal);
  if (getsockname(p->fd[kUpstream], &p->upstreamLocal.sa, &len) != 0) {
    p->upstreamLocal.sa.sa_family = AF_UNSPEC;
    return;
  }
  OwnKey k;
  if (!OwnKeyOf(p->upstreamLocal, p->dst, &k)) return;
  OwnRegistry& r = Own();
  std::lock_guard<std::mutex> lock(r.mu);
  p->ownListed = r.set.emplace(k, (p->flags & kFlagLoopSuspect) != 0).second;
}

// Before the upstream's close(): once closed its port may go to any socket.
void Core::UnlistOwn(Pair* p) {
  if (!p->ownListed) return;
  p->ownListed = false;
  OwnKey k;
  if (!OwnKeyOf(p->upstreamLocal, p->dst, &k)) return;
  OwnRegistry& r = Own();
  std::lock_guard<std::mutex> lock(r.mu);
  r.set.erase(k);
}

namespace {
// What the set says of (peer, destination), or kNone when it does not hold it.
OwnPeer ListedOwn(OwnRegistry& r, const OwnKey& k) {
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.set.find(k);
  if (it == r.set.end()) return OwnPeer::kNone;
  return it->second ? OwnPeer::kLoop : OwnPeer::kSuspect;
}

bool AnyOwnConnect(OwnRegistry& r) {
  if (r.unslotted.load() > 0) return true;
  for (int i = 0; i < kOwnSlots; i++) {
    if (r.used[i].load() && (r.seq[i].load() & 1) != 0) return true;
  }
  return false;
}

// Waits (at most kOwnConnectWaitUs, yielding the CPU) until every connect under way has listed its socket. False
// when one has not by then, or a thread without a slot may be connecting (its connects are not flagged).
constexpr int64_t kOwnConnectWaitUs = 2000;
bool WaitForOwnConnects(OwnRegistry& r) {
  if (r.unslotted.load() > 0) return false;
  uint64_t odd[kOwnSlots];
  for (int i = 0; i < kOwnSlots; i++) odd[i] = r.used[i].load() ? r.seq[i].load() : 0;
  const int64_t deadline = NowUs() + kOwnConnectWaitUs;
  for (;;) {
    bool waiting = false;
    for (int i = 0; i < kOwnSlots && !waiting; i++) waiting = (odd[i] & 1) != 0 && r.seq[i].load() == odd[i];
    if (!waiting) return true;
    if (NowUs() > deadline) return false;
    sched_yield();
  }
}
}  // namespace

// Whether an accepted outbound connection is one of the proxy's own, looped back (see OwnRegistry).
//
// Its peer endpoint alone does not prove it. conntrack gives a redirected connection a new source port when the
// tuple it would have after REDIRECT (the client's address and port -> the listener) is taken, as it is while an
// earlier connection from the same address and port to another destination is still tracked (TIME_WAIT: 2
// minutes). The port is then the kernel's random pick, and can be the port of one of the proxy's own upstream
// sockets to the same destination: the set and sock_diag then name the proxy's socket for an app's connection.
// So a first match with an own socket is a suspect: the connection is relayed, and its upstream is marked as a
// suspect's, in the set (same process) and with a congestion control algorithm other than the default
// (LoopMarker: what sock_diag shows of any process's socket, without a privilege). A real loop comes straight back
// through that upstream, and a match with a marked socket is refused: a loop always matches twice in a row, a
// remap would have to pick an own socket's port twice. A loop costs one more hop than a refusal at the first (two
// fds while its SYNs go round); its client sees the same reset, as every hop's reset runs back down the chain.
// A suspect is refused at once where its upstream could not be marked (no marker on this host). An asked suspect
// goes to JavaScript with the bit (Accepted.loopSuspect), which connects its upstream marked (connection.ts).
// sock_diag answers where the set cannot: asked connections, listeners whose options do not say the set is final,
// connects under way (after which the set is asked again once they have listed their sockets: a bounded wait).
OwnPeer Core::IsSelfLoop(const FrontDoorOptions& o, const Endpoint& peer, const Endpoint& dst, bool asked) {
  OwnRegistry& r = Own();
  const bool connecting = AnyOwnConnect(r);
  OwnKey k;
  const bool keyed = OwnKeyOf(peer, dst, &k);
  OwnPeer found = keyed ? ListedOwn(r, k) : OwnPeer::kNone;
  bool listed = found != OwnPeer::kNone;
  if (!listed && (asked || !o.selfLoopOwnSet || connecting)) {
    stats_.ownerLookups++;
    found = OwnerOf(peer, dst, o.selfLoopUid);
    if (found == OwnPeer::kSuspect && keyed && WaitForOwnConnects(r)) {
      const OwnPeer again = ListedOwn(r, k);
      listed = again != OwnPeer::kNone;
      if (listed) found = again;
    }
  }
  if (found == OwnPeer::kSuspect && LoopMarker() == nullptr) found = OwnPeer::kLoop;
  if (found == OwnPeer::kLoop && listed) stats_.selfLoopByOwnSet++;
  if (found == OwnPeer::kSuspect) stats_.loopSuspects++;
  return found;
}

socklen_t EndpointLen(const Endpoint& e) {
  return e.sa.sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

void FormatEndpoint(const Endpoint& e, char* out) {
  out[0] = '\0';
  if (e.sa.sa_family != AF_INET && e.sa.sa_family != AF_INET6) return;
  char addr[INET6_ADDRSTRLEN];
  if (inet_ntop(e.sa.sa_family, AddressBytes(e), addr, sizeof(addr)) == nullptr) return;
  const unsigned port = ntohs(PortOf(e));
  if (e.sa.sa_family == AF_INET6) std::snprintf(out, kEndpointText, "[%s]:%u", addr, port);
  else std::snprintf(out, kEndpointText, "%s:%u", addr, port);
}

// Starts accepting on a dup of `fd`, or (same id again) replaces the options for the next accepts and keeps the fd.
int Core::Listen(int32_t id, int fd, FrontDoorOptions opts, const char** syscall) {
  *syscall = "listen";
  // A table that sends connections to JS needs the callback that takes them.
  if (!hasOnAccepted_ && (!opts.passthrough || !opts.ask.empty())) return EINVAL;
  IndexAsk(&opts);
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return EBADF;
  auto it = listeners_.find(id);
  if (it != listeners_.end()) {
    if ((it->second->local.sa.sa_family == AF_INET6 ? 6 : 4) != opts.family) return EAFNOSUPPORT;
    it->second->opts = std::move(opts);
    return 0;
  }
  int accepting = 0;
  socklen_t len = sizeof(accepting);
  *syscall = "getsockopt(SO_ACCEPTCONN)";
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0) return errno;
  Endpoint local{};
  len = sizeof(local);
  *syscall = "getsockname";
  if (getsockname(fd, &local.sa, &len) != 0) return errno;
  *syscall = "listen";
  if (!accepting) return EINVAL;
  const int family = local.sa.sa_family == AF_INET6 ? 6 : local.sa.sa_family == AF_INET ? 4 : 0;
  if (family != opts.family) return EAFNOSUPPORT;
  *syscall = "fcntl(F_DUPFD_CLOEXEC)";
  const int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return errno;
  // O_NONBLOCK is on the open file, which the caller's fd shares (Node's listeners are non-blocking anyway): a
  // thread woken for a connection another thread took must get EAGAIN, not block.
  const int flags = fcntl(dup, F_GETFL);
  Listener* l = new Listener();
  l->id = id;
  l->fd = dup;
  l->local = local;
  l->opts = std::move(opts);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = reinterpret_cast<uintptr_t>(l) | kListenerTag;
  *syscall = "epoll_ctl";
  if (flags < 0 || fcntl(dup, F_SETFL, flags | O_NONBLOCK) != 0 || epoll_ctl(epfd_, EPOLL_CTL_ADD, dup, &ev) != 0) {
    const int err = errno;
    close(dup);
    delete l;
    return err;
  }
  listeners_.emplace(id, l);
  PublishListening();
  return 0;
}

// Stops accepting: the dup is deregistered and closed now; the Listener is freed by the loop (an event for it may
// have been harvested already). Pairs it accepted go on.
bool Core::Unlisten(int32_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return false;
  Listener* l = it->second;
  listeners_.erase(it);
  PublishListening();
  if (l->yielded) yieldedCount_--;
  if (!l->backedOff && !l->yielded) epoll_ctl(epfd_, EPOLL_CTL_DEL, l->fd, nullptr);
  close(l->fd);
  l->fd = -1;
  l->closed = true;
  deadListeners_.push_back(l);
  return true;
}

// Stop(), mu_ held, loop joined: every listener and every connection not yet delivered to JS is closed.
void Core::CloseListeners() {
  for (auto& entry : listeners_) {
    close(entry.second->fd);
    delete entry.second;
  }
  listeners_.clear();
  yieldedCount_ = 0;
  std::lock_guard<std::mutex> out(outMu_);
  for (const Accepted& a : accepted_) close(a.fd);
  accepted_.clear();
  for (const Accepted& a : handed_) close(a.fd);
  handed_.clear();
}

void Core::AcceptSome(Listener* l) {
  for (int i = 0; i < kAcceptBurst; i++) {
    int least;
    if (Busier(l->id, &least) && Yield(l, least)) return;
    Endpoint peer{};
    socklen_t len = sizeof(peer);
    const int fd = accept4(l->fd, &peer.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (AcceptFailed(l, errno)) continue;
      return;
    }
    stats_.accepted++;
    Admit(l, fd, peer, NowUs());
  }
}

// Whether to go on accepting. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or an unexpected
// error: the level-triggered listener would wake the loop at once again, so it is deregistered until the next
// sweep (the backlog waits in the kernel meanwhile) and counted (stats: acceptBackoffs, lastAcceptErrno).
bool Core::AcceptFailed(Listener* l, int err) {
  if (err == EAGAIN || err == EWOULDBLOCK) return false;
  if (AcceptIsTransient(err)) return true;
  if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) stats_.acceptBackoffs++;
  else stats_.acceptErrors++;
  stats_.lastAcceptErrno = err;
  if (epoll_ctl(epfd_, EPOLL_CTL_DEL, l->fd, nullptr) == 0) l->backedOff = true;
  return false;
}

// Every sweep: listeners backed off after an accept error, and yielded ones whatever this thread carries.
void Core::RearmListeners() {
  for (auto& entry : listeners_)
    if (entry.second->backedOff || entry.second->yielded) Rearm(entry.second);
}

// One accepted connection: refuse, hand to JS, or connect natively, in the order the JS path decides.
void Core::Admit(Listener* l, int fd, const Endpoint& peer, int64_t acceptedUs) {
  const FrontDoorOptions& o = l->opts;
  Endpoint dst{};
  const int err = ReadOriginalDst(fd, o.family, &dst);
  if (err != 0) {
    Refuse(l, fd, peer, nullptr, kNotRedirected, err, acceptedUs);
    return;
  }
  const bool asked = !o.passthrough || Asked(o, dst);
  const OwnPeer own = o.outbound && o.selfLoopUid >= 0 ? IsSelfLoop(o, peer, dst, asked) : OwnPeer::kNone;
  if (own == OwnPeer::kLoop) {
    Refuse(l, fd, peer, &dst, kSelfLoop, 0, acceptedUs);
    return;
  }
  if (asked) {
    HandToJs(l, fd, dst, own == OwnPeer::kSuspect);
    return;
  }
  if (IsListenerItself(l->local, dst)) {
    Refuse(l, fd, peer, &dst, kNotRedirected, 0, acceptedUs);
    return;
  }
  ConnectUpstream(l, fd, peer, dst, acceptedUs, own == OwnPeer::kSuspect ? kFlagLoopSuspect : 0);
}

// The client socket seen from its own end is (peer) -> (original destination): one exact sock_diag lookup (two for
// the proxy's own sockets, LookupLoopPeerOn). It is not `uid`'s, is `uid`'s (a suspect), or is `uid`'s and carries
// the loop marker (a loop). A failed lookup counts as not ours, as in the JS path (refusing everything would cut the
// host off), and is counted.
OwnPeer Core::OwnerOf(const Endpoint& peer, const Endpoint& dst, int64_t uid) {
  if (peer.sa.sa_family != dst.sa.sa_family) return OwnPeer::kNone;
  const char* failed = nullptr;
  const int family = dst.sa.sa_family == AF_INET6 ? 6 : 4;
  const int answer = LookupLoopPeerOn(&diagFd_, &diagSeq_, family, AddressBytes(peer), PortOf(peer),
                                      AddressBytes(dst), PortOf(dst), uid, &failed);
  if (answer == -2) {
    stats_.ownerLookupFailures++;
    stats_.lastOwnerLookupErrno = errno;
    return OwnPeer::kNone;
  }
  return answer == kPeerMarked ? OwnPeer::kLoop : answer == kPeerOwn ? OwnPeer::kSuspect : OwnPeer::kNone;
}

// RST (SO_LINGER 0) and an end record of its own: the connection never became a pair.
void Core::Refuse(Listener* l, int fd, const Endpoint& peer, const Endpoint* dst, int code, int err,
                  int64_t acceptedUs) {
  SetLingerZero(fd);
  close(fd);
  if (code == kSelfLoop) stats_.selfLoop++;
  else stats_.notRedirected++;
  Record r{};
  r.id = NextFrontId();
  r.code = code;
  r.aux = kClient;
  r.err = err;
  r.front = true;
  r.listenerId = l->id;
  r.durationUs = NowUs() - acceptedUs;
  r.connectUs = -1;
  r.source = peer;
  if (dst != nullptr) r.dst = *dst;
  records_.push_back(r);
}

// JS decides this one: the fd is queued for the next onAccepted batch and is JS's from then on.
void Core::HandToJs(Listener* l, int fd, const Endpoint& dst, bool loopSuspect) {
  stats_.asked++;
  handed_.push_back(Accepted{fd, l->id, dst, loopSuspect});
}

// The native path: the upstream socket, then the pair waits for the connect in the sweep's list like any pair.
// Until the upstream answers only it is registered; what the client sends meanwhile waits in its socket.
void Core::ConnectUpstream(Listener* l, int fd, const Endpoint& peer, const Endpoint& dst, int64_t acceptedUs,
                           uint32_t flags) {
  const FrontDoorOptions& o = l->opts;
  Pair* p = NewPair();
  p->flags = flags;
  p->id = NextFrontId();
  p->front = true;
  p->listenerId = l->id;
  p->acceptedUs = acceptedUs;
  p->source = peer;
  p->dst = dst;
  p->fd[kClient] = fd;
  p->parked[kClient] = p->parked[kUpstream] = true;
  const int64_t now = acceptedUs / 1000;  // NowMs()'s clock, read once
  p->lastActive = now;
  p->maxDeadline = o.maxDurationMs < 0 ? -1 : now + o.maxDurationMs;
  p->connectDeadline = o.connectTimeoutMs < 0 ? -1 : now + o.connectTimeoutMs;
  p->idleMs = o.idleMs;
  p->halfCloseMs = o.halfCloseMs;
  p->keepaliveSec = o.keepaliveSec;
  Link(p);
  frontOpen_++;
  PublishOpen();
  const int rc = OpenUpstream(p, o);
  if (rc == 0) {
    Established(p);
    return;
  }
  if (rc != EINPROGRESS) {
    ConnectFailed(p, kConnectFailed, rc);
    return;
  }
  // EPOLLIN too: the registration Established() then changes is the one the relay keeps (EPOLLIN), and an answer
  // that comes with its first bytes is one event.
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.u64 = reinterpret_cast<uintptr_t>(p) | kUpstream;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, p->fd[kUpstream], &ev) != 0) {
    ConnectFailed(p, kAdoptFailed, errno);
    return;
  }
  p->parked[kUpstream] = false;
  p->events[kUpstream] = EPOLLIN | EPOLLOUT;
  p->connecting = true;
  connecting_++;
}

// socket, TCP_NODELAY on both legs, the optional source bind, connect: 0 (connected), EINPROGRESS, or the errno.
int Core::OpenUpstream(Pair* p, const FrontDoorOptions& o) {
  const int family = p->dst.sa.sa_family;
  const int up = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (up < 0) return errno;
  p->fd[kUpstream] = up;
  SetNoDelay(p->fd[kClient]);
  SetNoDelay(up);
  if ((p->flags & kFlagLoopSuspect) != 0 && !MarkLoopSuspect(up)) return errno;
  if (o.hasSource && o.source.sa.sa_family == family) {
    // The port is then picked at connect() with the whole 4-tuple known (not by bind() alone, which would use up
    // the source address's ports under churn).
    const int one = 1;
    setsockopt(up, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(up, &o.source.sa, EndpointLen(o.source)) != 0) {
      if (errno != EADDRNOTAVAIL) return errno;
      p->flags |= kFlagSourceFallback;
      stats_.sourceFallbacks++;
    }
  }
  // The slot is odd from before connect() until the 4-tuple is in the own-socket set (see OwnRegistry).
  std::atomic<uint64_t>* seq = ownSlot_ >= 0 ? &Own().seq[ownSlot_] : nullptr;
  if (seq != nullptr) seq->fetch_add(1);
  int rc = connect(up, &p->dst.sa, EndpointLen(p->dst)) == 0 ? 0 : errno;
  if (rc == 0 || rc == EINPROGRESS) ListOwn(p);
  if (seq != nullptr) seq->fetch_add(1);
  return rc;
}

// An event on a connecting upstream. EPOLLOUT (or EPOLLIN) alone means connected: a failed connect always raises
// EPOLLERR (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT...), so SO_ERROR is read only then, or on EPOLLHUP.
// SO_ERROR 0 on one of those (a connection that succeeded and was hung up at once) counts as connected: the relay
// sees the hang-up on the next wait, as for any pair.
void Core::FinishConnect(Pair* p, uint32_t events) {
  if (events & (EPOLLERR | EPOLLHUP)) {
    const int err = SocketError(p->fd[kUpstream]);
    if (err != 0) {
      ConnectFailed(p, kConnectFailed, err);
      return;
    }
  }
  p->connecting = false;
  connecting_--;
  Established(p);
}

// The upstream is connected: both legs are watched for reading, and from here the pair is an ordinary one.
void Core::Established(Pair* p) {
  p->connectUs = NowUs() - p->acceptedUs;
  stats_.connected++;
  for (int s = kUpstream; s >= kClient; s--) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(s);
    if (epoll_ctl(epfd_, p->parked[s] ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, p->fd[s], &ev) != 0) {
      ClosePair(p, kAdoptFailed, s, errno, true);
      return;
    }
    p->parked[s] = false;
    p->events[s] = EPOLLIN;
  }
}

// The connect failed or timed out: the client is reset (it sees what a refused direct connect would show).
void Core::ConnectFailed(Pair* p, int code, int err) {
  if (code == kConnectFailed) stats_.connectFailed++;
  else if (code == kConnectTimeout) stats_.connectTimeout++;
  SetLingerZero(p->fd[kClient]);
  ClosePair(p, code, kUpstream, err, false);
}

// With mu_ held: this pass's connections for JS go to the shared queue, with one onAccepted call per batch.
void Core::SignalAccepted() {
  if (handed_.empty() || stopping_) return;
  bool call = false;
  {
    std::lock_guard<std::mutex> out(outMu_);
    accepted_.insert(accepted_.end(), handed_.begin(), handed_.end());
    call = !acceptSignalled_;
    acceptSignalled_ = true;
  }
  handed_.clear();
  if (!call) return;
  Core* self = this;
  tsfn_.NonBlockingCall([self](Napi::Env env, Napi::Function) { self->DeliverAccepted(env); });
}

// On the JS thread: [{ fd, listenerId, address, port, family }]; JS owns the fds from here. Without a JS
// environment (teardown) they are closed instead.
void Core::DeliverAccepted(Napi::Env env) {
  std::vector<Accepted> batch;
  {
    std::lock_guard<std::mutex> out(outMu_);
    batch.swap(accepted_);
    acceptSignalled_ = false;
  }
  if (batch.empty()) return;
  if (env == nullptr || onAccepted_.IsEmpty()) {
    for (const Accepted& a : batch) close(a.fd);
    return;
  }
  Napi::Array list = Napi::Array::New(env, batch.size());
  for (size_t i = 0; i < batch.size(); i++) {
    const Accepted& a = batch[i];
    char addr[INET6_ADDRSTRLEN] = "";
    inet_ntop(a.dst.sa.sa_family, AddressBytes(a.dst), addr, sizeof(addr));
    Napi::Object o = Napi::Object::New(env);
    o.Set("fd", Napi::Number::New(env, a.fd));
    o.Set("listenerId", Napi::Number::New(env, a.listenerId));
    o.Set("address", Napi::String::New(env, addr));
    o.Set("port", Napi::Number::New(env, ntohs(PortOf(a.dst))));
    o.Set("family", Napi::Number::New(env, a.dst.sa.sa_family == AF_INET6 ? 6 : 4));
    if (a.loopSuspect) o.Set("loopSuspect", Napi::Boolean::New(env, true));
    list[i] = o;
  }
  onAccepted_.Call({list});
}

// The live front-door connections, newest first, at most `limit`.
std::vector<LiveConnection> Core::List(size_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<LiveConnection> out;
  const int64_t nowUs = NowUs();
  for (Pair* p = head_; p != nullptr && out.size() < limit; p = p->next) {
    if (!p->front) continue;
    const char* state = p->connecting ? "connecting" : "open";
    if (!p->connecting && (p->flow[kClient].eof || p->flow[kUpstream].eof)) state = "half-closed";
    out.push_back(LiveConnection{p->id, p->listenerId, p->source, p->dst, p->upstreamLocal,
                                 (nowUs - p->acceptedUs) / 1000, p->flow[kClient].bytes, p->flow[kUpstream].bytes,
                                 state});
  }
  return out;
}

FrontDoorStats Core::Stats(uint64_t* open, uint64_t* connecting) {
  std::lock_guard<std::mutex> lock(mu_);
  *open = frontOpen_;
  *connecting = connecting_;
  return stats_;
}

}  // namespace meshctl
