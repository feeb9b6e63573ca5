// Admin console behaviour, loaded as a file so the page's CSP needs no inline script.
"use strict";

function copySecret(button) {
  const target = document.getElementById(button.dataset.copyTarget);
  if (!target) return;
  const text = target.textContent.trim();
  const done = () => {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => selectText(target));
  } else {
    selectText(target);  // plain-http development: let the admin press Ctrl+C
  }
}

function selectText(node) {
  const range = document.createRange();
  range.selectNodeContents(node);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy-target]");
  if (copy) copySecret(copy);
});

