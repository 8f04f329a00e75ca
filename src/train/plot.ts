// the loss curve of a training run as a PNG: training loss per step and validation loss at the
// evaluation steps, two coloured series with a legend, x = step, y = loss (linear).
//
// chain: a vega-lite spec -> vega-lite compile() -> a vega View with renderer 'none' (headless,
// no canvas or DOM) -> toSVG() -> resvg (Rust, native binary) rasterises the SVG to a PNG. the
// spec's autosize 'fit' with 'padding' makes the whole picture, axes and legend included,
// exactly width x height, so the PNG has the requested size. text is drawn with the system's
// fonts (resvg loads them; on a machine without any fonts the labels are missing, the lines not).

import { rename, writeFile } from 'node:fs/promises';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { EngramError } from '../gpu/errors.ts';

export interface CurvePoint {
  step: number;
  loss?: number;
  valLoss?: number;
}

export interface CurveOptions {
  title?: string;
  width?: number;
  height?: number;
}

/** the names in the legend, and their colours (vega's category10 blue and orange) */
const SERIES = [
  { name: 'training loss', key: 'loss', color: '#1f77b4' },
  { name: 'validation loss', key: 'valLoss', color: '#ff7f0e' },
] as const;

interface Row {
  step: number;
  loss: number;
  series: string;
}

/** the points in long form, one row per (step, series); non-finite losses (a diverged run) are
 *  dropped, as JSON and the y scale cannot hold them */
function rows(points: readonly CurvePoint[]): Row[] {
  const out: Row[] = [];
  for (const s of SERIES) {
    for (const p of points) {
      const v = p[s.key];
      if (v !== undefined && Number.isFinite(v) && Number.isFinite(p.step)) out.push({ step: p.step, loss: v, series: s.name });
    }
  }
  return out;
}

function checkSize(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 50 || v > 10000) throw new EngramError(`loss curve: ${name} ${v} should be an integer number of pixels in 50..10000`);
  return v;
}

/** the chart's size, padding, background and font (shared by every chart here) */
function frame(opts: { width?: number; height?: number }) {
  return {
    width: checkSize('width', opts.width ?? 800),
    height: checkSize('height', opts.height ?? 450),
    autosize: { type: 'fit', contains: 'padding' },
    padding: 8,
    background: 'white',
    // vega's default 'sans-serif' resolves in resvg to Arial or else the first system font (a
    // serif one on many Linux machines): name the usual sans-serif fonts first. a machine with
    // no fonts at all gets a chart without text (resvg draws none)
    config: { font: 'Helvetica Neue, Helvetica, Arial, DejaVu Sans, Liberation Sans, sans-serif' },
  } as const;
}

