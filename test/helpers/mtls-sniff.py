#!/usr/bin/env python3
# Reads every frame on one interface (AF_PACKET) until SIGTERM, then prints one JSON line: the frames seen, the TCP
# payload bytes to and from each port, and whether a marker string appeared in any frame. The mTLS tunnel test runs
# it inside a namespace to show that a payload crossing the link through the tunnel never appears in plaintext.
import json, select, signal, socket, struct, sys

iface, marker = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
s.bind((iface, 0))
stats = {'frames': 0, 'markerFrames': 0, 'tcpPayloadByPort': {}}
running = True


def stop(*_):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
print(json.dumps({'ready': True}), flush=True)
while running:
    r, _, _ = select.select([s], [], [], 0.1)
    if not r:
        continue
    frame = s.recv(65535)
    stats['frames'] += 1
    if marker in frame:
        stats['markerFrames'] += 1
    ethertype = struct.unpack('!H', frame[12:14])[0]
    if ethertype == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        l4 = 14 + ihl
    elif ethertype == 0x86DD:
        proto = frame[20]
        l4 = 14 + 40
    else:
        continue
    if proto != 6:
        continue
    sport, dport = struct.unpack('!HH', frame[l4:l4 + 4])
    offset = (frame[l4 + 12] >> 4) * 4
    payload = len(frame) - (l4 + offset)
    if payload > 0:
        for p in (sport, dport):
            key = str(p)
            stats['tcpPayloadByPort'][key] = stats['tcpPayloadByPort'].get(key, 0) + payload
print(json.dumps(stats), flush=True)
