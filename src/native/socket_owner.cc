// peerOwner(fd, family, dstAddress, dstPort): the uid that owns the local socket at the other end of an accepted
// connection, found with one exact sock_diag (NETLINK_SOCK_DIAG, inet_diag) lookup, or -1 when the other end is
// not a socket of this host's network namespace (a remote peer) or is already gone. The lookup itself
// (LookupSocketUid) also serves transparentSocket (src/native/socket_options.cc), which must not reuse a peer's port.
//
// Why: a connection REDIRECTed to the proxy has, as its peer, the socket that made it. When that socket belongs
// to the proxy's own uid, the capture rules sent the proxy's own upstream connection back to it (a mismatched
// exemption, a foreign rule, a second proxy), and proxying it again would loop until fds run out. The peer socket
// sees the connection as (its local = our remote) -> (the original destination), so that is the 4-tuple looked up.
// peerOwner's netlink socket is opened once per process and used from the JS thread only; each relay thread's front
// door has its own (LookupSocketUidOn), as the sequence numbers and replies of one socket are not shared safely.
// Replies are read with MSG_DONTWAIT (the kernel answers a non-dump request before sendmsg returns), so this never blocks.
#include "socket_owner.h"

#include "system_error.h"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

namespace meshctl {
namespace {

/** TCP_LISTEN from the kernel's tcp_states.h (not a uapi header). */
constexpr uint8_t kTcpListen = 10;
int diagFd = -1;
uint32_t diagSeq = 0;

Napi::Value ThrowTypeError(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

struct DiagRequest {
  nlmsghdr header;
  inet_diag_req_v2 body;
};

// The connection's key for a lookup: the peer of `fd` (its address bytes and port) and the destination given as
// (family, dstAddress, dstPort) in info[1..3].
struct PeerKey {
  int family = 0;
  sockaddr_storage peer{};
  const void* src = nullptr;
  uint16_t srcPort = 0;
  unsigned char dst[16] = {0};
  uint16_t dstPort = 0;
};

// Reads info[0..3] of `name` into *k; false, with a JS exception pending, when an argument is wrong.
bool ReadPeerKey(const Napi::CallbackInfo& info, const char* name, PeerKey* k) {
  Napi::Env env = info.Env();
  const std::string fn(name);
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsString() || !info[3].IsNumber()) {
    const std::string message =
        fn + "(fd, family, dstAddress, dstPort) expects a number, a number, a string and a number";
    ThrowTypeError(env, message.c_str());
    return false;
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  k->family = info[1].As<Napi::Number>().Int32Value();
  const std::string dst = info[2].As<Napi::String>().Utf8Value();
  const int dstPort = info[3].As<Napi::Number>().Int32Value();
  if (fd < 0) {
    ThrowTypeError(env, (fn + ": fd must be a non-negative integer").c_str());
    return false;
  }
  if (k->family != 4 && k->family != 6) {
    ThrowTypeError(env, (fn + ": family must be 4 or 6").c_str());
    return false;
  }
  if (dstPort < 1 || dstPort > 65535) {
    ThrowTypeError(env, (fn + ": dstPort must be between 1 and 65535").c_str());
    return false;
  }
  k->dstPort = htons(static_cast<uint16_t>(dstPort));
  socklen_t peerLen = sizeof(k->peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&k->peer), &peerLen) != 0) {
    ThrowSystemError(env, errno, "getpeername");
    return false;
  }
  const int af = k->family == 4 ? AF_INET : AF_INET6;
  if (k->peer.ss_family != af) {
    ThrowTypeError(env, (fn + (k->family == 4 ? ": the socket is not IPv4" : ": the socket is not IPv6")).c_str());
    return false;
  }
  if (k->family == 4) {
    const sockaddr_in* p = reinterpret_cast<const sockaddr_in*>(&k->peer);
    k->src = &p->sin_addr;
    k->srcPort = p->sin_port;
  } else {
    const sockaddr_in6* p = reinterpret_cast<const sockaddr_in6*>(&k->peer);
    k->src = &p->sin6_addr;
    k->srcPort = p->sin6_port;
  }
  if (inet_pton(af, dst.c_str(), k->dst) != 1) {
    const char* what = k->family == 4 ? ": dstAddress is not an IPv4 address" : ": dstAddress is not an IPv6 address";
    ThrowTypeError(env, (fn + what).c_str());
    return false;
  }
  return true;
}

// peerOwner(fd: int32 >= 0, family: 4 | 6, dstAddress: string, dstPort: 1..65535) -> uid | -1
Napi::Value PeerOwner(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PeerKey k;
  if (!ReadPeerKey(info, "peerOwner", &k)) return env.Undefined();
  const char* failed = nullptr;
  const int uid = LookupSocketUid(k.family, k.src, k.srcPort, k.dst, k.dstPort, &failed);
  if (uid == -2) return ThrowSystemError(env, errno, failed);
  return Napi::Number::New(env, uid);
}

// loopPeer(fd, family, dstAddress, dstPort, uid: int32 >= 0) -> 0 not uid's | 1 uid's (a loop suspect) | 2 uid's and
// marked (a loop): the JS path's self-loop check (LookupLoopPeerOn).
Napi::Value LoopPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PeerKey k;
  if (!ReadPeerKey(info, "loopPeer", &k)) return env.Undefined();
  if (info.Length() != 5 || !info[4].IsNumber() || info[4].As<Napi::Number>().Int64Value() < 0) {
    return ThrowTypeError(env, "loopPeer: uid must be a non-negative integer");
  }
  const char* failed = nullptr;
  const int answer = LookupLoopPeerOn(&diagFd, &diagSeq, k.family, k.src, k.srcPort, k.dst, k.dstPort,
                                      info[4].As<Napi::Number>().Int64Value(), &failed);
  if (answer == -2) return ThrowSystemError(env, errno, failed);
  return Napi::Number::New(env, answer);
}

