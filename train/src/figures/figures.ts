/**
 * The paper's two figures, computed from the kernels' margin functions
 * (./margin-math) and drawn with vega-lite (./plots):
 *
 *   Figure 1 (margin-function.svg): the adaptive margin f(θ) = φ(θ) − θ for a
 *     few (m1, m2), with f(90°) and f(180°) marked, and the margined angle
 *     φ(θ) = θ + f(θ) beside ArcFace's θ + m.
 *   Figure 2 (decision-boundaries.svg): two classes, the plane of the angles
 *     (θ1, θ2) of an embedding to their centres. Class 1's margined logit
 *     beats class 2's plain logit where z_y(cos θ1) ≥ z_j(cos θ2), i.e. above
 *     the curve θ2 = b(θ1); class 2's where θ2 ≤ a(θ1). Between the two
 *     curves neither class has its margin: the margin region. Normalised
 *     softmax has a = b = θ1.
 */
import * as path from 'path';
import type { Margin } from 'margin-softmax';
import { makeMargin, marginLabel } from '../run/config';
import { marginedAngles, otherLogits, targetLogits } from './margin-math';
import { writeSvgs, type VlSpec } from './plots';

const DEG = Math.PI / 180;

/** (m1, m2) of Figure 1: the paper's choice, two corners of its grid, and one exaggerated m1 to show the shape. */
export const FIGURE1_SETTINGS: { m1: number; m2: number }[] = [
  { m1: 0.03, m2: 0.5 },
  { m1: 0.01, m2: 0.55 },
  { m1: 0.05, m2: 0.45 },
  { m1: 0.2, m2: 0.25 },
];

/** The losses of Figure 2 (its panels, in order), with compare's parameters (ElasticFace-Arc at its mean margin). */
export const FIGURE2_LOSSES: Margin[] = (['softmax', 'arcface', 'elastic-arc', 'cosface', 'cvm', 'adaptive'] as const).map((k) => makeMargin(k));

function degrees(step: number): number[] {
  const out: number[] = [];
  for (let k = 0; k * step <= 180 + 1e-9; k++) out.push(k * step);
  return out;
}

export interface MarginCurveRow {
  setting: string;
  m1: number;
  m2: number;
  /** θ in degrees. */
  theta: number;
  /** f(θ) = φ(θ) − θ, radians. */
  f: number;
  /** φ(θ) in degrees. */
  phi: number;
}

export interface Figure1Data {
  curves: MarginCurveRow[];
  /** The computed f at 90° and 180° of each setting, with what the formula says they are. */
  marks: { setting: string; theta: number; f: number; expected: number; label: string }[];
  /** φ(θ) in degrees of ArcFace with m = 0.5 (the comparison curve). */
  arcface: { theta: number; phi: number }[];
}

const settingLabel = (s: { m1: number; m2: number }) => `m1 = ${s.m1}, m2 = ${s.m2}`;

export function figure1Data(settings = FIGURE1_SETTINGS, stepDeg = 1): Figure1Data {
  const thetaDeg = degrees(stepDeg);
  const thetas = thetaDeg.map((t) => t * DEG);
  const curves: MarginCurveRow[] = [];
  const marks: Figure1Data['marks'] = [];
  for (const s of settings) {
    const phi = marginedAngles({ kind: 'adaptive', m1: s.m1, m2: s.m2 }, thetas);
    const setting = settingLabel(s);
    thetaDeg.forEach((t, i) => curves.push({ setting, m1: s.m1, m2: s.m2, theta: t, f: phi[i] - thetas[i], phi: phi[i] / DEG }));
    const at = (deg: number) => curves.find((r) => r.setting === setting && r.theta === deg)!.f;
    marks.push({ setting, theta: 90, f: at(90), expected: s.m1 + s.m2, label: `f(90°) = m1 + m2 = ${+(s.m1 + s.m2).toFixed(4)}` });
    marks.push({ setting, theta: 180, f: at(180), expected: s.m2, label: `f(180°) = m2 = ${s.m2}` });
  }
  const arc = marginedAngles({ kind: 'arcface', m: 0.5 }, thetas);
  return { curves, marks, arcface: thetaDeg.map((t, i) => ({ theta: t, phi: arc[i] / DEG })) };
}

