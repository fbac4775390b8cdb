// The sign-in link `adreg serve` prints on its first start (http://127.0.0.1:PORT/login#token=...): the token is in
// the fragment, which the browser never sends, so it reaches no server log. This fills the sign-in form with it,
// removes it from the address bar and the session history (history.replaceState), and submits the form.
"use strict";
(function () {
  var match = /^#token=(adreg_[A-Za-z0-9_-]+)$/.exec(window.location.hash);
  if (!match) {
    return;
  }
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  var form = document.querySelector("form[data-sign-in]");
  var field = form && form.querySelector("input[name=token]");
  if (!field) {
    return;
  }
  field.value = match[1];
  form.submit();
})();
