# Stands in for a systemd socket unit that mixes ListenStream= and ListenDatagram= (systemd-socket-activate makes
# only one kind per run): binds the sockets in the order given, then execs the command with them as fds 3, 4, ...
# and LISTEN_FDS / LISTEN_PID set as systemd does (exec keeps the pid). No LISTEN_FDNAMES: positional, like a unit
# without FileDescriptorName=.
# Usage: python3 socket-activate.py stream=HOST:PORT|datagram=HOST:PORT|stream=[HOST6]:PORT ... -- COMMAND [ARGS...]
import os
import re
import socket
import sys

sep = sys.argv.index('--')
socks = []
for spec in sys.argv[1:sep]:
    m = re.match(r'^(stream|datagram)=(?:\[([^\]]+)\]|([^:\]]+)):(\d+)$', spec)
    if not m:
        sys.exit(f'socket-activate.py: {spec} is not stream=HOST:PORT or datagram=[HOST6]:PORT')
    family = socket.AF_INET6 if m.group(2) else socket.AF_INET
    kind = socket.SOCK_STREAM if m.group(1) == 'stream' else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((m.group(2) or m.group(3), int(m.group(4))))
    if kind == socket.SOCK_STREAM:
        s.listen(4096)
    socks.append(s)
# First out of the way (a socket may already sit on a target fd), then down to 3, 4, ... without close-on-exec.
high = [os.dup(s.fileno()) for s in socks]
high = [os.dup2(fd, 100 + i) or (100 + i) for i, fd in enumerate(high)]
for s in socks:
    s.detach()
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
os.environ['LISTEN_FDS'] = str(len(socks))
os.environ['LISTEN_PID'] = str(os.getpid())
os.environ.pop('LISTEN_FDNAMES', None)
os.execvp(sys.argv[sep + 1], sys.argv[sep + 1:])
