// Keeping CAP_NET_ADMIN across the switch to proxy.user (TPROXY mode) into the addon's exports: keepCapabilities,
// retainNetAdmin (src/native/capabilities.cc).
#pragma once

#include <napi.h>

namespace meshctl {
void InitCapabilities(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