// markedSocket(family: 4 | 6) -> fd: an unconnected TCP socket (non-blocking, close-on-exec) carrying the loop marker,
// for a loop suspect's upstream that JavaScript connects. Throws the system error (ENOPROTOOPT: no marker here).
Napi::Value MarkedSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) return ThrowTypeError(env, "markedSocket(family) expects a number");
  const int family = info[0].As<Napi::Number>().Int32Value();
  if (family != 4 && family != 6) return ThrowTypeError(env, "markedSocket: family must be 4 or 6");
  const int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowSystemError(env, errno, "socket");
  if (!MarkLoopSuspect(fd)) {
    const int err = errno;
    close(fd);
    return ThrowSystemError(env, err, "setsockopt(TCP_CONGESTION)");
  }
  return Napi::Number::New(env, fd);
}

}  // namespace

int LookupSocketUid(int family, const void* src, uint16_t srcPort, const void* dst, uint16_t dstPort, const char** syscall) {
  return LookupSocketUidOn(&diagFd, &diagSeq, family, src, srcPort, dst, dstPort, syscall);
}

int LookupSocketUidOn(int* fd, uint32_t* seq, int family, const void* src, uint16_t srcPort, const void* dst,
                      uint16_t dstPort, const char** syscall) {
  return LookupSocketOn(fd, seq, family, src, srcPort, dst, dstPort, nullptr, syscall);
}

namespace {
// The INET_DIAG_CONG attribute after the message, if any, into `out` (kCongestionNameMax bytes).
void CopyCongestion(const nlmsghdr* msg, const inet_diag_msg* found, char* out) {
  int left = static_cast<int>(msg->nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof(*found)));
  for (const rtattr* attr = reinterpret_cast<const rtattr*>(found + 1); RTA_OK(attr, left);
       attr = RTA_NEXT(attr, left)) {
    if (attr->rta_type != INET_DIAG_CONG) continue;
    const size_t n = std::min(static_cast<size_t>(RTA_PAYLOAD(attr)), kCongestionNameMax - 1);
    std::memcpy(out, RTA_DATA(attr), n);
    out[n] = '\0';
    return;
  }
}
}  // namespace

