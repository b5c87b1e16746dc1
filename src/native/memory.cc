// Handing freed heap memory back to the kernel (trimMalloc), and the JavaScript heap's garbage with it
// (releaseMemory). glibc's malloc keeps what a thread frees in that thread's arena and
// gives it back only from the top of the arena, and only of the main one by itself: after the proxy has started,
// the arenas of V8's background threads (compile and GC jobs) still held ~3 MiB of freed, resident memory that no
// one used again (idle proxy RSS). malloc_trim(0) releases the free pages of every arena (madvise DONTNEED); it
// costs a walk of the free lists (a few ms on an idle proxy), so it runs once the proxy is started, not per request.
// Other C libraries (musl) have no such call: trimMalloc then does nothing.
#include <napi.h>
#include <v8.h>

#include "memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace meshctl {
namespace {

// trimMalloc() -> boolean: whether memory was released to the kernel (false also where the C library has no
// malloc_trim). Never throws.
Napi::Value TrimMalloc(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  return Napi::Boolean::New(info.Env(), malloc_trim(0) == 1);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// releaseMemory() -> undefined: what an idle proxy holds but no longer uses goes back to the kernel. V8 is told the
// system is low on memory (Isolate::LowMemoryNotification: full, compacting collections until one frees nothing
// more, its compilation cache cleared, free heap pages unmapped), then malloc_trim(0). The proxy calls it once a
// burst of work is over (src/proxy/idle-release.ts): after a 1 s connect + close warm-up it took 13-52 ms wall and
// 16-25 ms of CPU with a ~10 MiB heap. Must run on the JavaScript thread (it is a JS call). Never throws.
Napi::Value ReleaseMemory(const Napi::CallbackInfo& info) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
  return info.Env().Undefined();
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("trimMalloc", Napi::Function::New(env, TrimMalloc, "trimMalloc"));
  exports.Set("releaseMemory", Napi::Function::New(env, ReleaseMemory, "releaseMemory"));
}

}  // namespace meshctl
