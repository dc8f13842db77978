// The dashboard's only script, written by hand: live progress and events over server-sent events,
// charts re-fetched as metrics arrive, confirmation prompts. Every page works without it.
"use strict";

(function () {
  function when(seconds) {
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function setBadge(element, status) {
    if (!element) return;
    element.textContent = status;
    element.className = "badge " + status;
  }

  function setBar(bar, step, total) {
    if (!bar || !total) return;
    bar.max = total;
    bar.value = step || 0;
  }

  // The job list: one stream for every unfinished job on the page.
  function watchJobList(table) {
    const source = new EventSource(table.dataset.progressStream);
    source.addEventListener("progress", function (message) {
      const job = JSON.parse(message.data);
      const row = table.querySelector('tr[data-job="' + job.id + '"]');
      if (!row) return;
      setBadge(row.querySelector(".status .badge"), job.status);
      row.querySelector(".stage").textContent = job.stage;
      row.querySelector(".steps").textContent = (job.step === null ? "–" : job.step) + "/" + (job.total || "–");
      setBar(row.querySelector("progress"), job.step, job.total);
    });
    source.addEventListener("end", function () { source.close(); });
    source.addEventListener("signed-out", function () { source.close(); location.reload(); });
  }

  // A job page: events as they happen, the progress bar, the charts; reload once a stage's gate
  // has spoken or the job ended, so its tables come from the server.
  const OTHER_EVENTS = ["status", "message", "stage", "probe", "method", "eval", "gate"];

  // The charts are drawn by the server from every step so far: ask at most this often.
  const CHART_REFRESH_MS = 2000;

  function watchJob(page) {
    const source = new EventSource(page.dataset.eventsStream);
    const events = document.getElementById("events");
    const bar = document.getElementById("job-progress");
    const steps = document.getElementById("job-steps");
    const stepEvents = document.getElementById("step-events");
    let chartTimer = null;

    function refreshCharts() {
      chartTimer = null;
      fetch(page.dataset.chartUrl, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) document.getElementById("charts").innerHTML = html; });
    }

    source.addEventListener("metrics", function (message) {
      const data = JSON.parse(message.data).data || {};
      setBar(bar, data.step, data.total_steps);
      steps.textContent = data.step + "/" + data.total_steps;
      stepEvents.textContent = String(Number(stepEvents.textContent) + 1);
      if (chartTimer === null) chartTimer = setTimeout(refreshCharts, CHART_REFRESH_MS);
    });
    OTHER_EVENTS.forEach(function (type) {
      source.addEventListener(type, function (message) {
        const event = JSON.parse(message.data);
        const row = document.createElement("tr");
        row.className = event.level;
        [when(event.created_at), event.level, event.type, event.message].forEach(function (text) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.appendChild(cell);
        });
        events.appendChild(row);
        if (type === "status" && event.data && event.data.to) {
          setBadge(document.querySelector("#job-status .badge"), event.data.to);
          const started = document.getElementById("job-started");
          if (event.data.to === "running" && started.textContent === "–") started.textContent = when(event.created_at);
        }
        if (type === "gate") setTimeout(function () { location.reload(); }, 500);
      });
    });
    source.addEventListener("end", function () {
      source.close();
      setTimeout(function () { location.reload(); }, 500);
    });
    source.addEventListener("signed-out", function () { source.close(); location.reload(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const list = document.querySelector("[data-progress-stream]");
    if (list) watchJobList(list);
    const job = document.querySelector("[data-events-stream]");
    if (job) watchJob(job);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (submit) {
        if (!window.confirm(form.dataset.confirm)) submit.preventDefault();
      });
    });
    document.querySelectorAll("a[data-back]").forEach(function (link) {
      link.addEventListener("click", function (click) {
        if (history.length > 1) { click.preventDefault(); history.back(); }
      });
    });
  });
})();
