// The relay thread's JS class (createRelay in src/native/addon.ts, which validates every argument first; the checks
// here are a backstop against a crash): adopt/abort/snapshot for pairs JS connected, listen/unlisten/list/stats for
// the front door (front_door.cc), and the delivery of end records to onEnded in batches.
#include <arpa/inet.h>

#include <cmath>
#include <cstring>
#include <string>

#include "relay.h"
#include "relay_core.h"
#include "system_error.h"

namespace meshctl {
namespace {

struct EndName {
  const char* name;
  EndCode code;
};
// Every EndCode under the name JS uses for it (RelayEnd in src/native/addon.ts, which checks the two agree).
constexpr EndName kEndNames[] = {
    {"fin", kFin},
    {"reset", kReset},
    {"error", kError},
    {"keepalive", kKeepalive},
    {"idle", kIdle},
    {"halfClose", kHalfClose},
    {"maxDuration", kMaxDuration},
    {"aborted", kAborted},
    {"adoptFailed", kAdoptFailed},
};
// The ends only front-door connections have (FRONT_DOOR_ENDS in addon.ts), exported as `frontDoorEndCodes`: a
// table of their own, so the adopted pairs' table (and what JS checks of it) stays as it was.
constexpr EndName kFrontDoorEndNames[] = {
    {"connectFailed", kConnectFailed},
    {"connectTimeout", kConnectTimeout},
    {"selfLoop", kSelfLoop},
    {"notRedirected", kNotRedirected},
};

// Numbers per end record in the Float64Array given to onEnded: id, bytes from client, bytes from upstream, end
// code, side (0 client, 1 upstream), errno. Exported as `relayRecordFields`.
constexpr size_t kRecordFields = 6;
// Numbers per record in onEnded's second argument (only for a batch with a front-door record): front (0 | 1),
// listenerId, duration µs, connect µs (-1 never), flags. Exported as `relayDetailFields`; 3 endpoints per record.
constexpr size_t kDetailFields = 5;
// Bytes per packed endpoint in the details (PackEndpoint). Exported as `relayEndpointBytes`.
constexpr size_t kEndpointBytes = 20;

Napi::Value ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

// A number field of `o` that must be an integer in [min, max]; false (and *error set) otherwise.
bool IntField(Napi::Object o, const char* name, int64_t min, int64_t max, int64_t* out, std::string* error) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) {
    *error = std::string("listen: options.") + name + " must be a number";
    return false;
  }
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < static_cast<double>(min) || d > static_cast<double>(max)) {
    *error = std::string("listen: options.") + name + " is out of range";
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

bool ParseAddress(const std::string& text, int family, Endpoint* out) {
  std::memset(out, 0, sizeof(*out));
  if (family == 4) {
    out->v4.sin_family = AF_INET;
    return inet_pton(AF_INET, text.c_str(), &out->v4.sin_addr) == 1;
  }
  out->v6.sin6_family = AF_INET6;
  return inet_pton(AF_INET6, text.c_str(), &out->v6.sin6_addr) == 1;
}

bool ParseAsk(Napi::Value v, std::vector<AskEntry>* out, std::string* error) {
  if (!v.IsArray()) {
    *error = "listen: options.ask must be an array";
    return false;
  }
  Napi::Array list = v.As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsObject() || !item.As<Napi::Object>().Get("address").IsString()) {
      *error = "listen: options.ask[" + std::to_string(i) + "] must be { address, prefix, port }";
      return false;
    }
    Napi::Object o = item.As<Napi::Object>();
    const std::string text = o.Get("address").As<Napi::String>().Utf8Value();
    AskEntry a{};
    Endpoint e{};
    a.family = text.find(':') == std::string::npos ? 4 : 6;
    int64_t prefix = 0;
    int64_t port = 0;
    if (!ParseAddress(text, a.family, &e) || !IntField(o, "prefix", 0, a.family == 4 ? 32 : 128, &prefix, error) ||
        !IntField(o, "port", 0, 65535, &port, error)) {
      if (error->empty()) *error = "listen: options.ask[" + std::to_string(i) + "].address is not an IP address";
      return false;
    }
    std::memcpy(a.addr, a.family == 4 ? static_cast<const void*>(&e.v4.sin_addr) : &e.v6.sin6_addr, a.family == 4 ? 4 : 16);
    a.prefix = static_cast<int>(prefix);
    a.port = static_cast<uint16_t>(port);
    out->push_back(a);
  }
  return true;
}

