// The addon's entry point: meshctl_native exports what each part adds through its Init<Part> (the socket options of
// interception, the relay thread, the sock_diag owner lookup, keeping CAP_NET_ADMIN for TPROXY, trimming malloc's
// arenas). Loaded and typed by src/native/addon.ts.
#include <napi.h>

#include "capabilities.h"
#include "memory.h"
#include "relay.h"
#include "socket_options.h"
#include "socket_owner.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  meshctl::InitSocketOptions(env, exports);
  meshctl::InitRelay(env, exports);
  meshctl::InitSocketOwner(env, exports);
  meshctl::InitCapabilities(env, exports);
  meshctl::InitMemory(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(meshctl_native, Init)
