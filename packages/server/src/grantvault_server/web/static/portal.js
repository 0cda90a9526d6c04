// The operator portal's one script: progressive enhancement only (every page works without
// it). Copy buttons: <button data-copy="ID" hidden> copies the text of element ID.
"use strict";

(function () {
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }

  function textOf(element) {
    var items = element.querySelectorAll("li");
    if (items.length) {
      return Array.prototype.map.call(items, function (li) { return li.textContent.trim(); }).join("\n");
    }
    return element.textContent.trim().replace(/\s+/g, element.id === "totp-secret" ? "" : " ");
  }

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target) { return; }
    var label = button.textContent;
    var section = button.closest("section");
    var status = section ? section.querySelector(".copy-status") : null;
    button.hidden = false;
    button.addEventListener("click", function () {
      copyText(textOf(target)).then(function () {
        button.textContent = "Copied";
        if (status) { status.textContent = "Copied to the clipboard."; }
        window.setTimeout(function () { button.textContent = label; }, 2000);
      }, function () {
        if (status) { status.textContent = "Could not copy: select the text and copy it yourself."; }
      });
    });
  });
})();
