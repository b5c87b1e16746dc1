// originalDst(fd, family): the destination a connection had before netfilter REDIRECT rewrote it.
// One export, no state. Arguments are validated in TypeScript (src/native/addon.ts); the checks here only
// guarantee that a wrong call becomes a JS exception instead of undefined behaviour. Never aborts: every
// failure is thrown as an Error carrying `errno` and `syscall`, like Node's own system errors.
#include <napi.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>; those headers do not compile
// cleanly next to the libc ones in C++, and the values are kernel ABI.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

namespace {

Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall) {
  Napi::Error error = Napi::Error::New(env, std::string(syscall) + " failed: " + std::strerror(err));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("originalDst", Napi::Function::New(env, OriginalDst, "originalDst"));
  return exports;
}

}  // namespace

NODE_API_MODULE(meshctl_native, Init)