// One check per field of FrontDoorOptions, in the order addon.ts declares them.
bool ParseOptions(Napi::Object o, FrontDoorOptions* opts, std::string* error) {
  Napi::Value direction = o.Get("direction");
  if (!direction.IsString()) {
    *error = "listen: options.direction must be 'outbound' or 'inbound'";
    return false;
  }
  const std::string dir = direction.As<Napi::String>().Utf8Value();
  if (dir != "outbound" && dir != "inbound") {
    *error = "listen: options.direction must be 'outbound' or 'inbound'";
    return false;
  }
  opts->outbound = dir == "outbound";
  int64_t family = 0;
  if (!IntField(o, "family", 4, 6, &family, error) || family == 5) {
    if (error->empty()) *error = "listen: options.family must be 4 or 6";
    return false;
  }
  opts->family = static_cast<int>(family);
  if (!o.Get("passthrough").IsBoolean()) {
    *error = "listen: options.passthrough must be a boolean";
    return false;
  }
  opts->passthrough = o.Get("passthrough").As<Napi::Boolean>().Value();
  if (!ParseAsk(o.Get("ask"), &opts->ask, error)) return false;
  Napi::Value source = o.Get("sourceAddress");
  if (source.IsString()) {
    const std::string text = source.As<Napi::String>().Utf8Value();
    if (!ParseAddress(text, text.find(':') == std::string::npos ? 4 : 6, &opts->source)) {
      *error = "listen: options.sourceAddress is not an IP address";
      return false;
    }
    opts->hasSource = true;
  } else if (!source.IsNull()) {
    *error = "listen: options.sourceAddress must be a string or null";
    return false;
  }
  Napi::Value ownSet = o.Get("selfLoopOwnSet");
  if (ownSet.IsBoolean()) {
    opts->selfLoopOwnSet = ownSet.As<Napi::Boolean>().Value();
  } else if (!ownSet.IsUndefined()) {
    *error = "listen: options.selfLoopOwnSet must be a boolean";
    return false;
  }
  int64_t keepalive = 0;
  const int64_t kMax = int64_t{1} << 52;
  if (!IntField(o, "selfLoopUid", -1, 0xffffffffLL, &opts->selfLoopUid, error) ||
      !IntField(o, "connectTimeoutMs", -1, kMax, &opts->connectTimeoutMs, error) ||
      !IntField(o, "maxDurationMs", -1, kMax, &opts->maxDurationMs, error) ||
      !IntField(o, "idleMs", -1, kMax, &opts->idleMs, error) ||
      !IntField(o, "halfCloseMs", -1, kMax, &opts->halfCloseMs, error) ||
      !IntField(o, "keepaliveSec", -1, 0x7fffffff, &keepalive, error)) {
    return false;
  }
  opts->keepaliveSec = static_cast<int>(keepalive);
  return true;
}

Napi::String EndpointString(Napi::Env env, const Endpoint& e) {
  char text[kEndpointText];
  FormatEndpoint(e, text);
  return Napi::String::New(env, text);
}

}  // namespace

