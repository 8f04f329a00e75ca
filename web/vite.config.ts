// the demo's build: `npm run demo:build` (vite build --config web/vite.config.ts) writes a static
// site to .out/web: index.html, the page's script, the worker (an ES module: it loads chunks), and
// kitoken's WASM beside it. (.out/ is outside git and the linter, which would check the bundle.)
//
// what the browser never loads is kept out or stubbed:
//   webgpu, kitoken/node,  Dawn's Node binding, kitoken's Node build and Hugging Face's tokenizers
//   tokenizers             (training only): external, imported only where there is no navigator.gpu,
//                          under Node, or when training (gpu/adapter.ts, data/tokenizer.ts)
//   node:*                 Node built-ins that library modules the worker loads import but do not call
//                          in a browser (memory3/write.ts's node:crypto for modelFingerprint,
//                          io/crc32.ts's node:zlib, which falls back to its own CRC; io/checkpoint.ts in
//                          loadModel's lazy chunk): each becomes a module whose exports throw when
//                          called, and whose default export is an empty object (feature checks fail)

import { builtinModules } from 'node:module';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const STUB = '\0engram-node-stub:';

function nodeStubs(): Plugin {
  return {
    name: 'engram-node-stubs',
    enforce: 'pre',
    resolveId(id) {
      const name = id.startsWith('node:') ? id.slice(5) : id;
      if (id.startsWith('node:') || builtinModules.includes(id)) return STUB + name;
      return null;
    },
    async load(id) {
      if (!id.startsWith(STUB)) return null;
      const name = id.slice(STUB.length);
      const names = Object.keys((await import(`node:${name}`)) as object).filter((k) => k !== 'default' && /^[A-Za-z_$][\w$]*$/.test(k));
      return [
        `const stub = (f) => () => { throw new Error('node:${name} ' + f + '() is not available in a browser'); };`,
        ...names.map((n) => `export const ${n} = stub(${JSON.stringify(n)});`),
        'export default {};',
      ].join('\n');
    },
  };
}

const external = ['webgpu', 'kitoken/node', 'tokenizers'];

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  // relative asset URLs: the site works from any folder it is served at
  base: './',
  logLevel: 'warn',
  plugins: [nodeStubs()],
  build: {
    outDir: fileURLToPath(new URL('../.out/web', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    // the worker bundle (model, kernels) is large by design
    chunkSizeWarningLimit: 2048,
    rollupOptions: { external },
  },
  worker: {
    format: 'es',
    plugins: () => [nodeStubs()],
    rollupOptions: { external },
  },
});