export function figure1Spec(d: Figure1Data): VlSpec {
  const color = { field: 'setting', type: 'nominal', title: 'adaptive margin', sort: null, legend: { orient: 'bottom', columns: 2, labelLimit: 300 } };
  // The right panel: the paper's setting and the exaggerated one beside ArcFace (more lines would overlap).
  const shown = [settingLabel(FIGURE1_SETTINGS[0]), settingLabel(FIGURE1_SETTINGS[FIGURE1_SETTINGS.length - 1])];
  const phiRows = [
    ...d.curves.filter((r) => shown.includes(r.setting)).map((r) => ({ theta: r.theta, phi: r.phi, curve: `adaptive, ${r.setting}` })),
    ...d.arcface.map((r) => ({ theta: r.theta, phi: r.phi, curve: 'ArcFace, θ + m (m = 0.5)' })),
    ...d.arcface.map((r) => ({ theta: r.theta, phi: r.theta, curve: 'no margin, θ' })),
  ];
  const x = (title: string) => ({ field: 'theta', type: 'quantitative', title, scale: { domain: [0, 180] }, axis: { values: [0, 30, 60, 90, 120, 150, 180] } });
  const markText = (theta: number, align: string) => ({
    data: { values: d.marks.filter((m) => m.theta === theta) },
    mark: { type: 'text', align, dx: align === 'left' ? 6 : -6, dy: -7, fontSize: 10 },
    encoding: { x: { field: 'theta', type: 'quantitative' }, y: { field: 'f', type: 'quantitative' }, text: { field: 'f', format: '.3f' }, color },
  });
  return {
    title: {
      text: 'Figure 1. The adaptive angular margin f(θ) = m1·(1 − cos²θ) + m2, as the kernels compute it',
      subtitle: 'marked: f(90°) = m1 + m2 and f(180°) = m2 (values computed)',
      anchor: 'start',
    },
    hconcat: [
      {
        width: 380,
        height: 280,
        title: 'margin f(θ) added to the target angle',
        layer: [
          { data: { values: d.curves }, mark: { type: 'line' }, encoding: { x: x('θ, angle to the class centre (degrees)'), y: { field: 'f', type: 'quantitative', title: 'f(θ) (radians)', scale: { zero: false } }, color } },
          {
            data: { values: d.marks },
            mark: { type: 'point', filled: true, size: 60 },
            encoding: { x: { field: 'theta', type: 'quantitative' }, y: { field: 'f', type: 'quantitative' }, color, tooltip: { field: 'label' } },
          },
          markText(90, 'left'),
          markText(180, 'right'),
        ],
      },
      {
        width: 300,
        height: 280,
        title: 'margined angle θ + f(θ) against ArcFace',
        layer: [
          {
            data: { values: phiRows },
            mark: { type: 'line' },
            encoding: {
              x: x('θ (degrees)'),
              y: { field: 'phi', type: 'quantitative', title: 'margined angle (degrees)', scale: { domain: [0, 220] } },
              color: { field: 'curve', type: 'nominal', title: null, sort: null, scale: { range: ['#4c78a8', '#72b7b2', '#e45756', '#999999'] }, legend: { orient: 'bottom', columns: 1, labelLimit: 300 } },
              strokeDash: { condition: { test: "datum.curve === 'no margin, θ'", value: [4, 3] }, value: [1, 0] },
            },
          },
          {
            data: { values: [{ y: 180, label: 'π (training uses the monotonic fallback past it)' }] },
            layer: [
              { mark: { type: 'rule', strokeDash: [2, 2], color: '#888' }, encoding: { y: { field: 'y', type: 'quantitative' } } },
              { mark: { type: 'text', align: 'left', x: 4, dy: -6, fontSize: 9, color: '#555' }, encoding: { y: { field: 'y', type: 'quantitative' }, text: { field: 'label' } } },
            ],
          },
        ],
      },
    ],
    resolve: { scale: { color: 'independent' }, legend: { color: 'independent' } },
  };
}

// ---- Figure 2 --------------------------------------------------------------------------

/**
 * The angle (degrees, in [0, 180]) where a non-increasing table of values
 * over `thetaDeg` reaches v: 0 when v is above the whole table, 180 below it;
 * linear between the two table points around it (across a jump, the jump).
 */
