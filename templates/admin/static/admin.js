// mailmag admin: live progress bars and the issue editor. No framework, no build step.
// Everything shown comes back as text (textContent), never as markup, except the preview,
// which goes into a sandboxed frame without scripts. The editor's words come from the page
// (#editor-words), so that its strings live in the template with the others.
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
  function paint(row, line, status) {
    row.querySelector('[data-field="status"]').textContent = status;
    row.querySelector('[data-field="percent"]').textContent = line.percent;
    row.querySelector('[data-field="done"]').textContent = line.done;
    row.querySelector('[data-field="total"]').textContent = line.total;
    const bar = row.querySelector(".bar");
    bar.setAttribute("aria-valuenow", line.percent);
    bar.firstElementChild.style.width = line.percent + "%";
  }
  async function progressOf(ids) {
    try {
      const response = await fetch("/admin/progress?ids=" + ids.slice(0, 50).join(","), { credentials: "same-origin" });
      return response.ok ? await response.json() : null;
    } catch (e) { return null; /* the next poll tries again */ }
  }

  const rows = Array.from(document.querySelectorAll("table[data-live] tr[data-issue]"));
  async function poll() {
    const lines = await progressOf(rows.map(function (r) { return r.dataset.issue; }));
    if (lines) {
      rows.forEach(function (row) {
        const line = lines[row.dataset.issue];
        if (line) paint(row, line, line.status);
      });
      const sent = document.querySelector('[data-count="sent"]');
      if (sent && rows.length === 1 && lines[rows[0].dataset.issue]) sent.textContent = lines[rows[0].dataset.issue].counts.sent;
    }
    window.setTimeout(poll, 1000);
  }
  if (rows.length) window.setTimeout(poll, 500);

  // --- the issue editor ---------------------------------------------------------------------
  // One state on the page, {status, queuing, pause_reason, scheduled_at}: the header, the
  // progress row, the offered actions and whether the fields can be changed are all drawn
  // from it by show(), whichever answer brought it (the page, an action, a save, a poll).
  // What each status offers is the server's own table (mailer/issues.py), sent with the page.
  const editor = document.getElementById("editor");
  if (!editor) return;
  const form = document.getElementById("issue-form");
  const frame = document.getElementById("preview");
  const box = document.getElementById("preview-box");
  const compliance = document.getElementById("compliance");
  const statusLine = document.getElementById("editor-status");
  const saveResult = document.getElementById("save-result");
  const actionResult = document.getElementById("action-result");
  const progressRow = document.querySelector("#send tr[data-issue]");
  const table = JSON.parse(editor.dataset.actions);
  const issueId = editor.dataset.issue;
  let state = JSON.parse(editor.dataset.state);
  const LIVE = ["scheduled", "sending", "paused"];

  const words = {};
  document.getElementById("editor-words").content.querySelectorAll("[data-word]").forEach(function (li) { words[li.dataset.word] = li.textContent; });
  function say(key, values) {
    let text = words[key] || key;
    Object.keys(values || {}).forEach(function (name) { text = text.split("{" + name + "}").join(values[name]); });
    return text;
  }

  function allowed(action) {
    if (!issueId) return action === "save";
    return (table[state.status] || []).indexOf(action) >= 0;
  }
  function label() {
    if (!issueId) return say("label-new");
    return state.queuing ? say("label-queuing", { status: state.status }) : state.status;
  }
  function localTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  // Changes not yet saved: what leaves (a test, a scheduled or an immediate send) is the
  // saved issue, so those wait until the form is saved.
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
  let saved = JSON.stringify(draft());
  let busy = false;
  function dirty() { return issueId && JSON.stringify(draft()) !== saved; }

  function show() {
    const explain = say(issueId ? "status-" + state.status : "status-new", {
      at: localTime(state.scheduled_at),
      reason: state.pause_reason ? ": " + state.pause_reason : "",
    });
    statusLine.querySelector('[data-show="status"]').textContent = label();
    statusLine.querySelector('[data-show="explain"]').textContent =
      state.queuing ? explain + " " + say("queuing") : explain;
    if (progressRow) progressRow.querySelector('[data-field="status"]').textContent = label();
    editor.dataset.status = state.status;
    document.querySelectorAll("[data-offer]").forEach(function (el) { el.hidden = !allowed(el.dataset.offer); });
    const editable = allowed("save");
    Array.from(form.elements).forEach(function (el) {
      if (el.tagName === "BUTTON") return;
      if (el.tagName === "SELECT") el.disabled = !editable || (el.name === "magazine_id" && Boolean(issueId));
      else el.readOnly = !editable;
    });
    const unsaved = editable && dirty();
    const note = document.getElementById("unsaved");
    if (note) note.hidden = !unsaved;
    document.querySelectorAll("#send button").forEach(function (button) {
      button.disabled = busy || (unsaved && button.hasAttribute("data-needs-saved"));
    });
    form.querySelector("#save").disabled = busy;
  }
  function adopt(issue) {
    state = {
      status: issue.status,
      queuing: Boolean(issue.queuing),
      pause_reason: issue.pause_reason || null,
      scheduled_at: issue.scheduled_at || null,
    };
    show();
  }

  // The issue's own poll. An answer to a poll sent before an action's answer arrived may
  // be older than that answer: it is dropped, not shown.
  let epoch = 0;
  let pollTimer = null;
  async function pollIssue() {
    const asked = epoch;
    const lines = await progressOf([issueId]);
    const line = lines && lines[issueId];
    if (line && asked === epoch) {
      adopt(line.issue);
      if (progressRow) paint(progressRow, line, label());
    }
    pollSoon(LIVE.indexOf(state.status) >= 0 || state.queuing ? 1000 : 5000);
  }
  function pollSoon(delay) {
    window.clearTimeout(pollTimer);
    pollTimer = window.setTimeout(pollIssue, delay);
  }
  if (issueId) pollSoon(500);

  // --- the preview: laid out at the width a mail client gives it, scaled to fit its box.
  let width = 600;
  function fit() {
    const scale = Math.min(1, box.clientWidth / (width + 2));
    frame.style.width = width + 2 + "px";
    frame.style.height = box.clientHeight / scale + "px";
    frame.style.transform = scale < 1 ? "scale(" + scale + ")" : "";
    document.getElementById("preview-scale").textContent =
      scale < 1 ? say("scale", { percent: Math.floor(scale * 100) }) : "";
  }
  document.querySelectorAll("button[data-width]").forEach(function (button) {
    button.addEventListener("click", function () {
      width = parseInt(button.dataset.width, 10);
      document.querySelectorAll("button[data-width]").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
      fit();
    });
  });
  if (window.ResizeObserver) new ResizeObserver(fit).observe(box);
  window.addEventListener("resize", fit);
  fit();

  let previewTimer = null;
  let previewAsked = 0;
  async function preview(toTop) {
    const body = draft();
    body.magazine_id = parseInt(form.elements.magazine_id.value, 10);
    if (!body.subject || !body.html_body) { compliance.textContent = say("needs-content"); compliance.className = "error"; return; }
    const asked = ++previewAsked;
    const result = await api("POST", "/api/v1/issues/preview", body);
    if (asked !== previewAsked) return; // a later edit asked again
    if (result.ok) {
      compliance.textContent = say("passes");
      compliance.className = "ok";
      if (toTop) {
        // A fresh document starts at its top; bring the frame's top into view too.
        frame.addEventListener("load", function () {
          const top = box.getBoundingClientRect().top;
          if (top < 0 || top > window.innerHeight - 80) document.getElementById("preview-pane").scrollIntoView({ block: "start" });
        }, { once: true });
      }
      frame.srcdoc = result.data.html;
      document.getElementById("preview-subject").textContent = say("subject", { subject: result.data.subject });
    } else {
      compliance.textContent = say("refused-preview", { reason: detail(result) });
      compliance.className = "error";
    }
  }
  form.addEventListener("input", function () {
    show();
    window.clearTimeout(previewTimer);
    previewTimer = window.setTimeout(preview, 400);
  });
  preview(false);

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!allowed("save") || busy) return;
    busy = true; show();
    const body = draft();
    const result = issueId
      ? await api("PATCH", "/api/v1/issues/" + issueId, body)
      : await api("POST", "/api/v1/issues", body);
    busy = false;
    if (result.ok && !issueId) { window.location.assign("/admin/issues/" + result.data.id); return; }
    if (result.ok) {
      epoch++;
      saved = JSON.stringify(body);
      saveResult.textContent = say("saved");
      saveResult.className = "ok";
      adopt(result.data);
      if (progressRow) progressRow.querySelector('[data-field="subject"]').textContent = result.data.subject;
      preview(true);
    } else {
      saveResult.textContent = say("not-saved", { reason: detail(result) });
      saveResult.className = "error";
      show();
      if (result.status === 409) pollSoon(0); // the issue moved on elsewhere: show where
    }
  });

  const testForm = document.getElementById("test-send");
  if (testForm) {
    testForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      const out = document.getElementById("test-result");
      const addresses = testForm.elements.addresses.value.split(",").map(function (a) { return a.trim(); }).filter(Boolean);
      busy = true; show();
      out.textContent = say("working");
      const result = await api("POST", "/api/v1/issues/" + issueId + "/test-send", { addresses: addresses });
      busy = false; show();
      out.textContent = result.ok
        ? Object.entries(result.data.results).map(function (e) { return e[0] + ": " + e[1]; }).join("; ")
        : say("not-sent", { reason: detail(result) });
      out.className = result.ok ? "" : "error";
      if (result.status === 409) pollSoon(0);
    });
  }

  async function act(action, body) {
    busy = true; epoch++; show();
    actionResult.textContent = say("working");
    actionResult.className = "";
    const result = await api("POST", "/api/v1/issues/" + issueId + "/" + action, body);
    busy = false; epoch++;
    if (result.ok) {
      // Says what was done, not the status: the header has that, and it moves on.
      actionResult.textContent = say("done-" + action);
      actionResult.className = "ok";
      adopt(result.data);
    } else {
      actionResult.textContent = say("refused", { reason: detail(result) });
      actionResult.className = "error";
      show();
    }
    pollSoon(0);
  }
  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () { if (!busy) act(button.dataset.action); });
  });
  const scheduleForm = document.getElementById("schedule-form");
  if (scheduleForm) {
    scheduleForm.addEventListener("submit", function (event) {
      event.preventDefault();
      const local = new Date(scheduleForm.elements.at.value);
      if (isNaN(local.getTime())) { actionResult.textContent = say("no-time"); actionResult.className = "error"; return; }
      act("schedule", { at: local.toISOString() });
    });
  }
  show();
})();