int LookupSocketOn(int* fd, uint32_t* seq, int family, const void* src, uint16_t srcPort, const void* dst,
                   uint16_t dstPort, char* congestion, const char** syscall) {
  if (congestion != nullptr) congestion[0] = '\0';
  DiagRequest req;
  std::memset(&req, 0, sizeof(req));
  req.header.nlmsg_len = sizeof(req);
  req.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.header.nlmsg_flags = NLM_F_REQUEST;
  req.header.nlmsg_seq = ++*seq;
  req.body.sdiag_family = family == 4 ? AF_INET : AF_INET6;
  req.body.sdiag_protocol = IPPROTO_TCP;
  req.body.idiag_states = ~0U;
  if (congestion != nullptr) req.body.idiag_ext = 1 << (INET_DIAG_CONG - 1);
  req.body.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req.body.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  req.body.id.idiag_sport = srcPort;
  req.body.id.idiag_dport = dstPort;
  const size_t addrLen = family == 4 ? sizeof(in_addr) : sizeof(in6_addr);
  std::memcpy(req.body.id.idiag_src, src, addrLen);
  std::memcpy(req.body.id.idiag_dst, dst, addrLen);

  if (*fd < 0) {
    *fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (*fd < 0) {
      *syscall = "socket(NETLINK_SOCK_DIAG)";
      return -2;
    }
  }
  sockaddr_nl kernel;
  std::memset(&kernel, 0, sizeof(kernel));
  kernel.nl_family = AF_NETLINK;
  ssize_t sent;
  do {
    sent = sendto(*fd, &req, sizeof(req), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel));
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    *syscall = "sendto(NETLINK_SOCK_DIAG)";
    return -2;
  }

  // Replies to earlier requests that were never read (none should be) are skipped by their sequence number.
  alignas(nlmsghdr) char buffer[1024];
  for (;;) {
    const ssize_t got = recv(*fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
      *syscall = "recv(NETLINK_SOCK_DIAG)";
      return -2;
    }
    int left = static_cast<int>(got);
    for (nlmsghdr* msg = reinterpret_cast<nlmsghdr*>(buffer); NLMSG_OK(msg, left); msg = NLMSG_NEXT(msg, left)) {
      if (msg->nlmsg_seq != req.header.nlmsg_seq) continue;
      if (msg->nlmsg_type == NLMSG_ERROR) return -1;  // ENOENT: no such local socket
      if (msg->nlmsg_type == SOCK_DIAG_BY_FAMILY && msg->nlmsg_len >= NLMSG_LENGTH(sizeof(inet_diag_msg))) {
        const inet_diag_msg* found = reinterpret_cast<const inet_diag_msg*>(NLMSG_DATA(msg));
        // The exact lookup falls back to a listener on the local end (inet_lookup): that is no connection.
        if (found->idiag_state == kTcpListen) return -1;
        if (congestion != nullptr) CopyCongestion(msg, found, congestion);
        return static_cast<int>(found->idiag_uid);
      }
      return -1;
    }
  }
}

const char* LoopMarker() {
  static const char* const marker = []() -> const char* {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return nullptr;
    char name[kCongestionNameMax] = {0};
    socklen_t len = sizeof(name) - 1;
    const char* chosen = nullptr;
    if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) == 0) {
      chosen = std::strcmp(name, "reno") == 0 ? "cubic" : "reno";
      // Usable by this process (cubic may not be allowed to it)?
      if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, chosen, std::strlen(chosen)) != 0) chosen = nullptr;
    }
    close(fd);
    return chosen;
  }();
  return marker;
}

bool MarkLoopSuspect(int fd) {
  const char* marker = LoopMarker();
  if (marker == nullptr) {
    errno = EOPNOTSUPP;
    return false;
  }
  return setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, marker, std::strlen(marker)) == 0;
}

int LookupLoopPeerOn(int* fd, uint32_t* seq, int family, const void* src, uint16_t srcPort, const void* dst,
                     uint16_t dstPort, int64_t uid, const char** syscall) {
  int owner = LookupSocketOn(fd, seq, family, src, srcPort, dst, dstPort, nullptr, syscall);
  if (owner == -2) return -2;
  if (owner != uid) return kPeerNotOwn;
  char congestion[kCongestionNameMax];
  owner = LookupSocketOn(fd, seq, family, src, srcPort, dst, dstPort, congestion, syscall);
  if (owner == -2) return -2;
  if (owner != uid) return kPeerNotOwn;  // gone (or another socket) between the two lookups
  // Without a marker no suspect's upstream could be told from a first hop: every own socket is then a loop.
  const char* marker = LoopMarker();
  return marker == nullptr || std::strcmp(congestion, marker) == 0 ? kPeerMarked : kPeerOwn;
}

void InitSocketOwner(Napi::Env env, Napi::Object exports) {
  exports.Set("peerOwner", Napi::Function::New(env, PeerOwner, "peerOwner"));
  exports.Set("loopPeer", Napi::Function::New(env, LoopPeer, "loopPeer"));
  exports.Set("markedSocket", Napi::Function::New(env, MarkedSocket, "markedSocket"));
}

}  // namespace meshctl
