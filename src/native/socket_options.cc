// The socket options of interception: originalDst(fd, family), the destination a connection had before netfilter
// REDIRECT rewrote it; transparentListen(family, address, port, backlog), a listening socket that TPROXY can deliver
// to; isTransparent(fd, family), whether a socket (e.g. one systemd passed) has IP_TRANSPARENT set;
// transparentSocket(family, address, mark, dstAddress, dstPort), an unconnected socket bound to a peer's (non-local)
// address, which Node then connects (TPROXY's inbound leg from the peer's own address). No state.
// Arguments are validated in TypeScript (src/native/addon.ts); the checks here only guarantee that a wrong call
// becomes a JS exception instead of undefined behaviour. Never aborts: every failure is thrown as an Error carrying
// `errno` and `syscall`, like Node's own system errors.
#include <napi.h>

#include "socket_options.h"
#include "socket_owner.h"
#include "system_error.h"

#include <arpa/inet.h>
#include <cerrno>
#include <fcntl.h>
#include <cstring>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>; those headers do not compile
// cleanly next to the libc ones in C++, and the values are kernel ABI.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
// From <linux/in.h> and <linux/in6.h> (glibc's <netinet/in.h> has them too, older libcs may not).
#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif

namespace meshctl {
namespace {

Napi::Value ThrowTypeError(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

// originalDst(fd: int32 >= 0, family: 4 | 6) -> { address: string, port: number }
Napi::Value OriginalDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    return ThrowTypeError(env, "originalDst(fd, family) expects two numbers");
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  const int family = info[1].As<Napi::Number>().Int32Value();
  if (fd < 0) return ThrowTypeError(env, "originalDst: fd must be a non-negative integer");

  char text[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (family == 4) {
    sockaddr_in addr;
    std::memset(&addr, 0, sizeof(addr));
    socklen_t len = sizeof(addr);
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &addr, &len) != 0) return ThrowSystemError(env, errno, "getsockopt");
    if (inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text)) == nullptr) return ThrowSystemError(env, errno, "inet_ntop");
    port = ntohs(addr.sin_port);
  } else if (family == 6) {
    sockaddr_in6 addr;
    std::memset(&addr, 0, sizeof(addr));
    socklen_t len = sizeof(addr);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &addr, &len) != 0) return ThrowSystemError(env, errno, "getsockopt");
    if (inet_ntop(AF_INET6, &addr.sin6_addr, text, sizeof(text)) == nullptr) return ThrowSystemError(env, errno, "inet_ntop");
    port = ntohs(addr.sin6_port);
  } else {
    return ThrowTypeError(env, "originalDst: family must be 4 or 6");
  }

  Napi::Object result = Napi::Object::New(env);
  result.Set("address", Napi::String::New(env, text));
  result.Set("port", Napi::Number::New(env, port));
  return result;
}

// transparentListen(family: 4 | 6, address: string, port: 0..65535, backlog: int >= 1) -> fd
// socket(SOCK_NONBLOCK | SOCK_CLOEXEC), SO_REUSEADDR, IP_TRANSPARENT / IPV6_TRANSPARENT (needs CAP_NET_ADMIN or
// CAP_NET_RAW), IPV6_V6ONLY for family 6 (the IPv4 listener owns the port for IPv4), bind, listen. The caller
// owns the returned fd (Node wraps it with server.listen({ fd })). On failure nothing is left open.
Napi::Value TransparentListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 4 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsNumber()) {
    return ThrowTypeError(env, "transparentListen(family, address, port, backlog) expects a number, a string and two numbers");
  }
  const int family = info[0].As<Napi::Number>().Int32Value();
  const std::string address = info[1].As<Napi::String>().Utf8Value();
  const int port = info[2].As<Napi::Number>().Int32Value();
  const int backlog = info[3].As<Napi::Number>().Int32Value();
  if (family != 4 && family != 6) return ThrowTypeError(env, "transparentListen: family must be 4 or 6");
  if (port < 0 || port > 65535) return ThrowTypeError(env, "transparentListen: port must be between 0 and 65535");
  if (backlog < 1) return ThrowTypeError(env, "transparentListen: backlog must be a positive integer");

  sockaddr_storage storage;
  std::memset(&storage, 0, sizeof(storage));
  socklen_t addrLen = 0;
  if (family == 4) {
    sockaddr_in* addr = reinterpret_cast<sockaddr_in*>(&storage);
    addr->sin_family = AF_INET;
    addr->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, address.c_str(), &addr->sin_addr) != 1) return ThrowTypeError(env, "transparentListen: address is not an IPv4 address");
    addrLen = sizeof(sockaddr_in);
  } else {
    sockaddr_in6* addr = reinterpret_cast<sockaddr_in6*>(&storage);
    addr->sin6_family = AF_INET6;
    addr->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, address.c_str(), &addr->sin6_addr) != 1) return ThrowTypeError(env, "transparentListen: address is not an IPv6 address");
    addrLen = sizeof(sockaddr_in6);
  }

  const int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) return ThrowSystemError(env, errno, "socket");
  const int on = 1;
  const char* failed = nullptr;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0) {
    failed = "setsockopt(SO_REUSEADDR)";
  } else if (family == 4 && setsockopt(fd, SOL_IP, IP_TRANSPARENT, &on, sizeof(on)) != 0) {
    failed = "setsockopt(IP_TRANSPARENT)";
  } else if (family == 6 && setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof(on)) != 0) {
    failed = "setsockopt(IPV6_TRANSPARENT)";
  } else if (family == 6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) {
    failed = "setsockopt(IPV6_V6ONLY)";
  } else if (bind(fd, reinterpret_cast<sockaddr*>(&storage), addrLen) != 0) {
    failed = "bind";
  } else if (listen(fd, backlog) != 0) {
    failed = "listen";
  }
  if (failed != nullptr) {
    const int err = errno;
    close(fd);
    return ThrowSystemError(env, err, failed);
  }
  return Napi::Number::New(env, fd);
}

