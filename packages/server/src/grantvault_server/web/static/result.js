// Deliver the Connect result: postMessage to the opener, but only to the session's own
// allowed origin (never "*"), or continue to the session's own return URL.
(function () {
  "use strict";
  var node = document.getElementById("gv-result");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  if (window.opener && data.allowed_origin) {
    try {
      window.opener.postMessage(data.message, data.allowed_origin);
    } catch (e) { /* opener gone */ }
    window.setTimeout(function () { window.close(); }, 50);
    return;
  }
  var link = document.getElementById("gv-continue");
  if (link && data.auto_continue) {
    window.location.replace(link.href);
  }
})();
