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
