// The relay thread's shared state (src/native/relay.cc: the epoll loop and the byte pump; front_door.cc: accept,
// original destination, native connect; relay_binding.cc: the JS class). One Core per createRelay(); every member
// below `mu_` is touched only with `mu_` held (the loop holds it except while blocked in epoll_wait).
#pragma once

#include <napi.h>

#include <atomic>
#include <functional>
#include <cstdint>
#include <mutex>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unordered_map>
#include <vector>

namespace meshctl {

// End records go to JS in batches: at the next whole kBatchUs of the monotonic clock after the first, or at once at
// kBatchRecords (Core::SignalRecords). This bounds how far `/connections`, metrics and the access log lag.
constexpr int64_t kBatchUs = 1000;
constexpr size_t kBatchRecords = 64;

constexpr int kClient = 0;
constexpr int kUpstream = 1;

// How a pair ended. JS reads these numbers from the `relayEndCodes` and `frontDoorEndCodes` exports (kEndNames and
// kFrontDoorEndNames in relay_binding.cc): RELAY_ENDS and FRONT_DOOR_ENDS in src/native/addon.ts name the same sets.
enum EndCode : int {
  kFin = 0,             // both FINs relayed; aux = side whose FIN came first
  kReset = 1,           // ECONNRESET / EPIPE on side aux; the other side was reset
  kError = 2,           // another socket error (errno) on side aux; the other side was reset
  kKeepalive = 3,       // ETIMEDOUT (keepalive gave up) on side aux
  kIdle = 4,
  kHalfClose = 5,
  kMaxDuration = 6,
  kAborted = 7,         // closed on request from JS (drain, shutdown)
  kAdoptFailed = 8,     // the loop could not register the pair (errno); both peers were reset
  kConnectFailed = 9,   // front door: the upstream connect failed (errno); the client was reset
  kConnectTimeout = 10, // front door: no answer within connectTimeoutMs; the client was reset
  kSelfLoop = 11,       // front door: the client socket is the proxy's own (selfLoopUid); reset
  kNotRedirected = 12,  // front door: no original destination (errno, or the listener itself); reset
};

// Record flag bits (details.flags).
constexpr uint32_t kFlagSourceFallback = 1;  // bind(sourceAddress) gave EADDRNOTAVAIL; connected without it
// The client's peer endpoint matched one of the relay's own upstream sockets that is no loop suspect itself; the
// pair was connected, and its own upstream is marked so that a loop is refused at the next hop (front_door.cc's
// IsSelfLoop: a NAT source-port remap can give a client connection the endpoint of an own socket).
constexpr uint32_t kFlagLoopSuspect = 2;

// An IPv4 or IPv6 socket address in the space of a sockaddr_in6 (no allocation, no sockaddr_storage's 128 bytes).
union Endpoint {
  sockaddr sa;
  sockaddr_in v4;
  sockaddr_in6 v6;
};

// "a:p", "[a]:p", or "" for an unset endpoint, into `out` (at least kEndpointText bytes).
constexpr size_t kEndpointText = 56;
void FormatEndpoint(const Endpoint& e, char* out);
socklen_t EndpointLen(const Endpoint& e);

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
  uint64_t id = 0;
  int fd[2] = {-1, -1};
  Flow flow[2];
  uint32_t events[2] = {0, 0};
  bool parked[2] = {false, false};  // not registered in epoll (hung up, or not yet: a connect in progress)
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
  // Front door only (front = true): accepted by the thread itself rather than adopted from JS.
  bool front = false;
  bool connecting = false;  // upstream connect in progress: only fd[kUpstream] is registered (EPOLLIN | EPOLLOUT)
  uint32_t flags = 0;
  int32_t listenerId = -1;
  int64_t acceptedUs = 0;
  int64_t connectUs = -1;         // accept → established
  int64_t connectDeadline = -1;   // ms, while connecting
  Endpoint source{};
  Endpoint dst{};
  Endpoint upstreamLocal{};
  bool ownListed = false;  // (upstreamLocal, dst) is in the process's set of own upstream sockets (front_door.cc)
};

