// The console's only script (CSP: script-src 'self'; nothing inline).
// - <button data-copy="ID">: copies the text of element ID to the clipboard.
// - <button data-open-dialog="ID">: opens <dialog id=ID> as a modal; [data-close-dialog] closes it.
// - [data-focus-error] (a rejected form's error, templates/_error.html): focused when the page
//   loads, or when the dialog holding it opens, so it is in view and read out. A <dialog> the
//   server sent open (a rejected save in it) is reopened as a modal: centred in the window, not
//   at the foot of the page.
"use strict";

const focusError = (scope) => {
  const error = scope.querySelector("[data-focus-error]");
  if (error) error.focus();
};

const openModal = (dialog) => {
  if (typeof dialog.showModal !== "function") return false;
  if (dialog.open) dialog.close();
  dialog.showModal();
  focusError(dialog);
  return true;
};

document.addEventListener("DOMContentLoaded", () => {
  const opened = document.querySelector("dialog[open]");
  if (opened && opened.querySelector("[data-focus-error]") && openModal(opened)) return;
  focusError(document);
});
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
    if (dialog && openModal(dialog)) event.preventDefault();
  } else if (target.hasAttribute("data-close-dialog")) {
    const dialog = target.closest("dialog");
    if (dialog) {
      event.preventDefault();
      dialog.close();
    }
  }
});

// The Download key form: once sent, the stale error goes, the button is used up, and the page
// says which file is coming and what to do with it (a file answer leaves this page in place).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.id !== "download-form") return;
  const done = document.getElementById("download-done");
  if (!done) return;
  const select = form.querySelector("#encryption");
  const profile = select && select.value === "mobileconfig";
  const name = profile ? done.dataset.fileMobileconfig : done.dataset.fileP12;
  const file = document.getElementById("download-file");
  if (file && name) file.textContent = name;
  const error = document.getElementById("error");
  if (error) error.hidden = true;
  done.hidden = false;
  done.focus();
  const button = form.querySelector("button[type=submit]");
  // Disabled after the browser has taken the form's fields, not before.
  if (button) setTimeout(() => { button.disabled = true; }, 0);
});
