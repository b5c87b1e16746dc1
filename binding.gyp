# The one native addon (src/native/addon.cc, its entry point): the socket options of interception, originalDst
# (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST) and transparent listeners (IP_TRANSPARENT) (src/native/socket_options.cc);
# the relay thread that moves the bytes of established connections (src/native/relay.cc), its front door that
# accepts and connects natively (src/native/front_door.cc) and its JS class (src/native/relay_binding.cc); and the sock_diag lookup
# of a connection's local peer owner (src/native/socket_owner.cc); keeping CAP_NET_ADMIN across the switch to
# proxy.user for TPROXY (src/native/capabilities.cc); handing freed malloc memory back to the kernel
# (src/native/memory.cc).
# Built by `npm ci` (npm runs `node-gyp rebuild` when this file sits at the package root).
{
  "targets": [
    {
      "target_name": "meshctl_native",
      "sources": ["src/native/addon.cc", "src/native/socket_options.cc", "src/native/relay.cc", "src/native/front_door.cc", "src/native/relay_binding.cc", "src/native/socket_owner.cc", "src/native/capabilities.cc", "src/native/memory.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-Wall", "-Wextra", "-Werror"],
      "conditions": [
        ["OS!='linux'", { "type": "none", "sources": [] }]
      ]
    }
  ]
}