// isTransparent(fd: int32 >= 0, family: 4 | 6) -> boolean: getsockopt(IP_TRANSPARENT / IPV6_TRANSPARENT).
Napi::Value IsTransparent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    return ThrowTypeError(env, "isTransparent(fd, family) expects two numbers");
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  const int family = info[1].As<Napi::Number>().Int32Value();
  if (fd < 0) return ThrowTypeError(env, "isTransparent: fd must be a non-negative integer");
  if (family != 4 && family != 6) return ThrowTypeError(env, "isTransparent: family must be 4 or 6");
  int value = 0;
  socklen_t len = sizeof(value);
  const int rc = family == 4 ? getsockopt(fd, SOL_IP, IP_TRANSPARENT, &value, &len) : getsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &value, &len);
  if (rc != 0) return ThrowSystemError(env, errno, "getsockopt");
  return Napi::Boolean::New(env, value != 0);
}

// Binds `fd` to address:0 and returns the port the kernel chose, or -1 with errno set.
int BindAnyPort(int fd, const sockaddr_storage& base, socklen_t len) {
  if (bind(fd, reinterpret_cast<const sockaddr*>(&base), len) != 0) return -1;
  sockaddr_storage bound;
  socklen_t boundLen = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &boundLen) != 0) return -1;
  return bound.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                                    : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
}

// One attempt of TransparentSocket: a socket with IP_TRANSPARENT, SO_MARK and a bound port, or -1 with `failed`.
int OpenTransparent(int family, const sockaddr_storage& addr, socklen_t len, uint32_t mark, int* port, const char** failed) {
  const int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) {
    *failed = "socket";
    return -1;
  }
  const int on = 1;
  if (family == 4 && setsockopt(fd, SOL_IP, IP_TRANSPARENT, &on, sizeof(on)) != 0) {
    *failed = "setsockopt(IP_TRANSPARENT)";
  } else if (family == 6 && setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof(on)) != 0) {
    *failed = "setsockopt(IPV6_TRANSPARENT)";
  } else if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    *failed = "setsockopt(SO_MARK)";
  } else if ((*port = BindAnyPort(fd, addr, len)) < 0) {
    *failed = "bind";
  } else {
    return fd;
  }
  const int err = errno;
  close(fd);
  errno = err;
  return -1;
}

// Parses `text` as an address of `family` into `out` (sockaddr_in / sockaddr_in6 with port 0); false if it is not.
bool ParseAddress(int family, const std::string& text, sockaddr_storage* out, socklen_t* len) {
  std::memset(out, 0, sizeof(*out));
  if (family == 4) {
    sockaddr_in* addr = reinterpret_cast<sockaddr_in*>(out);
    addr->sin_family = AF_INET;
    *len = sizeof(sockaddr_in);
    return inet_pton(AF_INET, text.c_str(), &addr->sin_addr) == 1;
  }
  sockaddr_in6* addr = reinterpret_cast<sockaddr_in6*>(out);
  addr->sin6_family = AF_INET6;
  *len = sizeof(sockaddr_in6);
  return inet_pton(AF_INET6, text.c_str(), &addr->sin6_addr) == 1;
}

const void* AddressBytes(int family, const sockaddr_storage& addr) {
  return family == 4 ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr)
                     : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr);
}

// Bound ports tried before giving up: each one taken is held open, so the kernel hands out a new one every time.
constexpr int kTransparentAttempts = 8;

