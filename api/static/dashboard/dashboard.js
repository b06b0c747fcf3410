// The inclusion dashboard: one chart and one table per Measure, for one year and (optionally)
// one primary need. Figures come from /dashboard/reports (summary MeasureReports, already
// suppressed by the server); this page only lays them out. The need filter picks strata of
// the published tables: it never asks the server for a new, differently cut figure.
"use strict";

const BASE = "http://ehcp-record.example.org/fhir";
const MASKED = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const CODE_SYSTEMS = { primary_need: "sen-primary-need", setting_type: "ehcp-setting-type", section: "ehcp-section",
  category: "provision-category", reason: "ehcp-cease-reason" };
const LABELS = {
  timeliness: { met: "On time", late: "Late", "late-excepted": "Late, exception applied", overdue: "Overdue",
    "overdue-excepted": "Overdue, exception applied" },
  progress: { achieved: "Achieved", progressing: "Progressing", "not-progressing": "Not progressing" },
  age_band: { "0-4": "Under 5", "5-10": "5 to 10", "11-15": "11 to 15", "16-19": "16 to 19", "20-25": "20 to 25" },
  primary_need: { none: "Not recorded" }, setting_type: { none: "Not recorded" },
};
const DIMENSION_NAMES = { primary_need: "Primary need", age_band: "Age band", section: "Plan section",
  category: "Provision category", progress: "Progress", timeliness: "Timeliness", setting_type: "Setting type",
  reason: "Reason" };
// Dimensions with a natural order; any other is sorted by its label.
const ORDER = { age_band: ["0-4", "5-10", "11-15", "16-19", "20-25"],
  timeliness: ["met", "late", "late-excepted", "overdue", "overdue-excepted"],
  progress: ["achieved", "progressing", "not-progressing"] };
const charts = [];

const $ = (id) => document.getElementById(id);
const label = (dimension, code) => (LABELS[dimension] && LABELS[dimension][code]) || code;
const el = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  children.forEach((child) => node.append(child));
  return node;
};

async function loadLabels() {
  await Promise.all(Object.entries(CODE_SYSTEMS).map(async ([dimension, id]) => {
    try {
      const response = await fetch(`/fhir/CodeSystem/${id}`, { headers: { Accept: "application/fhir+json" } });
      if (!response.ok) return;
      const system = await response.json();
      LABELS[dimension] = Object.assign({}, LABELS[dimension] || {},
        Object.fromEntries((system.concept || []).map((c) => [c.code, c.display || c.code])));
    } catch (error) { /* codes stay as they are */ }
  }));
  const need = $("need");
  Object.entries(LABELS.primary_need).filter(([code]) => code !== "none").forEach(([code, display]) => {
    need.append(el("option", { value: code, text: `${display} (${code})` }));
  });
}

function fillYears() {
  const select = $("year");
  const now = new Date().getUTCFullYear();
  for (let year = now - 1; year >= now - 7; year -= 1) {  // whole years that have ended
    const option = el("option", { value: String(year), text: String(year) });
    if (year === now - 1) option.selected = true;
    select.append(option);
  }
}

function count(population) {
  const entry = (population || [])[0] || {};
  const masked = (entry.extension || []).some((e) => e.url === MASKED);
  return masked ? null : (entry.count ?? 0);
}

// {dimensions, cells: Map("a|b" -> count|null), values: [[...a values], [...b values]], total}
function table(report) {
  const group = report.group[0];
  const widest = group.stratifier.reduce((best, s) => (s.code[0].text.split(" x ").length >
    best.code[0].text.split(" x ").length ? s : best), group.stratifier[0]);
  const dimensions = widest ? widest.code[0].text.split(" x ") : [];
  const cells = new Map();
  const values = dimensions.map(() => new Set());
  for (const stratifier of group.stratifier) {
    const mine = stratifier.code[0].text.split(" x ");
    for (const stratum of stratifier.stratum) {
      const parts = stratum.component ? stratum.component.map((c) => c.value.text) : [stratum.value.text];
      const key = dimensions.map((d) => (mine.includes(d) ? parts[mine.indexOf(d)] : "*")).join("|");
      cells.set(key, count(stratum.population));
      dimensions.forEach((d, i) => { if (mine.includes(d)) values[i].add(parts[mine.indexOf(d)]); });
    }
  }
  const total = count(group.population.filter((p) => p.code.coding[0].code === "initial-population"));
  const score = group.measureScore ? group.measureScore.value : null;
  const sorted = values.map((v, i) => [...v].sort((a, b) => {
    const order = ORDER[dimensions[i]];
    if (order) return order.indexOf(a) - order.indexOf(b);
    return label(dimensions[i], a).localeCompare(label(dimensions[i], b));
  }));
  return { dimensions, cells, values: sorted, total, score };
}

