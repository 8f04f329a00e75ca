// serves the built demo (npm run demo:build) with a checkpoint and a bank export, on 127.0.0.1
// (WebGPU needs a secure context: localhost is one). the page's defaults find them:
//   /                 the site (index.html, assets/)
//   /model/<file>     the checkpoint folder's files (config.json, model.safetensors, tokenizer.json)
//   /bank.engram      the bank export (`engram memory export`, memory3/export.ts)
// node --import tsx web/serve.ts --model <checkpoint> --bank <export> [--site .out/web] [--port 8080]
// tests/demo_browser.test.ts serves its fixtures with serveDemo.

import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

/** where the built site is by default (vite.config.ts outDir) */
export const SITE = fileURLToPath(new URL('../.out/web', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

export interface DemoFiles {
  /** the built site's folder (default SITE) */
  site?: string;
  /** the checkpoint folder */
  model: string;
  /** the bank export file */
  bank: string;
}

/** a file under `root` for a URL path, or null when the path leaves it (or does not decode) */
function under(root: string, path: string): string | null {
  let name: string;
  try {
    name = decodeURIComponent(path);
  } catch {
    return null; // malformed escapes
  }
  const p = normalize(join(root, name));
  return p === root || p.startsWith(root.endsWith(sep) ? root : root + sep) ? p : null;
}

/** Serves the demo on 127.0.0.1 (`port` 0: any free one); returns its address and a close(). */
export async function serveDemo(f: DemoFiles, o: { port?: number } = {}): Promise<{ url: string; close: () => Promise<void> }> {
  const site = resolve(f.site ?? SITE);
  const model = resolve(f.model);
  const bank = resolve(f.bank);
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const file = path === '/bank.engram' ? bank : path.startsWith('/model/') ? under(model, path.slice('/model/'.length)) : under(site, path === '/' ? 'index.html' : path);
    const fail = (code: number, text: string) => {
      res.statusCode = code;
      res.setHeader('content-type', 'text/plain');
      res.end(text);
    };
    if (!file) return fail(403, 'not a path in the served folders');
    stat(file).then(
      (st) => {
        if (!st.isFile()) return fail(404, `${path}: not a file`);
        res.setHeader('content-type', TYPES[extname(file)] ?? 'application/octet-stream');
        res.setHeader('content-length', st.size);
        res.setHeader('cache-control', 'no-store');
        createReadStream(file).pipe(res);
      },
      () => fail(404, `${path}: not found`),
    );
  });
  await new Promise<void>((done, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, '127.0.0.1', done);
  });
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise<void>((done) => server.close(() => done())) };
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const { values } = parseArgs({ options: { model: { type: 'string' }, bank: { type: 'string' }, site: { type: 'string' }, port: { type: 'string', default: '8080' } } });
  if (!values.model || !values.bank) {
    console.error('usage: node --import tsx web/serve.ts --model <checkpoint folder> --bank <bank export> [--site .out/web] [--port 8080]');
    process.exit(2);
  }
  const { url } = await serveDemo({ model: values.model, bank: values.bank, ...(values.site ? { site: values.site } : {}) }, { port: Number(values.port) });
  console.log(`the demo is at ${url} (open it in a browser with WebGPU; Ctrl-C stops)`);
}
