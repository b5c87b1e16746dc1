// The protocol shared by the lab agents (proxy-agent.mjs, policy-agent.mjs; started by lab-process.ts startLabAgent):
// `{ id, op, args }` requests over the Node IPC channel, `{ id, ok, result | error }` replies, `{ id: 0 }` once
// ready, exit when the test process goes away. Also the ops every agent has: `ping` and `http` (one request).
import { request as httpRequest } from 'node:http';

const coreOps = {
  async ping() {
    return { pid: process.pid, uid: process.getuid() };
  },

  async http({ host, port, path = '/', method = 'GET', timeoutMs = 5000 }) {
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host, port, path, method, agent: false, timeout: timeoutMs }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => {
          body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode, body, headers: res.headers }));
      });
      req.on('timeout', () => req.destroy(new Error(`http ${host}:${port}${path} timed out`)));
      req.on('error', reject);
      req.end();
    });
  },
};

/** Serves `ops` (plus ping and http) over IPC; `errorInfo` turns a thrown error into the reply's plain `error` object. */
export function runAgent(ops, errorInfo) {
  const all = { ...coreOps, ...ops };
  process.on('message', async (message) => {
    const { id, op, args } = message;
    try {
      if (!all[op]) throw new Error(`unknown agent op ${op}`);
      const result = await all[op](args ?? {});
      process.send({ id, ok: true, result });
    } catch (error) {
      process.send({ id, ok: false, error: errorInfo(error) });
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ id: 0, ok: true, result: 'ready' });
}
