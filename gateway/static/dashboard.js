/*
 * Hybrid router dashboard. Fetches `data` (relative to the page, so it works under
 * any mount path), draws it with Chart.js, refreshes it in place every 10 s, and
 * writes what it drew into <pre id="drawn"> as JSON (for tests and monitoring).
 */
(function () {
  "use strict";

  const REFRESH_MS = 10000;
  // When a budget line is this many times above the largest bar, the bars would be a
  // sliver at the bottom of a linear axis: the axis turns logarithmic.
  const LOG_RATIO = 40;
  const BACKENDS = ["serverless", "gpu"];
  const NAMES = { serverless: "Serverless", gpu: "GPU pool", unanswered: "Unanswered" };
  const COLORS = {
    serverless: "#2563eb",
    serverlessLight: "#93c5fd",
    serverlessFill: "rgba(37, 99, 235, 0.12)",
    gpu: "#f97316",
    gpuLight: "#fdba74",
    unanswered: "#94a3b8",
    budget: "#dc2626",
    grid: "#e2e8f0",
    label: "#334155",
    ink: "#0f172a",
    muted: "#64748b",
  };

  const charts = {};
  const state = { refreshes: 0, chartsBuilt: 0, timer: null, busy: false, spendView: initialView() };

  function initialView() {
    const view = new URLSearchParams(window.location.search).get("view");
    return view === "month" ? "month" : "day";
  }

  // ---------------------------------------------------------------- formatting

  function num(value) {
    const v = Number(value);
    return Number.isFinite(v) ? v : 0;
  }

  function usd(value) {
    const v = num(value);
    const a = Math.abs(v);
    if (a === 0) return "$0";
    let digits;
    if (a < 1) digits = { maximumSignificantDigits: 3 };
    else if (a < 10000) digits = { minimumFractionDigits: 2, maximumFractionDigits: 2 };
    else digits = { minimumFractionDigits: 0, maximumFractionDigits: 0 };
    return new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", ...digits }).format(v);
  }

  function signedUsd(value) {
    const v = num(value);
    return (v > 0 ? "+" : v < 0 ? "−" : "") + usd(Math.abs(v));
  }

  function usdTick(value) {
    const v = num(value);
    const a = Math.abs(v);
    if (a === 0) return "$0";
    if (a < 0.01) return "$" + v.toExponential(0);
    const digits = a >= 1000 ? 0 : a >= 1 ? 2 : 3;
    return "$" + v.toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function ms(value) {
    const v = num(value);
    const digits = v < 10 ? 1 : 0;
    return v.toLocaleString("en-US", { maximumFractionDigits: digits }) + " ms";
  }

  function pct(fraction) {
    const v = num(fraction) * 100;
    if (v > 0 && v < 0.1) return "<\u00a00.1\u00a0%";
    return v.toLocaleString("en-US", { maximumFractionDigits: v < 10 ? 1 : 0 }) + "\u00a0%";
  }

  function count(value) {
    return num(value).toLocaleString("en-US");
  }

  function shortDay(iso) {
    const [y, m, d] = iso.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d)).toLocaleDateString("en-US", {
      month: "short",
      day: "numeric",
      timeZone: "UTC",
    });
  }

  function when(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime())
      ? iso
      : date.toLocaleString("en-US", {
          year: "numeric",
          month: "short",
          day: "numeric",
          hour: "2-digit",
          minute: "2-digit",
          hourCycle: "h23",
        });
  }

  function sum(values) {
    return values.reduce((total, v) => total + num(v), 0);
  }

  // ---------------------------------------------------------------- DOM helpers

  function field(name) {
    return document.querySelector(`[data-field="${name}"]`);
  }

  function setText(name, text) {
    const el = field(name);
    if (el) el.textContent = text;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function pill(text, className) {
    const span = document.createElement("span");
    span.className = `pill ${className}`;
    span.textContent = text;
    return span;
  }

  // ---------------------------------------------------------------- chart helpers

  /** Draws each bar's value (or each stack's total) above it. */
  const valueLabels = {
    id: "valueLabels",
    afterDatasetsDraw(chart, _args, options) {
      if (!options || typeof options.format !== "function") return;
      const { ctx } = chart;
      ctx.save();
      ctx.font = `600 12px ${Chart.defaults.font.family}`;
      ctx.fillStyle = COLORS.label;
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      if (options.stacked) {
        chart.data.labels.forEach((_label, i) => {
          let total = 0;
          let top = Infinity;
          let x = null;
          chart.data.datasets.forEach((dataset, d) => {
            const el = chart.getDatasetMeta(d).data[i];
            if (!el || !chart.isDatasetVisible(d)) return;
            total += num(dataset.data[i]);
            top = Math.min(top, el.y);
            x = el.x;
          });
          if (x !== null) ctx.fillText(options.format(total), x, top - 4);
        });
      } else {
        chart.data.datasets.forEach((dataset, d) => {
          if (!chart.isDatasetVisible(d)) return;
          chart.getDatasetMeta(d).data.forEach((el, i) => {
            ctx.fillText(options.format(dataset.data[i]), el.x, el.y - 4);
          });
        });
      }
      ctx.restore();
    },
  };

  /** Labels only the powers of ten of a logarithmic axis, formatted with `format`. */
  function tickFormatter(format) {
    return function (value) {
      if (this.type === "logarithmic") {
        const v = num(value);
        if (v <= 0) return "";
        const mantissa = v / Math.pow(10, Math.floor(Math.log10(v) + 1e-9));
        if (Math.abs(mantissa - 1) > 1e-6) return "";
      }
      return format(value);
    };
  }

  /**
   * Fits `scale` to the figures (`values`) and the budget lines (`limits`): linear from 0,
   * or logarithmic when the budget is more than LOG_RATIO times the largest figure.
   */
  function fitScale(scale, values, limits, title) {
    const positive = values.map(num).filter((v) => v > 0);
    const largest = Math.max(0, ...positive);
    const top = Math.max(largest, ...limits.map(num));
    const log = largest > 0 && top / largest > LOG_RATIO;
    if (log) {
      scale.type = "logarithmic";
      scale.min = Math.pow(10, Math.floor(Math.log10(Math.min(...positive) / 2)));
      scale.max = Math.pow(10, Math.ceil(Math.log10(top * 1.05)));
      scale.title.text = `${title} (log scale)`;
    } else {
      scale.type = "linear";
      scale.min = 0;
      scale.max = undefined;
      scale.grace = "5%";
      scale.title.text = title;
    }
    return scale.type;
  }

  function visibleBars(chart) {
    let drawn = 0;
    chart.data.datasets.forEach((_dataset, d) => {
      const meta = chart.getDatasetMeta(d);
      if (meta.type !== "bar" || !chart.isDatasetVisible(d)) return;
      meta.data.forEach((el) => {
        const p = el.getProps(["y", "base"], true);
        if (Math.abs(p.base - p.y) >= 1) drawn += 1;
      });
    });
    return drawn;
  }

  function linePoints(chart) {
    let drawn = 0;
    chart.data.datasets.forEach((_dataset, d) => {
      const meta = chart.getDatasetMeta(d);
      if (meta.type !== "line" || !chart.isDatasetVisible(d)) return;
      drawn += meta.data.filter((el) => Number.isFinite(el.getProps(["y"], true).y)).length;
    });
    return drawn;
  }

  function visibleArcs(chart, d) {
    return chart
      .getDatasetMeta(d)
      .data.filter((el) => {
        const p = el.getProps(["startAngle", "endAngle"], true);
        return p.endAngle - p.startAngle > 1e-3;
      }).length;
  }

  function axisTitle(text) {
    return { display: true, text, font: { weight: "600" } };
  }

  function legend() {
    return { position: "bottom", labels: { boxWidth: 12, boxHeight: 12, padding: 14 } };
  }

  // ---------------------------------------------------------------- charts

  // The spend chart's two views: which datasets each shows, and its axis title.
  const SPEND_VIEWS = {
    day: {
      datasets: [0, 1, 2],
      title: "Per day ($)",
      hint: "USD per day by backend; only serverless spend counts against the budgets",
    },
    month: {
      datasets: [3, 4],
      title: "Month to date ($)",
      hint: "serverless spend since the 1st of each month, against the monthly budget",
    },
  };

  function lineLegend(chart) {
    const items = Chart.defaults.plugins.legend.labels.generateLabels(chart);
    return items
      .filter((item) => SPEND_VIEWS[state.spendView].datasets.includes(item.datasetIndex))
      .map((item) => {
        const dataset = chart.data.datasets[item.datasetIndex];
        return { ...item, pointStyle: dataset.type === "line" ? "line" : "rect" };
      });
  }

  /** Fits the spend chart's axis to the datasets it shows (log when they span decades). */
  function fitSpend(chart) {
    const shown = chart.data.datasets.filter((_dataset, i) => chart.isDatasetVisible(i));
    return fitScale(
      chart.options.scales.y,
      shown.filter((dataset) => !dataset.budget).flatMap((dataset) => dataset.data),
      shown.filter((dataset) => dataset.budget).flatMap((dataset) => dataset.data),
      SPEND_VIEWS[state.spendView].title,
    );
  }

  function showSpendView(chart, view) {
    state.spendView = view;
    const params = new URLSearchParams(window.location.search);
    if (view === "month") params.set("view", view);
    else params.delete("view");
    const query = params.toString();
    window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
    updateLinks();
    chart.data.datasets.forEach((_dataset, i) => {
      chart.setDatasetVisibility(i, SPEND_VIEWS[view].datasets.includes(i));
    });
    setText("spend-hint", SPEND_VIEWS[view].hint);
    document.querySelectorAll("[data-view]").forEach((button) => {
      const active = button.dataset.view === view;
      button.classList.toggle("active", active);
      button.setAttribute("aria-pressed", String(active));
    });
    fitSpend(chart);
    chart.update();
  }

  function spendChart() {
    const line = { type: "line", pointRadius: 0, pointHitRadius: 8, borderWidth: 2, fill: false };
    const chart = new Chart(document.getElementById("chart-spend"), {
      type: "bar",
      data: {
        labels: [],
        datasets: [
          { label: "Serverless", data: [], backgroundColor: COLORS.serverless, borderRadius: 3, order: 2 },
          {
            label: "GPU pool (allocated share)",
            data: [],
            backgroundColor: COLORS.gpu,
            borderRadius: 3,
            order: 2,
          },
          {
            ...line,
            label: "Daily budget",
            data: [],
            budget: true,
            borderColor: COLORS.budget,
            borderDash: [6, 4],
            order: 1,
          },
          {
            ...line,
            label: "Serverless, month to date",
            data: [],
            borderColor: COLORS.serverless,
            backgroundColor: COLORS.serverlessFill,
            pointBackgroundColor: COLORS.serverless,
            pointRadius: 3,
            fill: "origin",
            order: 1,
            hidden: true,
          },
          {
            ...line,
            label: "Monthly budget",
            data: [],
            budget: true,
            borderColor: COLORS.budget,
            borderDash: [6, 4],
            order: 0,
            hidden: true,
          },
        ],
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: {
            grid: { display: false },
            title: axisTitle("Day"),
            ticks: { maxRotation: 0, autoSkipPadding: 12 },
          },
          y: { title: axisTitle("Per day ($)"), ticks: { callback: tickFormatter(usdTick) } },
        },
        plugins: {
          legend: {
            ...legend(),
            labels: {
              ...legend().labels,
              usePointStyle: true,
              pointStyleWidth: 18,
              generateLabels: lineLegend,
              sort: (a, b) => a.datasetIndex - b.datasetIndex,
            },
            onClick(event, item, legendPlugin) {
              Chart.defaults.plugins.legend.onClick.call(this, event, item, legendPlugin);
              fitSpend(chart);
              chart.update();
            },
          },
          tooltip: {
            filter: (item) => item.chart.isDatasetVisible(item.datasetIndex),
            callbacks: { label: (ctx) => ` ${ctx.dataset.label}: ${usd(ctx.parsed.y)}` },
          },
        },
      },
    });
    document.querySelectorAll("[data-view]").forEach((button) => {
      button.addEventListener("click", () => showSpendView(chart, button.dataset.view));
    });
    if (state.spendView !== "day") showSpendView(chart, state.spendView);
    return chart;
  }

  /** Writes the total in the doughnut's hole. */
  const centerText = {
    id: "centerText",
    afterDatasetsDraw(chart, _args, options) {
      if (!options || typeof options.lines !== "function") return;
      const arc = chart.getDatasetMeta(chart.data.datasets.length - 1).data[0];
      if (!arc) return;
      const [big, small] = options.lines(chart);
      const { ctx } = chart;
      ctx.save();
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = COLORS.ink;
      ctx.font = `650 22px ${Chart.defaults.font.family}`;
      ctx.fillText(big, arc.x, arc.y - 8);
      ctx.fillStyle = COLORS.muted;
      ctx.font = `12px ${Chart.defaults.font.family}`;
      ctx.fillText(small, arc.x, arc.y + 12);
      ctx.restore();
    },
  };

  function splitChart() {
    return new Chart(document.getElementById("chart-split"), {
      type: "doughnut",
      data: {
        labels: [],
        datasets: [
          { label: "Requests", data: [], backgroundColor: [], borderColor: "#fff", borderWidth: 2 },
          { label: "Cost", data: [], backgroundColor: [], borderColor: "#fff", borderWidth: 2 },
        ],
      },
      options: {
        cutout: "42%",
        plugins: {
          legend: legend(),
          centerText: {
            lines: (chart) => [count(sum(chart.data.datasets[0].data)), "requests"],
          },
          tooltip: {
            callbacks: {
              label(ctx) {
                const values = ctx.dataset.data;
                const share = sum(values) ? num(ctx.parsed) / sum(values) : 0;
                const what = ctx.datasetIndex === 0 ? `${count(ctx.parsed)} requests` : usd(ctx.parsed);
                return ` ${ctx.label}: ${what} (${pct(share)})`;
              },
            },
          },
        },
      },
      plugins: [centerText],
    });
  }

  function latencyChart() {
    return new Chart(document.getElementById("chart-latency"), {
      type: "bar",
      data: {
        labels: ["p50 (median)", "p95"],
        datasets: BACKENDS.map((backend) => ({
          label: NAMES[backend],
          data: [],
          backgroundColor: COLORS[backend],
          borderRadius: 4,
          maxBarThickness: 64,
        })),
      },
      options: {
        layout: { padding: { top: 18 } },
        scales: {
          x: { grid: { display: false }, title: axisTitle("Percentile") },
          y: {
            beginAtZero: true,
            grace: "8%",
            title: axisTitle("Latency (ms)"),
            ticks: { callback: (v) => ms(v) },
          },
        },
        plugins: {
          legend: legend(),
          valueLabels: { format: ms },
          tooltip: { callbacks: { label: (ctx) => ` ${ctx.dataset.label}: ${ms(ctx.parsed.y)}` } },
        },
      },
      plugins: [valueLabels],
    });
  }

  function savingsChart() {
    return new Chart(document.getElementById("chart-savings"), {
      type: "bar",
      data: {
        labels: [],
        datasets: [
          { label: "Serverless", data: [], backgroundColor: COLORS.serverless, borderRadius: 3, maxBarThickness: 72 },
          { label: "GPU pool", data: [], backgroundColor: COLORS.gpu, borderRadius: 3, maxBarThickness: 72 },
        ],
      },
      options: {
        layout: { padding: { top: 18 } },
        scales: {
          x: { stacked: true, grid: { display: false } },
          y: {
            stacked: true,
            beginAtZero: true,
            grace: "8%",
            title: axisTitle("Cost over the range ($)"),
            ticks: { callback: tickFormatter(usdTick) },
          },
        },
        plugins: {
          legend: legend(),
          valueLabels: { format: usd, stacked: true },
          tooltip: { callbacks: { label: (ctx) => ` ${ctx.dataset.label}: ${usd(ctx.parsed.y)}` } },
        },
      },
      plugins: [valueLabels],
    });
  }

  // The capacity plan's lines, by policy (planner/report.py chart_data).
  const PLAN_COLORS = {
    router: "#16a34a",
    old_split: "#a855f7",
    all_gpu: COLORS.gpu,
    all_serverless: COLORS.serverless,
  };

  function planChart() {
    return new Chart(document.getElementById("chart-plan"), {
      type: "line",
      data: { datasets: [] },
      options: {
        parsing: false,
        scales: {
          x: { type: "linear", title: axisTitle("Dedicated GPUs"), ticks: { stepSize: 1, precision: 0 } },
          y: {
            beginAtZero: true,
            grace: "5%",
            title: axisTitle("Cost per month ($)"),
            ticks: { callback: (v) => usdTick(v) },
          },
        },
        plugins: {
          legend: legend(),
          tooltip: {
            callbacks: {
              label: (ctx) => ` ${ctx.dataset.label}: ${usd(ctx.parsed.y)} with ${ctx.parsed.x} GPUs`,
            },
          },
        },
      },
    });
  }

  /** Draws the last capacity plan: a line per policy, the bound dashed, the pick starred. */
  function renderPlan(chart, plan) {
    if (!plan) {
      chart.data.datasets = [];
      chart.update();
      return { series: 0, points: 0, bound_points: 0, best: null };
    }
    const counts = plan.bound.gpus;
    const lo = Math.min(...counts);
    const hi = Math.max(...counts);
    const datasets = plan.series.map((s) => {
      const color = PLAN_COLORS[s.policy] || COLORS.muted;
      const level = s.policy === "all_serverless";
      const data = level
        ? [lo, hi].map((x) => ({ x, y: num(s.month_usd[0]) }))
        : s.gpus.map((x, i) => ({ x, y: num(s.month_usd[i]) }));
      return {
        label: s.label,
        data,
        borderColor: color,
        backgroundColor: color,
        borderDash: level ? [2, 4] : [],
        pointRadius: level ? 0 : 3,
        // a run that misses the latency target is drawn as a cross
        pointStyle: level ? "circle" : s.meets_target.map((ok) => (ok ? "circle" : "crossRot")),
        tension: 0,
      };
    });
    datasets.push({
      label: "lower bound (meets the latency target)",
      data: counts.map((x, i) => ({ x, y: num(plan.bound.month_usd[i]) })),
      borderColor: COLORS.ink,
      backgroundColor: COLORS.ink,
      borderDash: [6, 4],
      pointRadius: 0,
      tension: 0,
    });
    if (plan.best) {
      datasets.push({
        label: `recommended: ${plan.best.gpus} GPUs, ${plan.best.label}`,
        data: [{ x: plan.best.gpus, y: num(plan.best.month_usd) }],
        borderColor: "#ca8a04",
        backgroundColor: "#facc15",
        pointStyle: "star",
        pointRadius: 10,
        showLine: false,
      });
    }
    chart.data.datasets = datasets;
    chart.update();
    const when = new Date(plan.created_at).toLocaleString("en-US", {
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
    });
    setText(
      "plan-caption",
      `${String(plan.recommendation).replace(/\*\*/g, "")} (${count(plan.requests)} requests: ` +
        `${plan.source}; simulated ${when}; ${usd(plan.hourly_usd)} per GPU-hour)`,
    );
    const lines = datasets.slice(0, plan.series.length);
    return {
      series: plan.series.length,
      points: linePoints(chart),
      bound_points: counts.length,
      best: plan.best ? { gpus: plan.best.gpus, month_usd: num(plan.best.month_usd) } : null,
      month_usd: Object.fromEntries(
        plan.series.map((s, i) => [s.policy, lines[i].data.map((p) => p.y)]),
      ),
    };
  }

  // ---------------------------------------------------------------- rendering

  function budgetWindow(budgets, period) {
    return (budgets || []).find((w) => w.scope === "global" && w.period === period) || null;
  }

  function renderBudgetCard(prefix, budget, label) {
    const meter = field(`${prefix}-meter`);
    if (!budget) {
      setText(`${prefix}-spent`, "–");
      setText(`${prefix}-limit`, "no budget");
      return { spent: 0, limit: null };
    }
    const fraction = num(budget.used_fraction);
    setText(`${prefix}-spent`, usd(budget.spent_usd));
    setText(`${prefix}-limit`, usd(budget.limit_usd));
    meter.style.width = `${Math.min(100, fraction * 100)}%`;
    meter.classList.toggle("warn", fraction >= 0.8 && fraction < 1);
    meter.classList.toggle("over", fraction >= 1);
    const held = num(budget.reserved_usd) > 1e-9 ? ` · ${usd(budget.reserved_usd)} held in flight` : "";
    const resets = new Date(budget.resets_at).toLocaleString("en-US", {
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
    });
    setText(`${prefix}-note`, `${pct(fraction)} of the ${label} budget used${held} · resets ${resets}`);
    return { spent: num(budget.spent_usd), limit: num(budget.limit_usd) };
  }

  function renderCards(data) {
    const today = renderBudgetCard("today", budgetWindow(data.budgets, "day"), "daily");
    const month = renderBudgetCard("month", budgetWindow(data.budgets, "month"), "monthly");
    const savings = data.savings;
    const saved = num(savings.all_gpu.saved_usd);
    const savedEl = field("saved-gpu");
    savedEl.textContent = signedUsd(saved);
    savedEl.parentElement.classList.toggle("good", saved > 0);
    savedEl.parentElement.classList.toggle("bad", saved < 0);
    const instances = savings.all_gpu.instances;
    setText(
      "saved-note",
      `actual ${usd(savings.actual_usd)} · GPU-only ${usd(savings.all_gpu.usd)} ` +
        `(${instances} instance${instances === 1 ? "" : "s"})`,
    );
    setText("saved-serverless", `vs all serverless: ${signedUsd(savings.all_serverless.saved_usd)}`);
    const totals = data.totals;
    const split = data.split;
    setText("requests", count(totals.requests));
    setText("requests-tokens", `${count(totals.total_tokens)}\u00a0tokens`);
    const answered = num(split.serverless.requests) + num(split.gpu.requests);
    const share = answered ? num(split.serverless.requests) / answered : 0;
    field("requests-serverless").style.width = `${share * 100}%`;
    field("requests-gpu").style.width = answered ? `${(1 - share) * 100}%` : "0%";
    setText(
      "requests-note",
      `${count(split.serverless.requests)} serverless · ${count(split.gpu.requests)} GPU`,
    );
    setText(
      "requests-rates",
      `${pct(totals.error_rate)} errors · ${pct(totals.fallback_rate)} fallbacks · ` +
        `${count(totals.budget_refusals)} budget refusals (${count(totals.refused)} refused)`,
    );
    return {
      requests: num(totals.requests),
      error_rate: num(totals.error_rate),
      today_usd: today.spent,
      month_usd: month.spent,
      saved_vs_gpu_usd: saved,
    };
  }

  function renderSpend(chart, spend) {
    chart.data.labels = spend.days.map(shortDay);
    const [serverless, gpu, daily, monthToDate, monthly] = chart.data.datasets;
    serverless.data = spend.serverless_usd.map(num);
    gpu.data = spend.gpu_usd.map(num);
    daily.data = spend.days.map(() => num(spend.daily_budget_usd));
    monthToDate.data = spend.month_to_date_serverless_usd.map(num);
    monthly.data = spend.days.map(() => num(spend.monthly_budget_usd));
    const scale = fitSpend(chart);
    chart.update();
    return {
      view: state.spendView,
      scale,
      size: [chart.width, chart.height],
      labels: chart.data.labels.length,
      bars: visibleBars(chart),
      points: linePoints(chart),
      serverless_usd: sum(serverless.data),
      gpu_usd: sum(gpu.data),
      daily_budget_usd: num(spend.daily_budget_usd),
      monthly_budget_usd: num(spend.monthly_budget_usd),
      month_to_date_usd: num(monthToDate.data[monthToDate.data.length - 1]),
    };
  }

  function renderSplit(chart, split) {
    const names = [...BACKENDS];
    if (num(split.unanswered && split.unanswered.requests) > 0) names.push("unanswered");
    chart.data.labels = names.map((name) => NAMES[name]);
    const [requests, cost] = chart.data.datasets;
    requests.data = names.map((name) => num(split[name].requests));
    requests.backgroundColor = names.map((name) => COLORS[name]);
    cost.data = names.map((name) => num(split[name].cost_usd));
    cost.backgroundColor = names.map((name) => COLORS[`${name}Light`] || COLORS[name]);
    chart.update();
    return {
      segments: visibleArcs(chart, 0),
      cost_segments: visibleArcs(chart, 1),
      requests: Object.fromEntries(BACKENDS.map((b, i) => [b, requests.data[i]])),
      cost_usd: Object.fromEntries(BACKENDS.map((b, i) => [b, cost.data[i]])),
    };
  }

  function renderLatency(chart, latency) {
    chart.data.datasets.forEach((dataset, i) => {
      const figures = latency[BACKENDS[i]];
      dataset.data = [num(figures.p50_ms), num(figures.p95_ms)];
      dataset.label = `${NAMES[BACKENDS[i]]} (${count(figures.requests)} requests)`;
    });
    chart.update();
    const [serverless, gpu] = chart.data.datasets;
    return {
      bars: visibleBars(chart),
      p50_ms: { serverless: serverless.data[0], gpu: gpu.data[0] },
      p95_ms: { serverless: serverless.data[1], gpu: gpu.data[1] },
    };
  }

  function renderSavings(chart, savings) {
    const instances = savings.all_gpu.instances;
    chart.data.labels = [
      ["Actual", "(this router)"],
      ["All on GPUs", `(${instances} instance${instances === 1 ? "" : "s"})`],
      ["All serverless", `(${savings.all_serverless.model})`],
    ];
    const [serverless, gpu] = chart.data.datasets;
    serverless.data = [num(savings.serverless_usd), 0, num(savings.all_serverless.usd)];
    gpu.data = [num(savings.gpu_bill_usd), num(savings.all_gpu.usd), 0];
    chart.update();
    return {
      bars: visibleBars(chart),
      actual_usd: serverless.data[0] + gpu.data[0],
      actual_serverless_usd: serverless.data[0],
      actual_gpu_bill_usd: gpu.data[0],
      all_gpu_usd: serverless.data[1] + gpu.data[1],
      all_serverless_usd: serverless.data[2] + gpu.data[2],
    };
  }

  function renderAlerts(alerts) {
    const body = document.getElementById("alerts-body");
    const rows = (alerts || []).map((alert) => {
      const tr = document.createElement("tr");
      const owner = alert.scope === "global" ? "global" : `${alert.scope} ${alert.key}`;
      tr.append(
        cell(when(alert.created_at)),
        cell(`${alert.period === "day" ? "Daily" : "Monthly"} · ${owner}`),
        cell(alert.window),
      );
      const threshold = cell("", "num");
      threshold.append(pill(pct(alert.threshold), num(alert.threshold) >= 1 ? "t100" : "t80"));
      const delivered = cell("");
      const status = String(alert.delivered).replace(/_/g, " ");
      delivered.append(pill(status, alert.delivered === "sent" ? "sent" : "other"));
      tr.append(threshold, cell(usd(alert.spent_usd), "num"), cell(usd(alert.limit_usd), "num"), delivered);
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell("No alerts: every budget is below 80 % of its limit.");
      td.colSpan = 7;
      tr.append(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    return { rows: (alerts || []).length };
  }

  function renderHeader(data) {
    const days = num(data.range.days);
    setText("days", String(days));
    setText("timezone", data.range.timezone);
    field("emulated").hidden = !data.emulated;
    document.querySelectorAll(".ranges a").forEach((a) => {
      a.classList.toggle("active", Number(a.dataset.days) === days);
    });
    updateLinks();
  }

  /** Keeps the range links on the current view, and the data link on the current range. */
  function updateLinks() {
    const view = state.spendView === "month" ? "&view=month" : "";
    document.querySelectorAll(".ranges a").forEach((a) => {
      a.setAttribute("href", `?days=${a.dataset.days}${view}`);
    });
    document.querySelectorAll('a[href^="data"]').forEach((a) => {
      a.setAttribute("href", dataUrl());
    });
  }

  function renderCaptions(data) {
    const split = data.split;
    setText(
      "split-caption",
      BACKENDS.map(
        (b) => `${NAMES[b]}: ${count(split[b].requests)} requests, ${usd(split[b].cost_usd)}`,
      ).join(" · "),
    );
    const hours = num(data.savings.hours).toLocaleString("en-US", { maximumFractionDigits: 1 });
    const pool = data.savings.pool;
    const idle = pool.idle_share === null ? "no paid hours" : `${pct(pool.idle_share)} idle`;
    setText(
      "savings-hint",
      `over ${hours} h: actual (serverless + GPU pool bill for ` +
        `${num(pool.paid_instance_hours).toFixed(2)} instance-hours, ${idle}) ` +
        "vs all on GPUs, all serverless",
    );
    return renderHow(data.savings.how);
  }

  /** One line per figure saying how it was computed (state/reporting/accounting.py). */
  function renderHow(how) {
    const names = [
      ["actual", "Spend"],
      ["gpu_bill", "GPU pool bill"],
      ["idle_share", "Idle share"],
      ["all_gpu", "All on GPUs"],
      ["all_serverless", "All serverless"],
    ];
    const items = names
      .filter(([key]) => how && how[key])
      .map(([key, label]) => {
        const li = document.createElement("li");
        const strong = document.createElement("strong");
        strong.textContent = `${label}: `;
        li.append(strong, how[key]);
        return li;
      });
    field("savings-how").replaceChildren(...items);
    return { lines: items.length };
  }

  function render(data) {
    // Text first, so the layout has settled when the charts measure their boxes.
    renderHeader(data);
    const cards = renderCards(data);
    const alerts = renderAlerts(data.alerts);
    const how = renderCaptions(data);
    if (!charts.spend) {
      charts.spend = spendChart();
      charts.split = splitChart();
      charts.latency = latencyChart();
      charts.savings = savingsChart();
      charts.plan = planChart();
      state.chartsBuilt += 1;
    }
    const drawn = {
      generated_at: data.generated_at,
      refreshes: state.refreshes,
      charts_built: state.chartsBuilt,
      cards,
      spend: renderSpend(charts.spend, data.spend),
      split: renderSplit(charts.split, data.split),
      latency: renderLatency(charts.latency, data.latency),
      savings: { ...renderSavings(charts.savings, data.savings), how },
      plan: renderPlan(charts.plan, data.capacity_plan),
      alerts,
    };
    document.getElementById("drawn").textContent = JSON.stringify(drawn);
    // Re-measure once the page has laid out (a scroll bar may have appeared meanwhile).
    window.requestAnimationFrame(() => Object.values(charts).forEach((chart) => chart.resize()));
  }

  // ---------------------------------------------------------------- refresh loop

  function dataUrl() {
    const days = new URLSearchParams(window.location.search).get("days");
    return days ? `data?days=${encodeURIComponent(days)}` : "data";
  }

  function setStatus(text, kind) {
    setText("status", text);
    const dot = field("status-dot");
    dot.classList.toggle("live", kind === "live");
    dot.classList.toggle("error", kind === "error");
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (state.busy) return;
    if (document.hidden) {
      schedule();
      return;
    }
    state.busy = true;
    try {
      const response = await fetch(dataUrl(), { cache: "no-store", headers: { accept: "application/json" } });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try {
          message = (await response.json()).error.message || message;
        } catch (_ignored) {
          // not JSON: keep the status
        }
        throw new Error(message);
      }
      const data = await response.json();
      state.refreshes += 1;
      render(data);
      document.body.dataset.ready = "true";
      delete document.body.dataset.error;
      const at = new Date().toLocaleTimeString("en-US", { hour12: false });
      setStatus(`Updated ${at} · refreshes every ${REFRESH_MS / 1000} s`, "live");
    } catch (error) {
      document.body.dataset.error = "true";
      setStatus(`Could not refresh (${error.message}); showing the last figures`, "error");
    } finally {
      state.busy = false;
      schedule();
    }
  }

  function start() {
    if (typeof Chart === "undefined") {
      document.body.dataset.error = "true";
      setStatus("The charting library did not load", "error");
      return;
    }
    Chart.defaults.font.family = window.getComputedStyle(document.body).fontFamily;
    Chart.defaults.font.size = 12;
    Chart.defaults.color = "#475569";
    Chart.defaults.borderColor = COLORS.grid;
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.animation.duration = 450;
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    refresh();
  }

  start();
})();
