# The one native addon: originalDst (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST), transparent listeners (IP_TRANSPARENT)
# the relay thread that moves the bytes of established connections (src/native/relay.cc), and the sock_diag
# lookup of a connection's local peer owner (src/native/socket_owner.cc).
# Built by `npm ci` (npm runs `node-gyp rebuild` when this file sits at the package root).
{
  "targets": [
    {
      "target_name": "meshctl_native",
      "sources": ["src/native/original_dst.cc", "src/native/relay.cc", "src/native/socket_owner.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-Wall", "-Wextra", "-Werror"],
      "conditions": [
        ["OS!='linux'", { "type": "none", "sources": [] }]
      ]
    }
  ]
}
