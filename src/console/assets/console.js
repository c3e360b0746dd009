// Sluice console: the Copy buttons. Everything else works without script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      var status = document.getElementById(button.getAttribute("data-status"));
      if (!source) {
        return;
      }
      var text = source.textContent;
      var done = function (message) {
        if (status) {
          status.textContent = message;
        }
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { done("Copied to the clipboard."); },
          function () { selectText(source); done("Selected: press Ctrl+C to copy."); }
        );
      } else {
        selectText(source);
        done(document.execCommand && document.execCommand("copy")
          ? "Copied to the clipboard."
          : "Selected: press Ctrl+C to copy.");
      }
    });
  });
});

function selectText(element) {
  var range = document.createRange();
  range.selectNodeContents(element);
  var selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}
