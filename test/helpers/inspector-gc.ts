// A full garbage collection in a running Node process through Node's own inspector (what an operator does with
// SIGUSR1 and Chrome DevTools' "collect garbage"), so that a memory check compares live memory, not garbage that
// V8 has not yet collected. The process must not handle SIGUSR1 itself; its inspector listens on 127.0.0.1:9229
// of its network namespace from then on.
import { execFileSync } from 'node:child_process';

// Runs inside the namespace: finds the target's WebSocket URL and asks for HeapProfiler.collectGarbage, which
// V8 serves with its low-memory full collection; prints the reply's id when done.
const CLIENT = `
const deadline = Date.now() + 10000;
let list;
for (;;) {
  try { list = await (await fetch('http://127.0.0.1:9229/json/list')).json(); break; }
  catch (e) { if (Date.now() > deadline) throw new Error('no inspector on 127.0.0.1:9229: ' + e.message); await new Promise((r) => setTimeout(r, 50)); }
}
const ws = new WebSocket(list[0].webSocketDebuggerUrl);
await new Promise((resolve, reject) => {
  ws.onerror = (e) => reject(new Error('inspector socket: ' + (e.message ?? e.type)));
  ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
  ws.onmessage = (m) => { const r = JSON.parse(m.data); if (r.id === 1) { if (r.error) reject(new Error(JSON.stringify(r.error))); else resolve(); } };
});
ws.close();
console.log('collected');
`;

/** Opens `pid`'s inspector (SIGUSR1, once) and runs a full GC in it, from a client in namespace `ns`. */
export function collectGarbage(ns: string, pid: number): void {
  process.kill(pid, 'SIGUSR1');
  const out = execFileSync(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '--experimental-websocket',
      '--no-warnings',
      '--input-type=module',
      '-e',
      CLIENT,
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (!out.includes('collected')) throw new Error(`inspector GC in pid ${pid} (netns ${ns}) did not answer: ${out}`);
}
