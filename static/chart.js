// A small balance-over-time line chart drawn on a canvas: no library needed for
// one line, two axes and a few thousand points.
"use strict";

// The canvas sized for the screen's pixel ratio and cleared: [context, width, height].
function prepareCanvas(c) {
  const ratio = window.devicePixelRatio || 1;
  const width = c.clientWidth, height = c.clientHeight;
  if (c.width !== width * ratio) { c.width = width * ratio; c.height = height * ratio; }
  const g = c.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#667";
  return [g, width, height];
}

class BalanceChart {
  constructor(canvas, pointsMax) {
    this.canvas = canvas;
    this.points = []; // [time_ms, balance_micros], in time order
    this.pointsMax = pointsMax || 5000;
    this.queued = false;
  }

  add(timeMs, balanceMicros) {
    const last = this.points[this.points.length - 1];
    if (last && timeMs < last[0]) timeMs = last[0];
    this.points.push([timeMs, balanceMicros]);
    if (this.points.length > this.pointsMax) this.points.splice(0, this.points.length - this.pointsMax);
    this.schedule();
  }

  // Older history (e.g. from the activity list) goes in front of live points.
  prepend(pairs) {
    const first = this.points.length ? this.points[0][0] : Infinity;
    const older = pairs.filter((p) => p[0] < first).sort((a, b) => a[0] - b[0]);
    this.points = older.concat(this.points).slice(-this.pointsMax);
    this.schedule();
  }

  schedule() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => { this.queued = false; this.draw(); });
  }

  draw() {
    const [g, width, height] = prepareCanvas(this.canvas);
    const pad = { left: 84, right: 12, top: 10, bottom: 24 };
    if (this.points.length === 0) {
      g.fillText("Waiting for the balance…", pad.left, height / 2);
      return;
    }
    const now = Date.now();
    const t0 = this.points[0][0], t1 = Math.max(now, t0 + 1000);
    // The axis spans the data (with a margin) so small charges stay visible;
    // a zero balance is always on the axis when the data comes near it.
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of this.points) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const margin = Math.max((hi - lo) * 0.15, 10000);
    lo = Math.max(0, lo - margin); hi = hi + margin;
    if (lo < margin * 2) lo = 0;
    const x = (t) => pad.left + (t - t0) / (t1 - t0) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (hi - v) / (hi - lo) * (height - pad.top - pad.bottom);
    // axes and labels
    g.strokeStyle = "#dde";
    g.beginPath();
    for (const v of [lo, (lo + hi) / 2, hi]) {
      const yy = Math.round(y(v)) + 0.5;
      g.moveTo(pad.left, yy); g.lineTo(width - pad.right, yy);
      g.fillText(formatMicros(Math.round(v / 10000) * 10000), 4, yy + 4);
    }
    g.stroke();
    // Dates when the chart spans days, times within a day.
    const label = (t) => (t1 - t0 > 36 * 3600 * 1000 ? DAY_ONLY : TIME_ONLY).format(new Date(t));
    g.fillText(label(t0), pad.left, height - 6);
    const nowText = label(t1);
    g.fillText(nowText, width - pad.right - g.measureText(nowText).width, height - 6);
    // the balance as a step line: it holds its value until the next change
    g.strokeStyle = "#2a6df4";
    g.lineWidth = 2;
    g.beginPath();
    let prev = null;
    for (const [t, v] of this.points) {
      if (prev === null) g.moveTo(x(t), y(v)); else { g.lineTo(x(t), y(prev)); g.lineTo(x(t), y(v)); }
      prev = v;
    }
    g.lineTo(x(t1), y(prev));
    g.stroke();
  }
}

// Spend per day, stacked by billing item: one bar per day of the range.
class SpendChart {
  constructor(canvas, colors) {
    this.canvas = canvas;
    this.colors = colors; // item -> color
    this.days = [];
    this.format = (micros) => formatMicros(micros);
  }

  show(days, format) {
    this.days = days;
    if (format) this.format = format;
    requestAnimationFrame(() => this.draw());
  }

  draw() {
    const [g, width, height] = prepareCanvas(this.canvas);
    const pad = { left: 84, right: 12, top: 10, bottom: 24 };
    const totals = this.days.map((d) => Object.values(d.spent_micros).reduce((a, b) => a + b, 0));
    const top = Math.max(0, ...totals);
    if (!this.days.length || top === 0) {
      g.fillText("No spending in this range.", pad.left, height / 2);
      return;
    }
    const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
    const y = (v) => pad.top + plotH - v / top * plotH;
    g.strokeStyle = "#dde";
    g.beginPath();
    for (const v of [0, top / 2, top]) {
      const yy = Math.round(y(v)) + 0.5;
      g.moveTo(pad.left, yy); g.lineTo(width - pad.right, yy);
      g.fillText(this.format(v === top ? top : Math.round(v / 100) * 100), 4, yy + 4);
    }
    g.stroke();
    const slot = plotW / this.days.length;
    const barW = Math.max(2, Math.min(40, slot * 0.7));
    this.days.forEach((d, i) => {
      let acc = 0;
      const x = pad.left + i * slot + (slot - barW) / 2;
      for (const [item, micros] of Object.entries(d.spent_micros)) {
        g.fillStyle = this.colors[item] || "#999";
        g.fillRect(x, y(acc + micros), barW, y(acc) - y(acc + micros));
        acc += micros;
      }
    });
    g.fillStyle = "#667";
    const label = (d) => DAY_ONLY.format(new Date(d.day + "T12:00:00"));
    g.fillText(label(this.days[0]), pad.left, height - 6);
    if (this.days.length > 1) {
      const last = label(this.days[this.days.length - 1]);
      g.fillText(last, width - pad.right - g.measureText(last).width, height - 6);
    }
  }
}
