// The popup widget opens /sdk/oauth/connect#session=<token>. The token is in the fragment
// (never sent to a server, never in a Referer); hand it to the server-rendered flow.
(function () {
  "use strict";
  var params = new URLSearchParams(window.location.hash.slice(1));
  var token = params.get("session");
  history.replaceState(null, "", window.location.pathname);
  if (!token) {
    document.getElementById("page-title").textContent = "This connection link is incomplete.";
    return;
  }
  window.location.replace("/connect/start?session=" + encodeURIComponent(token));
})();
