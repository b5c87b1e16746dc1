// The sock_diag lookup of a connection's local peer socket owner (src/native/socket_owner.cc).
#pragma once

#include <napi.h>

namespace meshctl {
void InitSocketOwner(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
