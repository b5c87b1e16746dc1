// How the addon reports a failed system call: a JS Error carrying `errno` and `syscall`, like Node's own system
// errors (src/native/addon.ts adds the `code`).
#pragma once

#include <napi.h>

#include <cstring>
#include <string>

namespace meshctl {

inline Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall) {
  Napi::Error error = Napi::Error::New(env, std::string(syscall) + " failed: " + std::strerror(err));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace meshctl
