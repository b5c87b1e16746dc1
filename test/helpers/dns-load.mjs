// A DNS load loop (plain JS: runs under `ip netns exec` as the app's uid): `node dns-load.mjs HOST PORT COUNT
// CONCURRENCY QUERIES_JSON` sends COUNT UDP queries, QUERIES_JSON ([[name, type], ...]) in turn, at most CONCURRENCY
// outstanding, each from a fresh ID on one socket; a query unanswered after 2 s is lost. Prints one JSON line:
// { sent, answered, lost, mismatched, rcodes, perQuery: { "name type": { count, p50Ms, p99Ms } }, qps }.
import { createSocket } from 'node:dgram';
import packet from 'dns-packet';

export async function runLoad({ host, port, count, concurrency, queries }) {
  const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  await new Promise((resolve) => socket.bind(0, resolve));
  const outstanding = new Map();
  const latencies = new Map();
  const rcodes = {};
  let sent = 0;
  let answered = 0;
  let lost = 0;
  let mismatched = 0;
  let nextId = 1;
  const started = performance.now();
  return await new Promise((resolve) => {
    const finish = () => {
      clearInterval(sweeper);
      socket.close();
      const perQuery = {};
      for (const [key, list] of latencies) {
        list.sort((a, b) => a - b);
        perQuery[key] = {
          count: list.length,
          p50Ms: list[Math.floor(list.length * 0.5)] ?? null,
          p99Ms: list[Math.min(list.length - 1, Math.floor(list.length * 0.99))] ?? null,
        };
      }
      const seconds = (performance.now() - started) / 1000;
      resolve({ sent, answered, lost, mismatched, rcodes, perQuery, qps: Math.round(answered / seconds) });
    };
    const pump = () => {
      while (outstanding.size < concurrency && sent < count) {
        const [name, type] = queries[sent % queries.length];
        let id = nextId;
        nextId = (nextId % 65535) + 1;
        while (outstanding.has(id)) id = (id % 65535) + 1;
        outstanding.set(id, { at: performance.now(), key: `${name} ${type}`, name });
        sent++;
        socket.send(
          packet.encode({
            id,
            type: 'query',
            flags: packet.RECURSION_DESIRED,
            questions: [{ name, type, class: 'IN' }],
          }),
          port,
          host,
        );
      }
      if (sent >= count && outstanding.size === 0) finish();
    };
    socket.on('message', (buf) => {
      let p;
      try {
        p = packet.decode(buf);
      } catch {
        mismatched++;
        return;
      }
      const q = outstanding.get(p.id);
      if (!q || p.questions?.[0]?.name !== q.name) {
        mismatched++;
        return;
      }
      outstanding.delete(p.id);
      answered++;
      const rcode = p.flags & 0xf;
      rcodes[rcode] = (rcodes[rcode] ?? 0) + 1;
      const list = latencies.get(q.key) ?? [];
      list.push(performance.now() - q.at);
      latencies.set(q.key, list);
      pump();
    });
    const sweeper = setInterval(() => {
      const now = performance.now();
      for (const [id, q] of outstanding) {
        if (now - q.at > 2000) {
          outstanding.delete(id);
          lost++;
        }
      }
      pump();
    }, 200);
    pump();
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [host, port, count, concurrency, queries] = process.argv.slice(2);
  const result = await runLoad({
    host,
    port: Number(port),
    count: Number(count),
    concurrency: Number(concurrency),
    queries: JSON.parse(queries),
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