struct Record {
  uint64_t id;
  uint64_t fromClient;
  uint64_t fromUpstream;
  int code;
  int aux;
  int err;
  // Front door only (front = false: the rest is unset).
  bool front;
  int32_t listenerId;
  uint32_t flags;
  int64_t durationUs;
  int64_t connectUs;
  // Binary (copied, not formatted): JS prints them only when something asks (relay_binding.cc's Deliver packs them).
  Endpoint source;
  Endpoint dst;  // AF_UNSPEC when there was none (notRedirected)
  Endpoint upstreamLocal;
};

// One destination JS decides: family, address bytes (network order), prefix length, port (0 = any).
struct AskEntry {
  int family;
  uint8_t addr[16];
  int prefix;
  uint16_t port;
};

// FrontDoorOptions (src/native/addon.ts) as the loop uses them; bounds in ms, -1 = none.
struct FrontDoorOptions {
  bool outbound = true;
  int family = 4;
  bool passthrough = false;
  std::vector<AskEntry> ask;
  // `ask` indexed for the per-connection match (built by IndexAsk when listen() takes the options): the entries for
  // any port, and the others by port, so a table of many services costs one hash lookup and a short scan.
  std::vector<AskEntry> askAnyPort;
  std::unordered_map<uint16_t, std::vector<AskEntry>> askByPort;
  bool hasSource = false;
  Endpoint source{};
  int64_t selfLoopUid = -1;
  // The relay threads' own upstream sockets are the only sockets of selfLoopUid that can loop into this listener
  // natively (one proxy process): a passthrough connection absent from their set is final, without sock_diag.
  bool selfLoopOwnSet = false;
  int64_t connectTimeoutMs = -1;
  int64_t maxDurationMs = -1;
  int64_t idleMs = -1;
  int64_t halfCloseMs = -1;
  int keepaliveSec = -1;
};

struct Listener {
  int32_t id = 0;
  int fd = -1;               // the thread's own dup of JS's listening socket
  bool closed = false;
  bool backedOff = false;    // deregistered after EMFILE & co. until the next sweep
  bool yielded = false;      // deregistered while this thread carries more than its share (Core::Yield)
  Endpoint local{};
  FrontDoorOptions opts;
};

// A connection handed to JS (onAccepted): JS owns fd once delivered.
struct Accepted {
  int fd;
  int32_t listenerId;
  Endpoint dst;
  bool loopSuspect;  // IsSelfLoop: JavaScript connects its upstream with the loop marker
};

// What the self-loop check found at the other end of an accepted outbound connection (Core::IsSelfLoop).
enum class OwnPeer {
  kNone,     // not one of the proxy's own sockets
  kSuspect,  // an own upstream socket not itself suspect: connect, and mark the new upstream (kFlagLoopSuspect)
  kLoop,     // a loop: refuse
};

struct FrontDoorStats {
  uint64_t accepted = 0;
  uint64_t asked = 0;
  uint64_t connected = 0;
  uint64_t connectFailed = 0;
  uint64_t connectTimeout = 0;
  uint64_t connectAnsweredLate = 0;  // past the bound at the sweep, but the kernel had answered: not a timeout
  uint64_t selfLoop = 0;
  uint64_t notRedirected = 0;
  uint64_t acceptErrors = 0;
  uint64_t acceptBackoffs = 0;
  int lastAcceptErrno = 0;
  uint64_t sourceFallbacks = 0;
  uint64_t ownerLookupFailures = 0;
  int lastOwnerLookupErrno = 0;
  uint64_t ownerLookups = 0;  // sock_diag lookups made (the own-socket set answers the rest)
  uint64_t selfLoopByOwnSet = 0;  // self-loops found in the set
  uint64_t loopSuspects = 0;  // peers that matched an own socket not itself suspect: connected, marked (kFlagLoopSuspect)
  uint64_t acceptYields = 0;  // accepting left to a less busy thread (Core::Yield)
};

