// Keeping CAP_NET_ADMIN across the proxy's switch from root to proxy.user, for TPROXY's inbound leg: each connection
// to the app needs a new IP_TRANSPARENT socket (src/native/socket_options.cc transparentSocket), so the capability
// must outlive the listeners. keepCapabilities() before setuid (PR_SET_KEEPCAPS: the permitted set survives the
// change of uid), retainNetAdmin() after it: permitted, effective and inheritable become CAP_NET_ADMIN alone, and it
// is raised as an ambient capability so that node:cluster workers (fork + exec of node) have it too.
// Capability sets are per thread: both calls must come from the thread that later makes the sockets (Node's main
// thread) and that forks the workers. Never aborts: failures are thrown as Errors carrying `errno` and `syscall`.
#include <napi.h>

#include "capabilities.h"
#include "system_error.h"

#include <cerrno>
#include <cstring>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#endif
#ifndef PR_CAP_AMBIENT_RAISE
#define PR_CAP_AMBIENT_RAISE 2
#endif

namespace meshctl {
namespace {

// keepCapabilities() -> undefined: prctl(PR_SET_KEEPCAPS, 1) on the calling thread.
Napi::Value KeepCapabilities(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return ThrowSystemError(env, errno, "prctl(PR_SET_KEEPCAPS)");
  return env.Undefined();
}

// retainNetAdmin() -> undefined: CAP_NET_ADMIN as the only permitted, effective, inheritable and ambient
// capability of the calling thread; PR_SET_KEEPCAPS back to 0. EPERM (syscall `capget`) when CAP_NET_ADMIN is not
// in the permitted set (keepCapabilities was not called before the uid changed, or the process never had it).
Napi::Value RetainNetAdmin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  __user_cap_header_struct header;
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
  std::memset(data, 0, sizeof(data));
  if (syscall(SYS_capget, &header, data) != 0) return ThrowSystemError(env, errno, "capget");
  const uint32_t netAdmin = 1u << CAP_NET_ADMIN;
  if ((data[0].permitted & netAdmin) == 0) return ThrowSystemError(env, EPERM, "capget");
  std::memset(data, 0, sizeof(data));
  data[0].permitted = netAdmin;
  data[0].effective = netAdmin;
  data[0].inheritable = netAdmin;
  if (syscall(SYS_capset, &header, data) != 0) return ThrowSystemError(env, errno, "capset");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0) != 0) {
    return ThrowSystemError(env, errno, "prctl(PR_CAP_AMBIENT_RAISE)");
  }
  if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return ThrowSystemError(env, errno, "prctl(PR_SET_KEEPCAPS)");
  return env.Undefined();
}

}  // namespace

void InitCapabilities(Napi::Env env, Napi::Object exports) {
  exports.Set("keepCapabilities", Napi::Function::New(env, KeepCapabilities, "keepCapabilities"));
  exports.Set("retainNetAdmin", Napi::Function::New(env, RetainNetAdmin, "retainNetAdmin"));
}

}  // namespace meshctl
