// Live progress on a job's page: while the job is queued or running, ask /jobs/{id}/state every second, move the
// bar and the message, and reload the page once the job has ended (the report is drawn by the server).
// Without this file the page shows the job as it was when loaded (reload to see more).
"use strict";

(function () {
  var INTERVAL = 1000;
  var LIVE = { queued: true, running: true };

  function setUp(box) {
    var url = box.dataset.jobState;
    if (!url || !LIVE[box.dataset.status]) return;
    var page = document;
    function field(name) {
      return page.querySelector("[data-job-field='" + name + "']");
    }

    function show(state) {
      var status = field("status"), bar = field("bar"), percent = field("percent"), message = field("message");
      if (status) {
        status.textContent = state.status;
        status.className = "job-status status-" + state.status;
      }
      if (bar) bar.value = state.progress;
      if (percent) percent.textContent = state.percent + "%";
      if (message) message.textContent = state.message || "";
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (response) {
          if (response.status === 401 || response.status === 403 || response.status === 404) {
            var message = field("message");
            if (message) message.textContent = "(live updates stopped: reload the page)";
            return null;
          }
          return response.ok ? response.json() : { retry: true };
        })
        .then(function (state) {
          if (state === null) return;
          if (state.retry) {
            window.setTimeout(poll, INTERVAL * 3);
            return;
          }
          show(state);
          if (state.done) window.location.reload();
          else window.setTimeout(poll, INTERVAL);
        })
        .catch(function () {
          window.setTimeout(poll, INTERVAL * 3); // the server restarting, or the network: try again later
        });
    }
    window.setTimeout(poll, INTERVAL);
  }

  function init() {
    document.querySelectorAll("[data-job-state]").forEach(setUp);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