export function crossing(thetaDeg: number[], table: Float64Array, v: number): number {
  const n = table.length;
  if (v >= table[0]) return thetaDeg[0];
  if (v < table[n - 1]) return thetaDeg[n - 1];
  let lo = 0;
  let hi = n - 1; // table[lo] > v ≥ table[hi]
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (table[mid] > v) lo = mid;
    else hi = mid;
  }
  const t = (table[lo] - v) / (table[lo] - table[hi]);
  return thetaDeg[lo] + t * (thetaDeg[hi] - thetaDeg[lo]);
}

export interface BoundaryRow {
  loss: string;
  /** θ1 in degrees. */
  theta1: number;
  /** Class 2 has its margin for θ2 ≤ a (degrees). */
  a: number;
  /** Class 1 has its margin for θ2 ≥ b (degrees). */
  b: number;
}

/** The two decision boundaries of each loss over θ1 ∈ [0°, 180°] (step stepDeg), from tables of the logits 0.05° apart. */
export function figure2Data(losses = FIGURE2_LOSSES, stepDeg = 1): BoundaryRow[] {
  const fine = degrees(0.05);
  const cos = fine.map((t) => Math.cos(t * DEG));
  const rows: BoundaryRow[] = [];
  for (const m of losses) {
    const zt = targetLogits(m, cos).z;
    const zo = otherLogits(m, cos);
    const label = m.kind === 'elastic-arc' ? `elastic-arc(mean m=${m.m})` : marginLabel(m);
    for (const t1 of degrees(stepDeg)) {
      const k = Math.round(t1 / 0.05);
      rows.push({ loss: label, theta1: t1, a: crossing(fine, zt, zo[k]), b: crossing(fine, zo, zt[k]) });
    }
  }
  return rows;
}

export function figure2Spec(rows: BoundaryRow[]): VlSpec {
  const lines = rows.flatMap((r) => [
    { loss: r.loss, theta1: r.theta1, theta2: r.b, boundary: 'class 1 has its margin above' },
    { loss: r.loss, theta1: r.theta1, theta2: r.a, boundary: 'class 2 has its margin below' },
  ]);
  const axes = {
    x: { field: 'theta1', type: 'quantitative', title: 'θ1 (degrees)', scale: { domain: [0, 180] }, axis: { values: [0, 45, 90, 135, 180] } },
  };
  return {
    title: {
      text: 'Figure 2. Two classes: decision boundaries and the margin region (shaded) in the (θ1, θ2) plane',
      subtitle: 'from the kernels’ logits; θ1, θ2: angles of an embedding to the two class centres; ElasticFace-Arc at its mean margin m',
      anchor: 'start',
    },
    data: { values: [...rows.map((r) => ({ ...r, kind: 'region' })), ...lines.map((l) => ({ ...l, kind: 'line' }))] },
    facet: { field: 'loss', type: 'nominal', title: null, sort: rows.map((r) => r.loss).filter((l, i, all) => all.indexOf(l) === i), header: { labelFontSize: 12 } },
    columns: 3,
    spec: {
      width: 200,
      height: 200,
      layer: [
        {
          transform: [{ filter: "datum.kind === 'region'" }],
          mark: { type: 'area', opacity: 0.3, color: '#e6a23c' },
          encoding: { ...axes, y: { field: 'a', type: 'quantitative', title: 'θ2 (degrees)', scale: { domain: [0, 180] }, axis: { values: [0, 45, 90, 135, 180] } }, y2: { field: 'b' } },
        },
        {
          transform: [{ filter: "datum.kind === 'line'" }],
          mark: { type: 'line', strokeWidth: 1.5 },
          encoding: {
            ...axes,
            y: { field: 'theta2', type: 'quantitative' },
            color: { field: 'boundary', type: 'nominal', title: null, scale: { range: ['#1f77b4', '#d62728'] }, legend: { orient: 'bottom', labelLimit: 400 } },
          },
        },
      ],
    },
  };
}

/** Writes both figures into `out`; returns the files. */
export function writeFigures(out: string): string[] {
  return writeSvgs([
    { file: path.join(out, 'margin-function.svg'), spec: figure1Spec(figure1Data()) },
    { file: path.join(out, 'decision-boundaries.svg'), spec: figure2Spec(figure2Data()) },
  ]);
}
