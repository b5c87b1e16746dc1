// The relay thread's entry point into the addon's exports (src/native/relay.cc).
#pragma once

#include <napi.h>

namespace meshctl {
void InitRelay(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
