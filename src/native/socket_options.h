// The socket options of interception into the addon's exports: originalDst, transparentListen, isTransparent,
// transparentSocket (src/native/socket_options.cc).
#pragma once

#include <napi.h>

namespace meshctl {
void InitSocketOptions(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
