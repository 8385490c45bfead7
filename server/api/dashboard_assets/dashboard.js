"use strict";
(function () {
  const KEY = "msserve_key";
  const authRequired = document.body.dataset.auth === "required";
  const $ = (id) => document.getElementById(id);

  function storedKey() {
    return sessionStorage.getItem(KEY) || ($("upload-key") ? $("upload-key").value : "") || "";
  }
  function authHeaders() {
    const key = storedKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function show(id, text) { const el = $(id); el.textContent = text; el.hidden = !text; }
  function money(v) { return v == null ? "-" : "$" + Number(v).toFixed(4); }
  function pct(v) { return v == null ? "-" : (100 * v).toFixed(1) + "%"; }
  function secs(v) { return v == null ? "-" : (v < 1 ? (1000 * v).toFixed(0) + " ms" : v.toFixed(2) + " s"); }
  function errorText(body, status) {
    return (body && body.error && body.error.message) ? body.error.message : "HTTP " + status;
  }

  // -- login -------------------------------------------------------------------------------------------------
  const login = $("login");
  if (login) {
    login.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("login-key").value.trim();
      const response = await fetch("/dashboard/login", {
        method: "POST", headers: { Authorization: "Bearer " + key }, credentials: "same-origin" });
      if (response.ok) {
        sessionStorage.setItem(KEY, key);
        window.location.reload();
      } else {
        show("login-error", "That key was not accepted.");
      }
    });
    return;
  }
  const logout = $("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      sessionStorage.removeItem(KEY);
      await fetch("/dashboard/logout", { method: "POST", credentials: "same-origin" });
      window.location.reload();
    });
  }
  if (authRequired && !sessionStorage.getItem(KEY)) { $("upload-key").hidden = false; }

  // -- state -------------------------------------------------------------------------------------------------
  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text == null ? "-" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
  }
  function renderRows(recent, highlight) {
    const body = $("recent");
    body.replaceChildren();
    for (const r of recent) {
      const tr = document.createElement("tr");
      tr.dataset.requestId = r.request_id;
      if (r.request_id === highlight) tr.className = "new";
      cell(tr, new Date(r.ts * 1000).toLocaleTimeString());
      cell(tr, r.request_id.slice(0, 12));
      cell(tr, r.endpoint);
      cell(tr, r.key);
      cell(tr, r.status + (r.error ? " " + r.error : ""));
      cell(tr, r.tier, r.tier ? "tier-" + r.tier : "");
      cell(tr, r.reason, "reason");
      cell(tr, r.score == null ? null : r.score.toFixed(3));
      cell(tr, secs(r.ttft_s));
      cell(tr, secs(r.e2e_s));
      cell(tr, r.prompt_tokens == null ? null : r.prompt_tokens + " / " + r.completion_tokens);
      cell(tr, money(r.cost_usd));
      body.appendChild(tr);
    }
  }
  let highlight = null;
  async function refresh() {
    const response = await fetch("/dashboard/api/state", { headers: authHeaders(), credentials: "same-origin" });
    if (!response.ok) return;
    const s = await response.json();
    $("c-requests").textContent = String(s.decisions.local + s.decisions.azure);
    $("c-escalation").textContent = pct(s.escalation_rate);
    $("c-escalation-recent").textContent = "recent " + pct(s.recent_escalation_rate);
    $("c-spend").textContent = money(s.spend_azure_usd);
    $("c-savings").textContent = money(s.savings_usd);
    $("c-engine").textContent = s.draining ? "draining" : s.engine.state;
    $("c-engine-load").textContent = s.engine.running + " running, " + s.engine.waiting + " waiting";
    $("c-breaker").textContent = s.azure_configured ? s.breaker : "not configured";
    renderRows(s.recent, highlight);
  }
  // The signed-in key's batches (the Batch API lists only the caller's own), newest first, with their progress.
  async function refreshBatches() {
    const response = await fetch("/v1/batches?limit=20", { headers: authHeaders(), credentials: "same-origin" });
    if (!response.ok) return;
    const page = await response.json();
    const body = $("batches");
    body.replaceChildren();
    for (const b of page.data) {
      const counts = b.request_counts || { total: 0, completed: 0, failed: 0 };
      const tr = document.createElement("tr");
      tr.dataset.batchId = b.id;
      cell(tr, new Date(b.created_at * 1000).toLocaleString());
      cell(tr, b.id);
      cell(tr, b.endpoint);
      cell(tr, b.status);
      const td = document.createElement("td");
      const bar = document.createElement("progress");
      bar.max = Math.max(counts.total, 1);
      bar.value = counts.completed + counts.failed;
      td.appendChild(bar);
      tr.appendChild(td);
      cell(tr, counts.completed);
      cell(tr, counts.failed);
      cell(tr, counts.total);
      body.appendChild(tr);
    }
  }
  setInterval(refresh, 3000);
  setInterval(refreshBatches, 3000);
  refreshBatches();

  // -- upload ------------------------------------------------------------------------------------------------
  $("upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    show("upload-error", "");
    const file = $("upload-file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file, file.name);
    $("upload-button").disabled = true;
    const started = performance.now();
    try {
      const response = await fetch("/v1/captions", { method: "POST", body: form, headers: authHeaders() });
      const body = await response.json().catch(() => null);
      if (!response.ok) { show("upload-error", errorText(body, response.status)); return; }
      const first = body.data[0];
      highlight = response.headers.get("x-request-id");
      $("caption").textContent = first.caption || "(empty caption)";
      $("caption-tier").textContent = first.tier;
      $("caption-reason").textContent = first.reason;
      $("caption-score").textContent = first.score == null ? "-" : first.score.toFixed(3);
      $("caption-latency").textContent = secs((performance.now() - started) / 1000);
      $("caption-request-id").textContent = highlight || "";
      $("upload-result").hidden = false;
      await refresh();
    } catch (err) {
      show("upload-error", String(err));
    } finally {
      $("upload-button").disabled = false;
    }
  });
})();

