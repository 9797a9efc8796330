// The console's only script (CSP: script-src 'self'; nothing inline).
// - <button data-copy="ID">: copies the text of element ID to the clipboard.
// - <button data-open-dialog="ID">: opens <dialog id=ID> as a modal; [data-close-dialog] closes it.
"use strict";
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest("button") : null;
  if (!target) return;
  if (target.dataset.copy) {
    const source = document.getElementById(target.dataset.copy);
    if (!source) return;
    const text = source.textContent.trim();
    const done = () => {
      target.dataset.copied = "true";
      target.textContent = "Copied";
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => {});
    } else {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      if (document.execCommand("copy")) done();
    }
  } else if (target.dataset.openDialog) {
    const dialog = document.getElementById(target.dataset.openDialog);
    if (dialog && typeof dialog.showModal === "function") {
      event.preventDefault();
      dialog.showModal();
    }
  } else if (target.hasAttribute("data-close-dialog")) {
    const dialog = target.closest("dialog");
    if (dialog) {
      event.preventDefault();
      dialog.close();
    }
  }
});
