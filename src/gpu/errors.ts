// typed errors. every message says what went wrong and what to do about it.

export class EngramError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** No WebGPU adapter could be found or created. */
export class NoAdapterError extends EngramError {}

/** A WGSL module failed to compile; names the kernel and the offending line. */
export class ShaderCompileError extends EngramError {
  constructor(
    readonly kernel: string,
    readonly line: number,
    readonly column: number,
    readonly detail: string,
    readonly excerpt: string,
  ) {
    super(
      `WGSL compile error in kernel '${kernel}' at line ${line}:${column}: ${detail}\n${excerpt}\n` +
        `(set ENGRAM_PRINT_WGSL=1 to print the whole source)`,
    );
  }
}

/** The device ran out of memory while allocating. */
export class OutOfMemoryError extends EngramError {}

/** The device was lost (driver reset, OOM kill, or destroy()); everything on it is gone. */
export class DeviceLostError extends EngramError {}

/** WebGPU reported a validation error: always a bug in engram or a misuse of its API. */
export class GpuValidationError extends EngramError {}

/** An op was called with tensors of the wrong shape or dtype. */
export class ShapeError extends EngramError {}

/** A tensor or binding exceeds a device limit. */
export class LimitError extends EngramError {}

/** Throws a ShapeError naming the op when `cond` is false. */
export function check(cond: boolean, op: string, what: () => string): asserts cond {
  if (!cond) throw new ShapeError(`${op}: ${what()}`);
}

/** Renders a few lines of `source` around 1-based `line`, with line numbers and a caret. */
export function excerpt(source: string, line: number, column: number, context = 2): string {
  const lines = source.split('\n');
  const out: string[] = [];
  for (let i = Math.max(1, line - context); i <= Math.min(lines.length, line + context); i++) {
    out.push(`${String(i).padStart(5)} | ${lines[i - 1] ?? ''}`);
    if (i === line) out.push(`${' '.repeat(5)} | ${' '.repeat(Math.max(0, column - 1))}^`);
  }
  return out.join('\n');
}