// A live front-door connection for list().
struct LiveConnection {
  uint64_t id;
  int32_t listenerId;
  Endpoint source;
  Endpoint dst;
  Endpoint upstreamLocal;
  int64_t ageMs;
  uint64_t fromClient;
  uint64_t fromUpstream;
  const char* state;
};

// The id map's node allocator: single nodes come from a per-thread free list (bounded), so a churning relay
// allocates nothing per connection once warm; anything bigger (the bucket array) goes to operator new. Per thread,
// because the map is used from the loop thread and (for abort/snapshot) the JS thread, each under Core::mu_, and
// several Cores share the node type.
template <typename T>
struct NodePool {
  using value_type = T;
  NodePool() = default;
  template <typename U>
  NodePool(const NodePool<U>&) {}  // NOLINT: rebinding copies nothing
  T* allocate(size_t n) {
    FreeList& list = Free();
    if (n == 1 && list.head != nullptr) {
      Slot* s = list.head;
      list.head = s->next;
      list.size--;
      return reinterpret_cast<T*>(s);
    }
    return static_cast<T*>(::operator new(n * Size()));
  }
  void deallocate(T* p, size_t n) {
    FreeList& list = Free();
    if (n == 1 && list.size < kMax) {
      Slot* s = reinterpret_cast<Slot*>(p);
      s->next = list.head;
      list.head = s;
      list.size++;
      return;
    }
    ::operator delete(p);
  }
  template <typename U>
  bool operator==(const NodePool<U>&) const { return true; }
  template <typename U>
  bool operator!=(const NodePool<U>&) const { return false; }

 private:
  struct Slot {
    Slot* next;
  };
  struct FreeList {
    Slot* head = nullptr;
    size_t size = 0;
    ~FreeList() {
      while (head != nullptr) {
        Slot* s = head;
        head = s->next;
        ::operator delete(s);
      }
    }
  };
  static constexpr size_t kMax = 4096;
  static constexpr size_t Size() { return sizeof(T) < sizeof(Slot) ? sizeof(Slot) : sizeof(T); }
  static FreeList& Free() {
    thread_local FreeList list;
    return list;
  }
};

using PairsById = std::unordered_map<uint64_t, Pair*, std::hash<uint64_t>, std::equal_to<uint64_t>,
                                     NodePool<std::pair<const uint64_t, Pair*>>>;

class Core {
 public:
  Core() = default;
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  int Open();
  void Start(Napi::ThreadSafeFunction tsfn, Napi::Function onAccepted);
  void Stop();
  void SetSweep(int64_t ms);
  int Adopt(uint32_t id, int clientFd, int upstreamFd, int64_t maxRemainingMs, int64_t idleMs, int64_t halfCloseMs,
            int keepaliveSec);
  bool Abort(uint64_t id, bool reset);
  bool Snapshot(uint64_t id, uint64_t* fromClient, uint64_t* fromUpstream, bool* halfClosed);
  void Deliver(Napi::Env env, Napi::Function fn);
  void DeliverAccepted(Napi::Env env);

  // Front door (front_door.cc), JS thread: 0 or an errno (with *syscall naming the call).
  int Listen(int32_t id, int fd, FrontDoorOptions opts, const char** syscall);
  bool Unlisten(int32_t id);
  std::vector<LiveConnection> List(size_t limit);
  FrontDoorStats Stats(uint64_t* open, uint64_t* connecting);
  // Any thread: another relay thread left accepting on the listeners in `listenerBits` to this one (Core::Yield).
  void Poke(uint64_t listenerBits);

 private:
  void Wake();
  void Loop();
  void Dispatch(uint64_t tag, uint32_t events);
  void DrainInbox();
  void Register(Pair* p);
  void SignalRecords(bool force);
  void QueueRecords();
  void SignalAccepted();
  bool WantsRead(const Pair* p, int s) const { return !p->flow[s].eof && p->flow[s].buf == nullptr; }
  void SetInterest(Pair* p, int s);
  void Handle(Pair* p, int s, uint32_t ev);
  char* TakeChunk();
  void GiveChunk(char* b);
  void Pump(Pair* p, int s);
  void Flush(Pair* p, int d);
  void PassFin(Pair* p, int s);
  void Fail(Pair* p, int s, int err);
  void ClosePair(Pair* p, int code, int aux, int err, bool reset);
  void FreeGraveyard();
  void Sweep(int64_t now);
  void SweepPair(Pair* p, int64_t now);
  Pair* NewPair();
  void Link(Pair* p);