// transparentSocket(family: 4 | 6, address: string, mark: uint32, dstAddress: string, dstPort: 1..65535) -> fd
// An unconnected TCP socket (non-blocking, close-on-exec) with IP_TRANSPARENT / IPV6_TRANSPARENT (so it may bind a
// non-local address: needs CAP_NET_ADMIN or CAP_NET_RAW), SO_MARK = mark when non-zero (CAP_NET_ADMIN), bound to
// `address` on a port the kernel chooses, for a connection to dstAddress:dstPort. A port is refused when a TCP
// socket of this namespace already joins dstAddress:dstPort to address:port (the peer's own connection being
// served, or another one from the same address and port, in any state): both would share one conntrack entry, and
// the app's replies to one would be routed to the other. One exact sock_diag lookup per port tried. The caller
// owns the fd (Node wraps it with new net.Socket({ fd }) and connects it). On failure nothing is left open.
Napi::Value TransparentSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 5 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsString() ||
      !info[4].IsNumber()) {
    return ThrowTypeError(env, "transparentSocket(family, address, mark, dstAddress, dstPort) expects a number, a string, a number, a string and a number");
  }
  const int family = info[0].As<Napi::Number>().Int32Value();
  const std::string address = info[1].As<Napi::String>().Utf8Value();
  const uint32_t mark = info[2].As<Napi::Number>().Uint32Value();
  const std::string dstAddress = info[3].As<Napi::String>().Utf8Value();
  const int dstPort = info[4].As<Napi::Number>().Int32Value();
  if (family != 4 && family != 6) return ThrowTypeError(env, "transparentSocket: family must be 4 or 6");
  if (dstPort < 1 || dstPort > 65535) return ThrowTypeError(env, "transparentSocket: dstPort must be between 1 and 65535");
  sockaddr_storage source;
  sockaddr_storage target;
  socklen_t sourceLen = 0;
  socklen_t targetLen = 0;
  if (!ParseAddress(family, address, &source, &sourceLen)) return ThrowTypeError(env, "transparentSocket: address is not an address of the family");
  if (!ParseAddress(family, dstAddress, &target, &targetLen)) return ThrowTypeError(env, "transparentSocket: dstAddress is not an address of the family");

  int held[kTransparentAttempts];
  int heldCount = 0;
  int fd = -1;
  const char* failed = nullptr;
  int err = 0;
  while (fd < 0 && failed == nullptr && heldCount < kTransparentAttempts) {
    int port = 0;
    const int made = OpenTransparent(family, source, sourceLen, mark, &port, &failed);
    if (made < 0) {
      err = errno;
      break;
    }
    const int owner = LookupSocketUid(family, AddressBytes(family, target), htons(static_cast<uint16_t>(dstPort)),
                                      AddressBytes(family, source), htons(static_cast<uint16_t>(port)), &failed);
    if (owner == -2) {
      err = errno;
      close(made);
    } else if (owner >= 0) {
      held[heldCount++] = made;
    } else {
      fd = made;
    }
  }
  for (int i = 0; i < heldCount; i++) close(held[i]);
  if (fd >= 0) return Napi::Number::New(env, fd);
  if (failed == nullptr) return ThrowSystemError(env, EADDRINUSE, "bind");
  return ThrowSystemError(env, err, failed);
}

// sourceSocket(family: 4 | 6, address: string) -> fd
// An unconnected TCP socket (non-blocking, close-on-exec) bound to a local `address` with IP_BIND_ADDRESS_NO_PORT, for
// the inbound passthrough leg from 127.0.0.6 / ::6 that JavaScript connects. Node's connect({ localAddress }) binds
// with port 0, which picks the port at bind() without the destination: a bound port cannot be reused while any socket
// on it is in TIME_WAIT, so sustained churn to one app (about 750 connections/s here) exhausts the source address's
// ports and bind() scans ever longer. With the flag the port is picked at connect() for the whole 4-tuple, as for an
// unbound socket. The caller owns the fd (Node wraps it with new net.Socket({ fd }) and connects it).
Napi::Value SourceSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsString()) {
    return ThrowTypeError(env, "sourceSocket(family, address) expects a number and a string");
  }
  const int family = info[0].As<Napi::Number>().Int32Value();
  const std::string address = info[1].As<Napi::String>().Utf8Value();
  if (family != 4 && family != 6) return ThrowTypeError(env, "sourceSocket: family must be 4 or 6");
  sockaddr_storage source;
  socklen_t sourceLen = 0;
  if (!ParseAddress(family, address, &source, &sourceLen)) return ThrowTypeError(env, "sourceSocket: address is not an address of the family");
  const int fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowSystemError(env, errno, "socket");
  const int one = 1;
  // SOL_IP also for an AF_INET6 socket: the kernel keeps the flag on the inet socket both families share.
  if (setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&source), sourceLen) != 0) {
    const int err = errno;
    close(fd);
    return ThrowSystemError(env, err, "bind");
  }
  return Napi::Number::New(env, fd);
}

}  // namespace

void InitSocketOptions(Napi::Env env, Napi::Object exports) {
  exports.Set("originalDst", Napi::Function::New(env, OriginalDst, "originalDst"));
  exports.Set("transparentListen", Napi::Function::New(env, TransparentListen, "transparentListen"));
  exports.Set("isTransparent", Napi::Function::New(env, IsTransparent, "isTransparent"));
  exports.Set("transparentSocket", Napi::Function::New(env, TransparentSocket, "transparentSocket"));
  exports.Set("sourceSocket", Napi::Function::New(env, SourceSocket, "sourceSocket"));
}

}  // namespace meshctl
