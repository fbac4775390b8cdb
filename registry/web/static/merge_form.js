// The merge form (issue 16): show only the parameters the selected method accepts (hidden ones are disabled, so
// they are not sent) and add parent rows. Without this file every parameter is shown and the form still works.
"use strict";
(function () {
  const form = document.querySelector("[data-merge-form]");
  if (!form) return;
  const method = form.querySelector("[data-merge-method]");

  function showParams() {
    const chosen = method.value;
    form.querySelectorAll("[data-param]").forEach(function (row) {
      const used = row.dataset.methods.split(" ").indexOf(chosen) !== -1;
      row.hidden = !used;
      row.querySelectorAll("input, select").forEach(function (input) { input.disabled = !used; });
    });
  }
  method.addEventListener("change", showParams);
  showParams();

  const add = form.querySelector("[data-add-source]");
  const list = form.querySelector("[data-merge-sources]");
  if (add && list) {
    add.hidden = false;
    add.addEventListener("click", function () {
      const rows = list.querySelectorAll("[data-merge-source]");
      const row = rows[rows.length - 1].cloneNode(true);
      const n = rows.length + 1;
      row.querySelectorAll("input").forEach(function (input) {
        input.value = "";
        input.setAttribute("aria-label", (input.name === "source" ? "parent " : "weight ") + n);
      });
      list.appendChild(row);
      row.querySelector("input").focus();
    });
  }
})();
