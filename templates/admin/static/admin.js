// mailmag admin: live progress bars and the issue editor. No framework, no build step.
// Everything shown comes back as text (textContent), never as markup, except the preview,
// which goes into a sandboxed frame without scripts.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  async function api(method, path, body) {
    const response = await fetch(path, {
      method: method,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { ok: response.ok, status: response.status, data: data };
  }

  function detail(result) {
    if (!result.data) return "HTTP " + result.status;
    const d = result.data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map(function (e) { return (e.loc || []).slice(-1)[0] + ": " + e.msg; }).join("; ");
    return "HTTP " + result.status;
  }

  // --- progress bars ------------------------------------------------------------------------
  const rows = Array.from(document.querySelectorAll("table[data-live] tr[data-issue]"));
  function paint(row, line) {
    row.querySelector('[data-field="status"]').textContent = line.status;
    row.querySelector('[data-field="percent"]').textContent = line.percent;
    row.querySelector('[data-field="done"]').textContent = line.done;
    row.querySelector('[data-field="total"]').textContent = line.total;
    const bar = row.querySelector(".bar");
    bar.setAttribute("aria-valuenow", line.percent);
    bar.firstElementChild.style.width = line.percent + "%";
    const sent = document.querySelector('[data-count="sent"]');
    if (sent && rows.length === 1) sent.textContent = line.counts.sent;
  }
  async function poll() {
    if (!rows.length) return;
    const ids = rows.map(function (r) { return r.dataset.issue; }).slice(0, 50).join(",");
    try {
      const response = await fetch("/admin/progress?ids=" + ids, { credentials: "same-origin" });
      if (response.ok) {
        const lines = await response.json();
        rows.forEach(function (row) { if (lines[row.dataset.issue]) paint(row, lines[row.dataset.issue]); });
      }
    } catch (e) { /* the next poll tries again */ }
    window.setTimeout(poll, 1000);
  }
  if (rows.length) window.setTimeout(poll, 500);

  // --- the issue editor ---------------------------------------------------------------------
  const editor = document.getElementById("editor");
  if (!editor) return;
  const form = document.getElementById("issue-form");
  const frame = document.getElementById("preview");
  const compliance = document.getElementById("compliance");
  const statusLine = document.getElementById("editor-status");
  let issueId = editor.dataset.issue;
  const editable = editor.dataset.editable === "true";

  function draft() {
    const value = function (name) { return form.elements[name].value; };
    const body = {
      subject: value("subject"),
      preheader: value("preheader"),
      html_body: value("html_body"),
      text_body: value("text_body") || null,
      locale: value("locale"),
      route: value("route") || null,
    };
    if (!issueId) body.magazine_id = parseInt(value("magazine_id"), 10);
    return body;
  }

  let timer = null;
  async function preview() {
    const body = draft();
    body.magazine_id = parseInt(form.elements.magazine_id.value, 10);
    if (!body.subject || !body.html_body) { compliance.textContent = "a subject and a body are needed"; return; }
    const result = await api("POST", "/api/v1/issues/preview", body);
    if (result.ok) {
      compliance.textContent = "passes: footer, sender and unsubscribe links are in place";
      compliance.className = "ok";
      frame.srcdoc = result.data.html;
      document.getElementById("preview-subject").textContent = "Subject: " + result.data.subject;
    } else {
      compliance.textContent = "refused: " + detail(result);
      compliance.className = "error";
    }
  }
  function later() { window.clearTimeout(timer); timer = window.setTimeout(preview, 400); }
  form.addEventListener("input", later);
  document.querySelectorAll("button[data-width]").forEach(function (button) {
    button.addEventListener("click", function () { frame.style.width = button.dataset.width + "px"; });
  });
  preview();

  if (!editable) {
    Array.from(form.elements).forEach(function (el) { el.disabled = true; });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const result = issueId
      ? await api("PATCH", "/api/v1/issues/" + issueId, draft())
      : await api("POST", "/api/v1/issues", draft());
    if (result.ok) {
      if (!issueId) { window.location.assign("/admin/issues/" + result.data.id); return; }
      statusLine.textContent = "Saved. Status: " + result.data.status;
    } else {
      statusLine.textContent = "Not saved: " + detail(result);
      statusLine.className = "error";
    }
  });

  const testForm = document.getElementById("test-send");
  if (testForm) {
    testForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      const addresses = testForm.elements.addresses.value.split(",").map(function (a) { return a.trim(); }).filter(Boolean);
      const result = await api("POST", "/api/v1/issues/" + issueId + "/test-send", { addresses: addresses });
      const out = document.getElementById("test-result");
      out.textContent = result.ok
        ? Object.entries(result.data.results).map(function (e) { return e[0] + ": " + e[1]; }).join("; ")
        : "Not sent: " + detail(result);
    });
  }

  const actionResult = document.getElementById("action-result");
  async function act(action, body) {
    const result = await api("POST", "/api/v1/issues/" + issueId + "/" + action, body);
    if (result.ok) {
      actionResult.textContent = "Done: the issue is " + result.data.status + ".";
      actionResult.className = "ok";
      statusLine.textContent = "Status: " + result.data.status;
    } else {
      actionResult.textContent = "Refused: " + detail(result);
      actionResult.className = "error";
    }
  }
  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () { act(button.dataset.action); });
  });
  const scheduleForm = document.getElementById("schedule-form");
  if (scheduleForm) {
    scheduleForm.addEventListener("submit", function (event) {
      event.preventDefault();
      const local = new Date(scheduleForm.elements.at.value);
      act("schedule", { at: local.toISOString() });
    });
  }
})();
