// `engram train`'s progress display: step/total, loss, lr factor, tokens/s and ETA, plus the
// last validation loss and the memory layers' slot usage once a validation has run.
//
// on a terminal: a cli-progress bar redrawn in place (cut at the terminal's width), with
// validation results and checkpoint saves printed as lines above it (message()).
// elsewhere (CI logs, a redirect to a file): plain lines, one per `every` steps or per
// `intervalMs`, whichever comes first, plus every validation and save, so a log stays readable
// and greppable. cli-progress itself is not used there: by default it prints nothing without a
// TTY, and with noTTYOutput it prints the bar (block characters and all) on a 2 s timer
// whether or not anything changed, and no events.

import { Presets, SingleBar } from 'cli-progress';
import type { LogLine } from '../train/loop.ts';

/** what TrainProgress writes to: process.stdout, or a fake in tests */
export type ProgressStream = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

export interface ProgressOptions {
  /** the last step */
  total: number;
  /** the step the run starts after (0, or the step a resumed run continues from) */
  start: number;
  /** default process.stdout: the progress is the command's output, so `> log` captures it */
  stream?: ProgressStream;
  /** false forces plain lines on a terminal; a bar needs a stream that is a TTY */
  tty?: boolean;
  /** plain lines: at least one per this many steps (default: total / 100) */
  every?: number;
  /** plain lines: at least one per this many milliseconds (default 5000) */
  intervalMs?: number;
  /** the clock, for tests */
  now?: () => number;
}

/** seconds as 42s, 3m05s or 2h07m */
export function formatEta(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const t = Math.round(s);
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s`;
  return `${Math.floor(t / 3600)}h${String(Math.floor(t / 60) % 60).padStart(2, '0')}m`;
}

/** tokens per second as 850, 12.3k or 1.25M */
export function formatRate(r: number): string {
  if (!Number.isFinite(r)) return '?';
  if (r >= 1e6) return `${(r / 1e6).toFixed(2)}M`;
  if (r >= 1e3) return `${(r / 1e3).toFixed(1)}k`;
  return Math.round(r).toString();
}

const percent = (x: number) => `${(100 * x).toFixed(1)}%`;

export class TrainProgress {
  private readonly stream: ProgressStream;
  private readonly total: number;
  private readonly every: number;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly bar: SingleBar | null;
  /** the latest validation loss and memory usage, shown on every later line */
  private valLoss: number | undefined;
  private usage: number[] = [];
  /** plain mode: the last line printed, and the last update (printed or not) */
  private printedStep = -1;
  private printedAt = -Infinity;
  private last: LogLine | undefined;
  private stopped = false;

  constructor(o: ProgressOptions) {
    this.stream = o.stream ?? process.stdout;
    this.total = o.total;
    this.every = Math.max(1, Math.round(o.every ?? o.total / 100));
    this.intervalMs = o.intervalMs ?? 5000;
    this.now = o.now ?? (() => Date.now());
    const tty = (o.tty ?? true) && this.stream.isTTY === true;
    this.bar = tty ? this.startBar(o.start) : null;
  }

  private startBar(start: number): SingleBar {
    const bar = new SingleBar(
      {
        stream: this.stream,
        format: '{bar} {value}/{total} | {stats}',
        barsize: 16,
        fps: 5,
        // message() clears the bar's line; forceRedraw makes render() draw it again even
        // though its text did not change
        forceRedraw: true,
        // true keeps the terminal's own wrapping (cli-progress truncates to the width instead
        // of switching wrapping off, which a crash would leave switched off)
        linewrap: true,
        // no gracefulExit: the first Ctrl-C lets the run save a checkpoint, the bar goes on
        gracefulExit: false,
      },
      Presets.shades_classic,
    );
    bar.start(this.total, start, { stats: 'starting' });
    return bar;
  }

  /** one training step's numbers */
  update(l: LogLine): void {
    if (this.stopped) return;
    if (l.valLoss !== undefined) this.valLoss = l.valLoss;
    if (l.memory?.length) this.usage = l.memory.map((m) => m.usage);
    this.last = l;
    if (this.bar) this.bar.update(l.step, { stats: this.stats(l, false) });
    else if (this.due(l)) this.printLine(l);
    // events last, so in a log they follow the step they belong to
    if (l.valLoss !== undefined) this.message(this.validationLine(l, l.valLoss));
    if (l.saved !== undefined) this.message(`${this.stepOf(l)} saved checkpoint to ${l.saved}`);
  }

  /** prints a line of its own: above the bar on a terminal, between the plain lines elsewhere */
  message(text: string): void {
    if (this.bar && !this.stopped) {
      // clear the bar's line, print, and draw the bar again below
      this.stream.write(`\r\x1b[2K${text}\n`);
      this.bar.render();
    } else {
      this.stream.write(`${text}\n`);
    }
  }

  /** ends the display: the bar stays on screen, or the final step gets its plain line */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.bar) {
      // SingleBar.stop() restores the cursor position it saved at start(), which lines
      // printed since have moved: save it again at the start of the bar's current line
      this.stream.write('\r\x1b7');
      this.bar.stop();
    } else if (this.last && this.printedStep !== this.last.step) {
      this.printLine(this.last);
    }
  }

  private due(l: LogLine): boolean {
    return this.printedStep < 0 || l.step - this.printedStep >= this.every || this.now() - this.printedAt >= this.intervalMs || l.step >= l.steps;
  }

  private printLine(l: LogLine): void {
    this.stream.write(`${this.stepOf(l)} ${this.stats(l)}\n`);
    this.printedStep = l.step;
    this.printedAt = this.now();
  }

  private stepOf(l: LogLine): string {
    return `step ${String(l.step).padStart(String(l.steps).length)}/${l.steps}`;
  }

  /** the numbers after step/total; the bar leaves out the lr factor to fit 80 columns */
  private stats(l: LogLine, lr = true): string {
    const parts = [`loss ${l.loss.toFixed(3)}`, ...(lr ? [`lr x${l.lrFactor.toFixed(2)}`] : []), `${formatRate(l.tokensPerSecond)} tok/s`, `eta ${formatEta(l.etaSeconds)}`];
    if (this.valLoss !== undefined) parts.push(`val ${this.valLoss.toFixed(3)}`);
    if (this.usage.length) parts.push(`mem ${this.usage.map(percent).join(' ')}`);
    return parts.join(' | ');
  }

  private validationLine(l: LogLine, valLoss: number): string {
    const mem = l.memory?.length
      ? ` | memory usage ${l.memory.map((m) => percent(m.usage)).join(' ')} KL ${l.memory.map((m) => m.kl.toFixed(2)).join(' ')}`
      : '';
    return `${this.stepOf(l)} validation loss ${valLoss.toFixed(3)}${mem}`;
  }
}
