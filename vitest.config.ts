import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Forks, not threads: integration tests spawn processes, change uid of children and load the native addon.
    pool: 'forks',
    // Two files at a time, also on 2 cores (vitest would run one: cores - 1). Most integration time is spent waiting
    // on other processes (iptables-restore, the proxy, a container booting). Safe because every file owns its
    // namespaces (distinct names and prefixes), state directories and temp dirs, binds fixed ports only inside its
    // own namespaces (a shared xtables lock file only serializes, with --wait), and the nspawn rootfs is built once,
    // under a lock (scripts/nspawn-rootfs.sh).
    maxWorkers: 2,
    // Once per run, before any file: fails in one line naming the package when a tool the tests use is missing.
    globalSetup: ['test/helpers/prerequisites.mjs'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
    projects: [
      // Unit tests share their two worker processes (no per-file fork and re-import: a third of the time). They
      // change no process-wide state (no vi.mock, env or cwd changes); integration files keep a process each.
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'], isolate: false } },
      { extends: true, test: { name: 'integration', include: ['test/integration/**/*.test.ts'] } },
    ],
  },
});
