/**
 * A progress bar on stderr: loss, accuracy, images/s and ETA. On a terminal
 * it redraws one line (at most every 100 ms), fitted to the terminal's width
 * (the bar shrinks first, then the line is cut: a line longer than the
 * terminal would wrap and every redraw would add a line); otherwise it prints
 * a line at every 25 % of the epoch, so logs stay readable.
 */
export interface ProgressStats {
  loss: number;
  acc: number;
  imgPerSec: number;
}

export class ProgressBar {
  private lastDraw = 0;
  private lastQuarter = -1;
  private readonly tty: boolean;
  private readonly start = Date.now();
  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly enabled = true,
  ) {
    this.tty = Boolean(stream.isTTY);
  }

  /** The terminal's width, read at every redraw (it can change), or Infinity when unknown. */
  private columns(): number {
    const c = this.tty ? this.stream.columns : undefined;
    return typeof c === 'number' && c > 0 ? c : Infinity;
  }

  update(done: number, s: ProgressStats, force = false): void {
    if (!this.enabled) return;
    const now = Date.now();
    const frac = this.total ? Math.min(1, done / this.total) : 1;
    if (this.tty) {
      if (!force && now - this.lastDraw < 100 && done < this.total) return;
      this.lastDraw = now;
      this.stream.write(`\r\x1b[K${this.fitted(done, frac, s, now, this.columns() - 1)}`);
    } else {
      const q = Math.floor(frac * 4);
      if (q === this.lastQuarter && !force) return;
      this.lastQuarter = q;
      this.stream.write(`${this.line(done, frac, s, now, 24)}\n`);
    }
  }

  end(): void {
    if (this.enabled && this.tty) this.stream.write('\n');
  }

  /** The line in at most `max` characters: the bar from 24 down to 8 wide, then cut. */
  private fitted(done: number, frac: number, s: ProgressStats, now: number, max: number): string {
    const full = this.line(done, frac, s, now, 24);
    if (full.length <= max) return full;
    const narrower = this.line(done, frac, s, now, Math.max(8, 24 - (full.length - max)));
    return narrower.length <= max ? narrower : narrower.slice(0, Math.max(0, max));
  }

  private line(done: number, frac: number, s: ProgressStats, now: number, width: number): string {
    const filled = Math.round(frac * width);
    const bar = '='.repeat(Math.max(0, filled - 1)) + (filled > 0 ? (frac < 1 ? '>' : '=') : '') + ' '.repeat(width - filled);
    const elapsed = (now - this.start) / 1000;
    const eta = frac > 0 ? (elapsed / frac) * (1 - frac) : NaN;
    return `${this.label} [${bar}] ${done}/${this.total} loss ${fmt(s.loss, 4)} acc ${fmt(s.acc * 100, 1)}% ${fmt(s.imgPerSec, 1)} img/s ETA ${clock(eta)}`;
  }
}

function fmt(v: number, d: number): string {
  return Number.isFinite(v) ? v.toFixed(d) : '-';
}

export function clock(sec: number): string {
  if (!Number.isFinite(sec)) return '--:--';
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
}
