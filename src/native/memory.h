// Handing freed heap memory back to the kernel into the addon's exports: trimMalloc, releaseMemory (src/native/memory.cc).
#pragma once

#include <napi.h>

namespace meshctl {
void InitMemory(Napi::Env env, Napi::Object exports);
}  // namespace meshctl