/** the chart as SVG text, exactly width x height */
export async function lossCurveSvg(points: readonly CurvePoint[], opts: CurveOptions = {}): Promise<string> {
  const values = rows(points);
  if (values.length === 0) throw new EngramError(`loss curve: none of the ${points.length} points has a finite loss or valLoss; nothing to draw`);
  // only the series present get a legend entry, each keeping its colour
  const present = SERIES.filter((s) => values.some((r) => r.series === s.name));
  const color = {
    field: 'series',
    type: 'nominal',
    title: null,
    scale: { domain: present.map((s) => s.name), range: present.map((s) => s.color) },
    legend: { orient: 'top-right' },
  } as const;
  const x = { field: 'step', type: 'quantitative', title: 'step', scale: { nice: false } } as const;
  const y = { field: 'loss', type: 'quantitative', title: 'loss', scale: { zero: false } } as const;
  const spec: TopLevelSpec = {
    ...frame(opts),
    title: opts.title ?? 'loss',
    data: { values },
    layer: [
      { mark: { type: 'line', strokeWidth: 1.5 }, encoding: { x, y, color } },
      // validation points are sparse (every evalEvery steps): mark each so a lone one shows
      { transform: [{ filter: { field: 'series', equal: SERIES[1].name } }], mark: { type: 'point', filled: true, size: 30 }, encoding: { x, y, color } },
    ],
  };
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** the chart as PNG bytes, width x height pixels */
export async function lossCurvePng(points: readonly CurvePoint[], opts: CurveOptions = {}): Promise<Uint8Array> {
  const svg = await lossCurveSvg(points, opts);
  const png = new Resvg(svg, { fitTo: { mode: 'original' } }).render().asPng();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

/** writes the PNG to `path` through `path.tmp` and a rename, so a reader (or a run killed
 *  half-way) never sees a half-written file */
export async function writeLossCurve(path: string, points: readonly CurvePoint[], opts: CurveOptions = {}): Promise<void> {
  const png = await lossCurvePng(points, opts);
  await writeFile(`${path}.tmp`, png);
  await rename(`${path}.tmp`, path);
}

export interface ScatterPoint {
  x: number;
  y: number;
  label: string;
}

export interface ScatterOptions {
  title?: string;
  xTitle?: string;
  yTitle?: string;
  /** the y axis' range (default: from 0 to the data's maximum) and its d3 number format (e.g. '.0%') */
  yDomain?: [number, number];
  yFormat?: string;
  /** horizontal reference lines across the plot (e.g. a baseline), each with its label at the right end */
  rules?: readonly { y: number; label: string }[];
  width?: number;
  height?: number;
}

/** label offsets in pixels from their points, taken in turn in order of x: above, below, further above */
const LABEL_DY = [-9, 14, -23] as const;

/** labelled points as a PNG, width x height pixels: x on a log scale (e.g. training FLOPs; SI
 *  tick labels), y linear from 0; labels take turns above and below their points (neighbours
 *  on a log axis crowd); points whose x is not positive and finite, or whose y is not finite, are
 *  dropped */
export async function scatterPng(points: readonly ScatterPoint[], opts: ScatterOptions = {}): Promise<Uint8Array> {
  const kept = points.filter((p) => Number.isFinite(p.x) && p.x > 0 && Number.isFinite(p.y));
  const values = [...kept].sort((a, b) => a.x - b.x).map((p, i) => ({ x: p.x, y: p.y, label: p.label, level: i % LABEL_DY.length }));
  if (values.length === 0) throw new EngramError(`scatter: none of the ${points.length} points has a positive finite x and a finite y; nothing to draw`);
  const x = { field: 'x', type: 'quantitative', title: opts.xTitle ?? 'x', scale: { type: 'log' }, axis: { format: '~s' } } as const;
  const y = {
    field: 'y',
    type: 'quantitative',
    title: opts.yTitle ?? 'y',
    scale: opts.yDomain ? { domain: opts.yDomain } : { zero: true },
    ...(opts.yFormat ? { axis: { format: opts.yFormat } } : {}),
  } as const;
  const text = { field: 'label', type: 'nominal' } as const;
  const rules = (opts.rules ?? []).filter((r) => Number.isFinite(r.y));
  const ruleY = { field: 'y', type: 'quantitative' } as const;
  const ruleLayers = rules.length
    ? [
        { data: { values: rules }, mark: { type: 'rule' as const, strokeDash: [4, 4], color: '#888' }, encoding: { y: ruleY } },
        { data: { values: rules }, mark: { type: 'text' as const, align: 'right' as const, x: 'width' as const, dy: -6, fontSize: 11, color: '#555' }, encoding: { y: ruleY, text } },
      ]
    : [];
  const spec: TopLevelSpec = {
    ...frame(opts),
    title: opts.title ?? '',
    data: { values },
    layer: [
      { mark: { type: 'point', filled: true, size: 60, color: SERIES[0].color }, encoding: { x, y } },
      ...LABEL_DY.map((dy, level) => ({ transform: [{ filter: `datum.level == ${level}` }], mark: { type: 'text' as const, align: 'left' as const, dx: 6, dy, fontSize: 12 }, encoding: { x, y, text } })),
      ...ruleLayers,
    ],
  };
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  let svg: string;
  try {
    svg = await view.toSVG();
  } finally {
    view.finalize();
  }
  const png = new Resvg(svg, { fitTo: { mode: 'original' } }).render().asPng();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}
