// Parsing /proc/net/tcp{,6} for sshd's listening sockets (the SSH ports detected in the namespace the rules go to).
import { describe, expect, it } from 'vitest';
import { parseListeningSockets } from '../../src/config/host-facts.js';

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 41300 1 0000000000000000 100 0 0 10 0
   2: 0100007F:8E2A 0100007F:3A98 01 00000000:00000000 00:00000000 00000000     0        0 41999 1 0000000000000000 20 4 30 10 -1
   3: 0A630001:0016 0A630002:C350 06 00000000:00000000 03:00000C3E 00000000     0        0 0 3 0000000000000000
`;

const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 52001 1 0000000000000000 100 0 0 10 0
`;

describe('parseListeningSockets', () => {
  it('maps the inode of each LISTEN socket to its local port and skips the header and other states', () => {
    expect([...parseListeningSockets(TCP)]).toEqual([
      ['41234', 2222],
      ['41300', 15000],
    ]);
  });

  it('reads IPv6 addresses the same way', () => {
    expect([...parseListeningSockets(TCP6)]).toEqual([['52001', 22]]);
  });

  it('gives nothing for an empty or truncated table', () => {
    expect(parseListeningSockets('').size).toBe(0);
    expect(parseListeningSockets('  sl  local_address\n   0: 00000000:0016 00000000:0000 0A\n').size).toBe(0);
  });
});
