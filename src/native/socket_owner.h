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
