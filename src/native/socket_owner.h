// The sock_diag lookup of a connection's local peer socket owner (src/native/socket_owner.cc), and the exact
// lookup itself for the other parts of the addon.
#pragma once

#include <napi.h>

#include <cstdint>

namespace meshctl {
void InitSocketOwner(Napi::Env env, Napi::Object exports);

// The uid owning the TCP socket of this network namespace whose local end is src:srcPort and remote end
// dst:dstPort (addresses as in6_addr / in_addr bytes, ports in network order), in any state; -1 when there is
// none; -2 on failure with errno set and *syscall naming the call. One exact NETLINK_SOCK_DIAG request.
int LookupSocketUid(int family, const void* src, uint16_t srcPort, const void* dst, uint16_t dstPort, const char** syscall);

// TCP_CA_NAME_MAX from the kernel's tcp.h (not a uapi header): a congestion control name's size with its NUL.
constexpr size_t kCongestionNameMax = 16;

// The congestion control algorithm that marks a loop suspect's upstream: one a new socket does not get by default
// ("reno", or "cubic" where reno is the default), so sock_diag tells a marked socket from any other of the proxy's,
// in any of its processes (src/native/front_door.cc, IsSelfLoop). Chosen once, with a socket it was set on; null
// when there is none (then no suspect is relayed). Only ever set on the rare suspects' upstreams; `ss -ti` shows it.
const char* LoopMarker();

// Sets the marker on an upstream socket; false (errno set) when it cannot.
bool MarkLoopSuspect(int fd);

// What sock_diag says of the socket at the other end of a redirected connection (peer -> original destination):
// kPeerNotOwn (not `uid`'s, or the lookup failed: -2 with *syscall), kPeerOwn (`uid`'s, unmarked: a loop suspect),
// kPeerMarked (`uid`'s and marked, or any of `uid`'s where this host has no marker: a loop). The congestion control
// is asked only of `uid`'s sockets (rare): a second lookup, so the common one stays a plain request.
constexpr int kPeerNotOwn = 0;
constexpr int kPeerOwn = 1;
constexpr int kPeerMarked = 2;
int LookupLoopPeerOn(int* fd, uint32_t* seq, int family, const void* src, uint16_t srcPort, const void* dst,
                     uint16_t dstPort, int64_t uid, const char** syscall);

// The same lookup on the caller's own netlink socket (see below), also reading the socket's congestion control
// algorithm into `congestion` (kCongestionNameMax bytes; "" when the kernel gave none, as for TIME_WAIT) when it
// is not null.
int LookupSocketOn(int* fd, uint32_t* seq, int family, const void* src, uint16_t srcPort, const void* dst,
                   uint16_t dstPort, char* congestion, const char** syscall);

// The same lookup on the caller's own netlink socket (*fd, opened on first use when < 0; the caller closes it) and
// sequence counter: for a thread other than JS's.
int LookupSocketUidOn(int* fd, uint32_t* seq, int family, const void* src, uint16_t srcPort, const void* dst,
                      uint16_t dstPort, const char** syscall);
}  // namespace meshctl
