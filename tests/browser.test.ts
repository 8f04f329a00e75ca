// the kernels in a browser: tests/browser/checks.ts is bundled with esbuild, served on
// 127.0.0.1 (WebGPU needs a secure context), and run in headless Chromium through
// navigator.gpu (SwiftShader where there is no GPU). no Chromium is a loud failure.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env['ENGRAM_CHROMIUM'] ?? '/usr/bin/chromium';

test('kernels run and match the reference in headless Chromium (navigator.gpu)', { timeout: 600_000 }, async () => {
  assert.ok(
    existsSync(CHROMIUM),
    `no Chromium at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set ENGRAM_CHROMIUM to its path`,
  );
  const bundle = await build({
    entryPoints: [fileURLToPath(new URL('./browser/checks.ts', import.meta.url))],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    write: false,
    external: ['webgpu'], // Dawn's Node binding: never loaded where navigator.gpu exists
    logLevel: 'silent',
  });
  const js = bundle.outputFiles[0]!.text;
  const server = createServer((req, res) => {
    if (req.url === '/checks.js') {
      res.setHeader('content-type', 'text/javascript');
      res.end(js);
    } else {
      res.setHeader('content-type', 'text/html');
      res.end('<!doctype html><script type="module" src="/checks.js"></script>');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction(() => 'runChecks' in globalThis, null, { timeout: 60_000 });
    const out = await page.evaluate(() => (globalThis as unknown as { runChecks: () => Promise<{ adapter: string; results: string[] }> }).runChecks());
    console.log(`# browser WebGPU adapter: ${out.adapter}`);
    for (const r of out.results) console.log(`# ${r}`);
    assert.deepEqual(errors, []);
    const failed = out.results.filter((r) => !r.startsWith('ok '));
    assert.deepEqual(failed, [], failed.join('\n'));
    assert.ok(out.results.length >= 6);
  } finally {
    await browser.close();
    server.close();
  }
});
