#!/bin/sh
# /usr/bin/meshctl from the Debian package: the bundled Node.js runtime runs the program in /usr/lib/meshctl,
# whatever `node` is on PATH (Debian 12's own nodejs is 18; meshctl needs 20 or later).
exec /usr/lib/meshctl/node/bin/node /usr/lib/meshctl/bin/meshctl "$@"
