// A test DNS server (UDP and TCP on one port) answering from a zone, with dns-packet, for the DNS server's tests:
// in process (unit tests), or as its own process in a peer namespace (`node dns-upstream.mjs HOST PORT ZONE_JSON`,
// which prints `listening PORT`, then one JSON line per query it receives, so a test can count them).
// Zone entry: { ttl, A: [...], AAAA: [...], txt: N (N 200-byte TXT records: a large answer), rcode, soa: true
// (an SOA in the authority section of negative answers), truncate: true (TC over UDP, full over TCP) }.
// A name not in the zone is NXDOMAIN with an SOA (negative TTL `negativeTtl`, default 60).
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { pathToFileURL } from 'node:url';
import packet from 'dns-packet';

const RCODES = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 };

function soa(zone) {
  const ttl = zone.negativeTtl ?? 60;
  return {
    name: 'test',
    type: 'SOA',
    class: 'IN',
    ttl,
    data: { mname: 'ns.test', rname: 'admin.test', serial: 1, refresh: 60, retry: 60, expire: 60, minimum: ttl },
  };
}

/** The answer to one query message for `zone`. */
export function answerFor(zone, buf, transport) {
  const q = packet.decode(buf);
  const question = q.questions[0];
  const key = question.name.toLowerCase();
  const entry = zone.names?.[key];
  const ttl = entry?.ttl ?? 60;
  const opt = (q.additionals ?? []).find((r) => r.type === 'OPT');
  const base = {
    id: q.id,
    type: 'response',
    questions: q.questions,
    additionals: opt ? [{ type: 'OPT', name: '.', udpPayloadSize: 4096, flags: 0, options: [] }] : [],
  };
  if (!entry)
    return packet.encode({
      ...base,
      flags: packet.RECURSION_AVAILABLE | RCODES.NXDOMAIN,
      answers: [],
      authorities: [soa(zone)],
    });
  if (entry.truncate && transport === 'udp')
    return packet.encode({ ...base, flags: packet.TRUNCATED_RESPONSE | packet.RECURSION_AVAILABLE, answers: [] });
  const answers = [];
  if (question.type === 'A')
    for (const data of entry.A ?? []) answers.push({ name: question.name, type: 'A', class: 'IN', ttl, data });
  if (question.type === 'AAAA')
    for (const data of entry.AAAA ?? []) answers.push({ name: question.name, type: 'AAAA', class: 'IN', ttl, data });
  if (question.type === 'TXT')
    for (let i = 0; i < (entry.txt ?? 0); i++)
      answers.push({ name: question.name, type: 'TXT', class: 'IN', ttl, data: `${i}`.padEnd(200, 'x') });
  const rcode = RCODES[entry.rcode ?? 'NOERROR'];
  return packet.encode({
    ...base,
    flags: packet.RECURSION_AVAILABLE | rcode,
    answers,
    authorities: answers.length === 0 ? [soa(zone)] : [],
  });
}

/** Starts the server on host (port 0: a free one, the same for UDP and TCP). */
export async function startUpstream(zone, host = '127.0.0.1', port = 0) {
  const family = host.includes(':') ? 'udp6' : 'udp4';
  for (let attempt = 0; ; attempt++) {
    const udp = createSocket(family);
    await new Promise((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, host, resolve);
    });
    const bound = udp.address().port;
    const tcp = createServer();
    const ok = await new Promise((resolve) => {
      tcp.once('error', () => resolve(false));
      tcp.listen({ host, port: bound }, () => resolve(true));
    });
    if (!ok) {
      udp.close();
      if (attempt > 10 || port !== 0) throw new Error(`no free port for the test DNS server on ${host}`);
      continue;
    }
    const server = {
      port: bound,
      zone,
      queries: [],
      onQuery: null,
      close: () =>
        new Promise((resolve) => {
          udp.close();
          tcp.close(() => resolve());
        }),
    };
    const record = (buf, transport, from) => {
      const q = packet.decode(buf).questions[0];
      const entry = { name: q.name, type: q.type, transport, from };
      server.queries.push(entry);
      server.onQuery?.(entry);
    };
    udp.on('message', (buf, rinfo) => {
      record(buf, 'udp', rinfo.address);
      if (zone.silent) return;
      udp.send(answerFor(zone, buf, 'udp'), rinfo.port, rinfo.address);
    });
    tcp.on('connection', (socket) => {
      let data = Buffer.alloc(0);
      socket.on('error', () => {});
      socket.on('data', (d) => {
        data = Buffer.concat([data, d]);
        while (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) {
          const msg = data.subarray(2, 2 + data.readUInt16BE(0));
          data = data.subarray(2 + msg.length);
          record(msg, 'tcp', socket.remoteAddress);
          const reply = answerFor(zone, msg, 'tcp');
          const head = Buffer.alloc(2);
          head.writeUInt16BE(reply.length, 0);
          socket.write(Buffer.concat([head, reply]));
        }
      });
    });
    return server;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [host, port, zoneJson] = process.argv.slice(2);
  const server = await startUpstream(JSON.parse(zoneJson), host, Number(port));
  server.onQuery = (q) => process.stdout.write(`${JSON.stringify(q)}\n`);
  process.stdout.write(`listening ${server.port}\n`);
}