  // Front door (front_door.cc), loop thread with mu_ held.
  bool AcceptFailed(Listener* l, int err);
  void Admit(Listener* l, int fd, const Endpoint& peer, int64_t acceptedUs);
  OwnPeer OwnerOf(const Endpoint& peer, const Endpoint& dst, int64_t uid);
  OwnPeer IsSelfLoop(const FrontDoorOptions& o, const Endpoint& peer, const Endpoint& dst, bool asked);
  void ListOwn(Pair* p);
  void UnlistOwn(Pair* p);
  void Refuse(Listener* l, int fd, const Endpoint& peer, const Endpoint* dst, int code, int err, int64_t acceptedUs);
  void HandToJs(Listener* l, int fd, const Endpoint& dst, bool loopSuspect);
  void ConnectUpstream(Listener* l, int fd, const Endpoint& peer, const Endpoint& dst, int64_t acceptedUs,
                       uint32_t flags);
  int OpenUpstream(Pair* p, const FrontDoorOptions& o);
  void FinishConnect(Pair* p, uint32_t events);
  void Established(Pair* p);
  void ConnectFailed(Pair* p, int code, int err);
  void RearmListeners();
  void CloseListeners();
  void TakeOwnSlot();
  void ReleaseOwnSlot();

  std::mutex mu_;
  std::mutex inboxMu_;  // guards inbox_
  std::vector<Pair*> inbox_;
  std::atomic<bool> inboxPending_{false};
  std::atomic<bool> sleeping_{false};
  std::mutex outMu_;  // guards outbox_, signalled_, accepted_, acceptSignalled_
  std::vector<Record> outbox_;
  std::vector<Accepted> accepted_;
  bool acceptSignalled_ = false;
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
  Napi::FunctionReference onAccepted_;  // JS thread only
  bool hasOnAccepted_ = false;
  int epfd_ = -1;
  int wakefd_ = -1;
  bool stopping_ = false;
  bool signalled_ = false;
  int64_t sweepMs_ = 1000;
  int64_t nextSweep_ = 0;
  Pair* head_ = nullptr;
  PairsById byId_;
  std::vector<Record> records_;
  int64_t recordsDueUs_ = 0;  // when records_ leaves for JS (NowUs); 0 while it is empty
  std::vector<Accepted> handed_;  // this pass's onAccepted entries, moved to accepted_ with the records
  std::vector<Pair*> graveyard_;
  std::vector<Pair*> pairPool_;
  std::vector<char*> pool_;
  char* scratch_ = nullptr;
  std::unordered_map<int32_t, Listener*> listeners_;
  std::vector<Listener*> deadListeners_;
  void PublishOpen();
  void PublishListening();
  bool Busier(int32_t listenerId, int* least) const;
  bool Yield(Listener* l, int least);
  void Rebalance();
  void Rearm(Listener* l);
  void AcceptSome(Listener* l);
  std::atomic<uint64_t> pokedMask_{0};  // listener-id bits another thread yielded to this one (Core::Yield)
  int yieldedCount_ = 0;                 // listeners_ deregistered by Yield
  int ownSlot_ = -1;  // this thread's in-connect slot in the own-socket registry (front_door.cc); -1: none
  int diagFd_ = -1;
  uint32_t diagSeq_ = 0;
  FrontDoorStats stats_;
  uint64_t connecting_ = 0;
  uint64_t frontOpen_ = 0;
};

int64_t NowMs();
int64_t NowUs();
void SetLingerZero(int fd);
// A socket's pending error (SO_ERROR), or getsockopt's own errno when it fails.
int SocketError(int fd);

}  // namespace meshctl