// What is shown, as rows of text: the table, the chart and the CSV all come from this.
function shown(data, need) {
  const { dimensions, cells, values } = data;
  const at = (...parts) => (cells.has(parts.join("|")) ? cells.get(parts.join("|")) : 0);
  const needAxis = dimensions.indexOf("primary_need");
  if (need && needAxis >= 0 && dimensions.length === 2) {
    const other = 1 - needAxis;
    const rows = values[other].map((v) => [label(dimensions[other], v),
      needAxis === 0 ? at(need, v) : at(v, need)]);
    return { header: [DIMENSION_NAMES[dimensions[other]] || dimensions[other], "Count"], rows,
      chart: rows, note: `${label("primary_need", need)} only.`,
      total: needAxis === 0 ? at(need, "*") : at("*", need) };
  }
  const note = need && needAxis < 0 ? "This figure is not broken down by need type: it shows every need." : "";
  if (dimensions.length === 2) {
    const header = [DIMENSION_NAMES[dimensions[0]] || dimensions[0],
      ...values[1].map((v) => label(dimensions[1], v)), "Total"];
    const rows = values[0].map((a) => [label(dimensions[0], a), ...values[1].map((b) => at(a, b)), at(a, "*")]);
    rows.push(["Total", ...values[1].map((b) => at("*", b)), data.total]);
    return { header, rows, chart: values[0].map((a) => [label(dimensions[0], a), at(a, "*")]), note,
      total: data.total };
  }
  const rows = values[0].map((a) => [label(dimensions[0], a), at(a)]);
  return { header: [DIMENSION_NAMES[dimensions[0]] || dimensions[0], "Count"], rows: [...rows, ["Total", data.total]],
    chart: rows, note, total: data.total };
}

const cellText = (value) => (value === null ? "c" : String(value));

function csv(view) {
  const quote = (text) => (/[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text);
  return [view.header, ...view.rows].map((row) => row.map((v) => quote(typeof v === "string" ? v : cellText(v)))
    .join(",")).join("\n") + "\n";
}

function renderTable(view, title, id) {
  const head = el("tr");
  view.header.forEach((h, i) => head.append(el("th", { scope: "col", class: i ? "number" : "", text: h })));
  const body = el("tbody");
  for (const row of view.rows) {
    const tr = el("tr");
    row.forEach((value, i) => {
      if (i === 0) { tr.append(el("th", { scope: "row", text: value })); return; }
      const td = el("td", { class: "number" });
      if (value === null) {
        td.append(el("span", { "aria-hidden": "true", text: "c" }), el("span", { class: "visually-hidden", text: "suppressed" }));
      } else td.textContent = String(value);
      tr.append(td);
    });
    body.append(tr);
  }
  const caption = el("caption", { id: `${id}-caption`, text: `${title}: figures` });
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-labelledby": `${id}-caption` },
    el("table", {}, caption, el("thead", {}, head), body));
}

function renderChart(canvas, view, title) {
  if (typeof window.Chart !== "function") return;
  charts.push(new window.Chart(canvas, {
    type: "bar",
    data: { labels: view.chart.map((r) => r[0]),
      datasets: [{ label: title, data: view.chart.map((r) => r[1]), backgroundColor: "#1d70b8" }] },
    options: { responsive: true, maintainAspectRatio: false, animation: false, indexAxis: "y",
      plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  }));
}

function render(bundle, need) {
  charts.splice(0).forEach((chart) => chart.destroy());
  const figures = $("figures");
  figures.replaceChildren();
  const measures = new Map(bundle.entry.filter((e) => e.resource.resourceType === "Measure")
    .map((e) => [e.resource.url, e.resource]));
  bundle.entry.filter((e) => e.resource.resourceType === "MeasureReport").forEach((entry, index) => {
    const report = entry.resource;
    const measure = measures.get(report.measure) || { title: report.measure, description: "" };
    const id = `figure-${index}`;
    const data = table(report);
    const view = shown(data, need);
    const section = el("section", { class: "figure", "aria-labelledby": `${id}-title` },
      el("h2", { id: `${id}-title`, text: measure.title }), el("p", { text: measure.description }));
    if (data.score !== null && !need) {
      section.append(el("p", { class: "score", text: `${Math.round(data.score * 1000) / 10}% (of ${cellText(data.total)})` }));
    }
    if (view.note) section.append(el("p", { class: "note", text: view.note }));
    const summary = view.chart.map((r) => `${r[0]}: ${cellText(r[1])}`).join("; ");
    const canvas = el("canvas", { role: "img", "aria-label": `Bar chart of ${measure.title}. ${summary}. The table below has the figures.` });
    section.append(el("div", { class: "chart" }, canvas), renderTable(view, measure.title, id));
    const file = URL.createObjectURL(new Blob([csv(view)], { type: "text/csv" }));
    section.append(el("a", { class: "download", href: file, download: `${measure.id || "figure"}-${$("year").value}.csv` },
      "Download these figures (CSV)", el("span", { class: "visually-hidden", text: `: ${measure.title}` })));
    figures.append(section);
    renderChart(canvas, view, measure.title);
  });
  figures.dataset.done = "true";
}

async function show(event) {
  if (event) event.preventDefault();
  const status = $("status");
  status.classList.remove("error");
  status.textContent = "Loading figures…";
  const query = new URLSearchParams({ year: $("year").value });
  if ($("subject").value) query.set("subject", $("subject").value);
  const response = await fetch(`/dashboard/reports?${query}`, { credentials: "same-origin",
    headers: { Accept: "application/fhir+json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = ((body.issue || [])[0] || {}).diagnostics || `The figures could not be loaded (${response.status}).`;
    if (message.includes("'subject'")) $("subject-field").hidden = false;
    status.classList.add("error");
    status.textContent = message;
    return;
  }
  render(body, $("need").value);
  const need = $("need").value ? `, ${label("primary_need", $("need").value)}` : "";
  status.textContent = `Showing ${$("year").value}${need}.`;
}

document.addEventListener("DOMContentLoaded", async () => {
  fillYears();
  await loadLabels();
  $("filters").addEventListener("submit", show);
  await show();
});