// One endpoint as onEnded's EndDetails carries it (kEndpointBytes): family (0 none, 4, 6), 0, the port in network
// order, the address (4 or 16 bytes, network order).
static void PackEndpoint(const Endpoint& e, uint8_t* out) {
  std::memset(out, 0, kEndpointBytes);
  if (e.sa.sa_family == AF_INET) {
    out[0] = 4;
    std::memcpy(out + 2, &e.v4.sin_port, 2);
    std::memcpy(out + 4, &e.v4.sin_addr, 4);
  } else if (e.sa.sa_family == AF_INET6) {
    out[0] = 6;
    std::memcpy(out + 2, &e.v6.sin6_port, 2);
    std::memcpy(out + 4, &e.v6.sin6_addr, 16);
  }
}

// On the JS thread: hands the finished pairs to `fn` as one ArrayBuffer per batch: a Float64Array view of
// kRecordFields numbers per pair, and when any of them came through the front door, a second argument with two more
// views of the same buffer: kDetailFields numbers and three packed endpoints (source, original destination, upstream
// local; kEndpointBytes each) per record. No string and no object per record: JS formats an address only when a
// consumer prints it.
void Core::Deliver(Napi::Env env, Napi::Function fn) {
  std::vector<Record> batch;
  {
    std::lock_guard<std::mutex> out(outMu_);
    batch.swap(outbox_);
    signalled_ = false;
  }
  if (batch.empty() || env == nullptr || fn.IsEmpty()) return;
  const size_t n = batch.size();
  bool anyFront = false;
  for (const Record& r : batch) anyFront = anyFront || r.front;
  const size_t recordBytes = n * kRecordFields * sizeof(double);
  const size_t detailBytes = anyFront ? n * kDetailFields * sizeof(double) : 0;
  const size_t endpointBytes = anyFront ? n * 3 * kEndpointBytes : 0;
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, recordBytes + detailBytes + endpointBytes);
  uint8_t* base = static_cast<uint8_t*>(buffer.Data());
  double* out = reinterpret_cast<double*>(base);
  for (size_t i = 0; i < n; i++) {
    const Record& r = batch[i];
    double* at = out + i * kRecordFields;
    at[0] = static_cast<double>(r.id);
    at[1] = static_cast<double>(r.fromClient);
    at[2] = static_cast<double>(r.fromUpstream);
    at[3] = r.code;
    at[4] = r.aux;
    at[5] = r.err;
  }
  Napi::Float64Array records = Napi::Float64Array::New(env, n * kRecordFields, buffer, 0);
  if (!anyFront) {
    fn.Call({records});
    return;
  }
  double* numbers = reinterpret_cast<double*>(base + recordBytes);
  uint8_t* endpoints = base + recordBytes + detailBytes;
  for (size_t i = 0; i < n; i++) {
    const Record& r = batch[i];
    double* at = numbers + i * kDetailFields;
    at[0] = r.front ? 1 : 0;
    at[1] = r.front ? r.listenerId : -1;
    at[2] = r.front ? static_cast<double>(r.durationUs) : -1;
    at[3] = r.front ? static_cast<double>(r.connectUs) : -1;
    at[4] = r.front ? r.flags : 0;
    uint8_t* e = endpoints + i * 3 * kEndpointBytes;
    if (!r.front) {
      std::memset(e, 0, 3 * kEndpointBytes);
      continue;
    }
    PackEndpoint(r.source, e);
    PackEndpoint(r.dst, e + kEndpointBytes);
    PackEndpoint(r.upstreamLocal, e + 2 * kEndpointBytes);
  }
  Napi::Object details = Napi::Object::New(env);
  details.Set("numbers", Napi::Float64Array::New(env, n * kDetailFields, buffer, recordBytes));
  details.Set("endpoints", Napi::Uint8Array::New(env, endpointBytes, buffer, recordBytes + detailBytes));
  fn.Call({records, details});
}