// -- router learning: judged outcomes and the learning curve, drawn as SVG from /dashboard/api/learning --------
(function () {
  const section = document.getElementById("learning");
  if (!section) return;
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = { helped: "#1e7a3c", same: "#8a93a3", hurt: "#b3261e", before: "#8a93a3", after: "#0b5cad" };
  const W = 420, H = 180, PAD = 28;
  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text != null) node.textContent = text;
    return node;
  }
  function chart(svg, series, xMax, yMin, yMax, xLabel) {
    svg.replaceChildren();
    const x = (v) => PAD + (W - 2 * PAD) * (xMax ? v / xMax : 0);
    const y = (v) => H - PAD - (H - 2 * PAD) * ((v - yMin) / ((yMax - yMin) || 1));
    svg.appendChild(el("rect", { x: PAD, y: PAD, width: W - 2 * PAD, height: H - 2 * PAD, fill: "none", stroke: "#dde1e7" }));
    svg.appendChild(el("text", { x: PAD, y: H - 8, "font-size": 10 }, xLabel + " (0 to " + xMax + ")"));
    svg.appendChild(el("text", { x: 2, y: PAD - 6, "font-size": 10 }, String(+yMax.toFixed(3))));
    svg.appendChild(el("text", { x: 2, y: H - PAD + 10, "font-size": 10 }, String(+yMin.toFixed(3))));
    let legend = W - PAD - 60;
    for (const [name, points] of Object.entries(series)) {
      if (!points.length) continue;
      const d = points.map(([px, py], i) => (i ? "L" : "M") + x(px).toFixed(1) + " " + y(py).toFixed(1)).join(" ");
      svg.appendChild(el("path", { d: d, fill: "none", stroke: COLOURS[name], "stroke-width": 2 }));
      for (const [px, py] of points.length < 30 ? points : []) {
        svg.appendChild(el("circle", { cx: x(px), cy: y(py), r: 2.5, fill: COLOURS[name] }));
      }
      svg.appendChild(el("text", { x: legend, y: PAD + 12, "font-size": 10, fill: COLOURS[name] }, name));
      legend -= 48;
    }
  }
  async function refresh() {
    const key = sessionStorage.getItem("msserve_key");
    const response = await fetch("/dashboard/api/learning", {
      headers: key ? { Authorization: "Bearer " + key } : {}, credentials: "same-origin" });
    if (!response.ok) return;
    const s = await response.json();
    if (!s.enabled) return;
    section.hidden = false;
    const quality = s.estimated_quality == null ? "-" : (100 * s.estimated_quality).toFixed(1) + "%";
    document.getElementById("learning-summary").textContent = s.router + " \u00b7 " + s.counts.total +
      " outcomes, " + s.counts.labelled + " labelled \u00b7 " + s.shadow_calls + " shadow calls \u00b7 " +
      "estimated quality at the threshold " + quality;
    const totals = { helped: 0, same: 0, hurt: 0 };
    const judged = { helped: [[0, 0]], same: [[0, 0]], hurt: [[0, 0]] };
    s.judged.forEach(([, verdict], i) => {
      totals[verdict] += 1;
      for (const name of Object.keys(judged)) judged[name].push([i + 1, totals[name]]);
    });
    const most = Math.max(1, totals.helped, totals.same, totals.hurt);
    chart(document.getElementById("chart-judged"), judged, s.judged.length, 0, most, "judged outcomes");
    const curve = { before: [], after: [] };
    for (const point of s.curve) {
      if (point.apgr_before != null) curve.before.push([point.outcomes, point.apgr_before]);
      if (point.apgr_after != null) curve.after.push([point.outcomes, point.apgr_after]);
    }
    const values = curve.before.concat(curve.after).map((p) => p[1]);
    const xMax = Math.max(1, ...s.curve.map((p) => p.outcomes || 0));
    chart(document.getElementById("chart-curve"), curve, xMax, Math.min(0.5, ...values), Math.max(1, ...values),
          "outcomes used");
  }
  refresh();
  setInterval(refresh, 10000);
})();
