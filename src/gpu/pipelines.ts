// pipeline cache: compiles WGSL asynchronously, once per (name, source), and deduplicates
// compiles already in flight. compile errors come back as ShaderCompileError with the kernel
// name, the WGSL line and an excerpt. ENGRAM_PRINT_WGSL=1 (or =<kernel name>) prints sources.

import { GpuValidationError, ShaderCompileError, excerpt } from './errors.ts';

export interface Pipeline {
  readonly name: string;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

const printWgsl = (name: string): boolean => {
  const v = typeof process !== 'undefined' ? process.env['ENGRAM_PRINT_WGSL'] : undefined;
  return v === '1' || v === name;
};

export class PipelineCache {
  // source -> (name, entry point) -> pipeline: a source string reused from wgslOnce() hashes once
  private readonly cache = new Map<string, Map<string, Promise<Pipeline>>>();
  compiled = 0;

  constructor(private readonly device: GPUDevice) {}

  get(name: string, wgsl: string, entryPoint = 'main'): Promise<Pipeline> {
    const key = `${name}\u0000${entryPoint}`;
    let named = this.cache.get(wgsl);
    if (!named) this.cache.set(wgsl, (named = new Map()));
    let p = named.get(key);
    if (!p) {
      p = this.compile(name, wgsl, entryPoint);
      named.set(key, p);
      // a failed compile is not cached: the next call reports it again
      const forget = named;
      p.catch(() => forget.delete(key));
    }
    return p;
  }

  get size(): number {
    let n = 0;
    for (const named of this.cache.values()) n += named.size;
    return n;
  }

  private async compile(name: string, wgsl: string, entryPoint: string): Promise<Pipeline> {
    if (printWgsl(name)) console.log(`// ---- ${name} ----\n${wgsl}`);
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ label: name, code: wgsl });
    const info = await module.getCompilationInfo();
    const scoped = await this.device.popErrorScope();
    const err = info.messages.find((m) => m.type === 'error');
    if (err) throw new ShaderCompileError(name, err.lineNum, err.linePos, err.message, excerpt(wgsl, err.lineNum, err.linePos));
    if (scoped) throw new GpuValidationError(`kernel '${name}': ${scoped.message}`);
    try {
      const pipeline = await this.device.createComputePipelineAsync({
        label: name,
        layout: 'auto',
        compute: { module, entryPoint },
      });
      this.compiled++;
      return { name, pipeline, layout: pipeline.getBindGroupLayout(0) };
    } catch (e) {
      throw new GpuValidationError(`kernel '${name}': pipeline creation failed: ${(e as Error).message}`, { cause: e });
    }
  }
}