namespace {

class Relay : public Napi::ObjectWrap<Relay> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Relay",
                       {
                           InstanceMethod<&Relay::AdoptJs>("adopt"),
                           InstanceMethod<&Relay::AbortJs>("abort"),
                           InstanceMethod<&Relay::SnapshotJs>("snapshot"),
                           InstanceMethod<&Relay::SetSweepJs>("setSweepInterval"),
                           InstanceMethod<&Relay::ListenJs>("listen"),
                           InstanceMethod<&Relay::UnlistenJs>("unlisten"),
                           InstanceMethod<&Relay::ListJs>("list"),
                           InstanceMethod<&Relay::StatsJs>("stats"),
                           InstanceMethod<&Relay::RefJs>("ref"),
                           InstanceMethod<&Relay::UnrefJs>("unref"),
                           InstanceMethod<&Relay::CloseJs>("close"),
                       });
  }

  // new Relay(onEnded: (records, details?) => void, sweepMs: number, onAccepted?: (batch) => void)
  explicit Relay(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Relay>(info) {
    Napi::Env env = info.Env();
    const bool hasAccepted = info.Length() == 3 && info[2].IsFunction();
    if ((info.Length() != 2 && !hasAccepted) || !info[0].IsFunction() || !info[1].IsNumber()) {
      ThrowType(env, "new Relay(onEnded, sweepMs, onAccepted?) expects a function, a number and a function");
      return;
    }
    core_ = new Core();
    const int err = core_->Open();
    if (err != 0) {
      delete core_;
      core_ = nullptr;
      ThrowSystemError(env, err, "epoll_create1");
      return;
    }
    core_->SetSweep(static_cast<int64_t>(info[1].As<Napi::Number>().Int64Value()));
    // The finalizer runs once the loop has released the function (Stop) and every queued delivery has run.
    Napi::ThreadSafeFunction tsfn = Napi::ThreadSafeFunction::New(
        env, info[0].As<Napi::Function>(), "meshctl-relay", 0, 1, core_, [](Napi::Env, Core* core) { delete core; });
    tsfn.Unref(env);
    tsfn_ = tsfn;
    core_->Start(tsfn, hasAccepted ? info[2].As<Napi::Function>() : Napi::Function());
    napi_add_env_cleanup_hook(env, CleanupHook, this);
    hooked_ = true;
  }

  ~Relay() override { Shutdown(); }

 private:
  static void CleanupHook(void* arg) {
    Relay* self = static_cast<Relay*>(arg);
    self->hooked_ = false;
    self->Shutdown();
  }

  void Shutdown() {
    if (core_ == nullptr) return;
    Core* core = core_;
    core_ = nullptr;
    core->Stop();  // the tsfn finalizer deletes it
    if (hooked_) {
      napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
      hooked_ = false;
    }
  }

  bool Check(Napi::Env env) {
    if (core_ != nullptr) return true;
    Napi::Error::New(env, "the relay is closed").ThrowAsJavaScriptException();
    return false;
  }

  // adopt(id, clientFd, upstreamFd, maxRemainingMs, idleMs, halfCloseMs, keepaliveSec): -1 = no bound.
  Napi::Value AdoptJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 7) return ThrowType(env, "adopt expects 7 numbers");
    int64_t v[7];
    for (size_t i = 0; i < 7; i++) {
      if (!info[i].IsNumber()) return ThrowType(env, "adopt expects 7 numbers");
      v[i] = info[i].As<Napi::Number>().Int64Value();
    }
    if (v[0] < 0 || v[0] > 0xffffffffLL || v[1] < 0 || v[2] < 0 || v[1] > 0x7fffffff || v[2] > 0x7fffffff) {
      return ThrowType(env, "adopt: id and fds must be non-negative integers");
    }
    const int err = core_->Adopt(static_cast<uint32_t>(v[0]), static_cast<int>(v[1]), static_cast<int>(v[2]), v[3],
                                 v[4], v[5], static_cast<int>(v[6]));
    if (err != 0) return ThrowSystemError(env, err, "adopt");
    return env.Undefined();
  }

  // An id from adopt() (uint32) or the front door (≥ 2^32); -1 for anything else (found nowhere).
  static int64_t IdOf(const Napi::Value& v) {
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d < 0 || d > 9007199254740991.0 || std::floor(d) != d) return -1;
    return static_cast<int64_t>(d);
  }

  // abort(id, reset: boolean) -> whether the pair was still open
  Napi::Value AbortJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsBoolean()) {
      return ThrowType(env, "abort(id, reset) expects a number and a boolean");
    }
    const int64_t id = IdOf(info[0]);
    const bool found = id >= 0 && core_->Abort(static_cast<uint64_t>(id), info[1].As<Napi::Boolean>().Value());
    return Napi::Boolean::New(env, found);
  }

  // snapshot(id, out: Float64Array(3)) -> false if gone; else out = [fromClient, fromUpstream, halfClosed 0|1]
  Napi::Value SnapshotJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsTypedArray()) {
      return ThrowType(env, "snapshot(id, out) expects a number and a Float64Array");
    }
    Napi::TypedArray array = info[1].As<Napi::TypedArray>();
    if (array.TypedArrayType() != napi_float64_array || array.ElementLength() < 3) {
      return ThrowType(env, "snapshot: out must be a Float64Array of at least 3");
    }
    Napi::Float64Array out = array.As<Napi::Float64Array>();
    uint64_t fromClient = 0;
    uint64_t fromUpstream = 0;
    bool halfClosed = false;
    const int64_t id = IdOf(info[0]);
    if (id < 0 || !core_->Snapshot(static_cast<uint64_t>(id), &fromClient, &fromUpstream, &halfClosed)) {
      return Napi::Boolean::New(env, false);
    }
    out[0] = static_cast<double>(fromClient);
    out[1] = static_cast<double>(fromUpstream);
    out[2] = halfClosed ? 1 : 0;
    return Napi::Boolean::New(env, true);
  }

  Napi::Value SetSweepJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int64Value() < 1) {
      return ThrowType(env, "setSweepInterval(ms) expects a positive number");
    }
    core_->SetSweep(info[0].As<Napi::Number>().Int64Value());
    return env.Undefined();
  }

  // listen(listenerId, fd, options): accept on a dup of fd, or replace the options of listenerId.
  Napi::Value ListenJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsObject()) {
      return ThrowType(env, "listen(listenerId, fd, options) expects a number, a number and an object");
    }
    const int64_t id = info[0].As<Napi::Number>().Int64Value();
    const int64_t fd = info[1].As<Napi::Number>().Int64Value();
    if (id < 0 || id > 0x7fffffff || fd < 0 || fd > 0x7fffffff) {
      return ThrowType(env, "listen: listenerId and fd must be integers between 0 and 2147483647");
    }
    FrontDoorOptions opts;
    std::string error;
    if (!ParseOptions(info[2].As<Napi::Object>(), &opts, &error)) return ThrowType(env, error);
    const char* syscall = "listen";
    const int err = core_->Listen(static_cast<int32_t>(id), static_cast<int>(fd), std::move(opts), &syscall);
    if (err != 0) return ThrowSystemError(env, err, syscall);
    return env.Undefined();
  }

  // unlisten(listenerId) -> whether it was listening
  Napi::Value UnlistenJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 1 || !info[0].IsNumber()) return ThrowType(env, "unlisten(listenerId) expects a number");
    const int64_t id = info[0].As<Napi::Number>().Int64Value();
    if (id < 0 || id > 0x7fffffff) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, core_->Unlisten(static_cast<int32_t>(id)));
  }

  // list(limit) -> [{ id, listenerId, source, originalDst, upstreamLocal, ageMs, fromClient, fromUpstream, state }]
  Napi::Value ListJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int64Value() < 0) {
      return ThrowType(env, "list(limit) expects a non-negative number");
    }
    const std::vector<LiveConnection> live = core_->List(static_cast<size_t>(info[0].As<Napi::Number>().Int64Value()));
    Napi::Array out = Napi::Array::New(env, live.size());
    for (size_t i = 0; i < live.size(); i++) {
      const LiveConnection& c = live[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("id", Napi::Number::New(env, static_cast<double>(c.id)));
      o.Set("listenerId", Napi::Number::New(env, c.listenerId));
      o.Set("source", EndpointString(env, c.source));
      o.Set("originalDst", EndpointString(env, c.dst));
      o.Set("upstreamLocal", EndpointString(env, c.upstreamLocal));
      o.Set("ageMs", Napi::Number::New(env, static_cast<double>(c.ageMs)));
      o.Set("fromClient", Napi::Number::New(env, static_cast<double>(c.fromClient)));
      o.Set("fromUpstream", Napi::Number::New(env, static_cast<double>(c.fromUpstream)));
      o.Set("state", Napi::String::New(env, c.state));
      out[i] = o;
    }
    return out;
  }

  // stats() -> the front door's counters since createRelay (and the pairs it has open now)
  Napi::Value StatsJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    uint64_t open = 0;
    uint64_t connecting = 0;
    const FrontDoorStats s = core_->Stats(&open, &connecting);
    Napi::Object o = Napi::Object::New(env);
    const auto set = [&](const char* name, double v) { o.Set(name, Napi::Number::New(env, v)); };
    set("accepted", static_cast<double>(s.accepted));
    set("asked", static_cast<double>(s.asked));
    set("connected", static_cast<double>(s.connected));
    set("connectFailed", static_cast<double>(s.connectFailed));
    set("connectTimeout", static_cast<double>(s.connectTimeout));
    set("connectAnsweredLate", static_cast<double>(s.connectAnsweredLate));
    set("selfLoop", static_cast<double>(s.selfLoop));
    set("notRedirected", static_cast<double>(s.notRedirected));
    set("acceptErrors", static_cast<double>(s.acceptErrors));
    set("acceptBackoffs", static_cast<double>(s.acceptBackoffs));
    set("lastAcceptErrno", s.lastAcceptErrno);
    set("sourceFallbacks", static_cast<double>(s.sourceFallbacks));
    set("ownerLookupFailures", static_cast<double>(s.ownerLookupFailures));
    set("lastOwnerLookupErrno", s.lastOwnerLookupErrno);
    set("ownerLookups", static_cast<double>(s.ownerLookups));
    set("selfLoopByOwnSet", static_cast<double>(s.selfLoopByOwnSet));
    set("loopSuspects", static_cast<double>(s.loopSuspects));
    set("acceptYields", static_cast<double>(s.acceptYields));
    set("open", static_cast<double>(open));
    set("connecting", static_cast<double>(connecting));
    return o;
  }

  // While connections are relayed (or listeners accept), end reports and accepted batches must keep the event
  // loop alive.
  Napi::Value RefJs(const Napi::CallbackInfo& info) {
    if (core_ != nullptr) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value UnrefJs(const Napi::CallbackInfo& info) {
    if (core_ != nullptr) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value CloseJs(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  Core* core_ = nullptr;
  Napi::ThreadSafeFunction tsfn_;
  bool hooked_ = false;
};

}  // namespace

void InitRelay(Napi::Env env, Napi::Object exports) {
  exports.Set("Relay", Relay::Define(env));
  Napi::Object codes = Napi::Object::New(env);
  for (const EndName& end : kEndNames) codes.Set(end.name, Napi::Number::New(env, end.code));
  codes.Freeze();
  exports.Set("relayEndCodes", codes);
  Napi::Object frontCodes = Napi::Object::New(env);
  for (const EndName& end : kFrontDoorEndNames) frontCodes.Set(end.name, Napi::Number::New(env, end.code));
  frontCodes.Freeze();
  exports.Set("frontDoorEndCodes", frontCodes);
  exports.Set("relayRecordFields", Napi::Number::New(env, static_cast<double>(kRecordFields)));
  exports.Set("relayDetailFields", Napi::Number::New(env, static_cast<double>(kDetailFields)));
  exports.Set("relayEndpointBytes", Napi::Number::New(env, static_cast<double>(kEndpointBytes)));
}

}  // namespace meshctl
