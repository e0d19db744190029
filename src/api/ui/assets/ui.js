// mxguard dashboard: refreshes the parts of the page marked data-live from a fresh copy of the
// page every few seconds. The page reads the same without it (it then reloads every 30 s).
(function () {
  "use strict";
  var EVERY_MS = 5000;
  function refresh() {
    fetch(location.pathname + location.search, { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) { location.reload(); return null; }
        return resp.ok ? resp.text() : null;
      })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next && next.innerHTML !== el.innerHTML) el.innerHTML = next.innerHTML;
        });
        document.body.setAttribute("data-refreshed", new Date().toISOString());
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { setTimeout(refresh, EVERY_MS); });
  }
  setTimeout(refresh, EVERY_MS);
})();
