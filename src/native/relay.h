// The relay thread's entry point into the addon's exports (src/native/relay.cc): the Relay class, its table of end
// codes (relayEndCodes) and the size of an end record (relayRecordFields).
#pragma once

#include <napi.h>

namespace meshctl {
void InitRelay(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
