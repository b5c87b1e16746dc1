// The relay thread's entry point into the addon's exports (src/native/relay_binding.cc; the loop is relay.cc, the front
// door front_door.cc): the Relay class, its tables of end codes (relayEndCodes, frontDoorEndCodes) and the sizes of an
// end record and of its front-door details (relayRecordFields, relayDetailFields).
#pragma once

#include <napi.h>

namespace meshctl {
void InitRelay(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
