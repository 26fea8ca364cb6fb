/* The pages' few behaviours, for browsers with script; every page works without it.
   No text lives here: messages come from the page (data-* attributes, rendered in the
   person's language by the server). */
"use strict";

function debounce(fn, ms) {
  let timer = null;
  return function (...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), ms);
  };
}

/* Search as you type: the server renders the result list, we swap it in. */
function liveSearch(input) {
  const target = document.getElementById(input.dataset.results);
  if (!target) return;
  let latest = 0;
  const run = debounce(async () => {
    const ticket = ++latest;
    const url = input.dataset.liveSearch + "?q=" + encodeURIComponent(input.value);
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok || ticket !== latest) return;
      const html = await response.text();
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(target.id);
      if (fresh && ticket === latest) target.replaceChildren(...fresh.childNodes);
    } catch (error) {
      /* offline for a moment: the form still submits */
    }
  }, 200);
  input.addEventListener("input", run);
}

/* GB 11643 check of a resident ID as it is typed; fills birth date and sex. */
const WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECKS = "10X98765432";
function residentIdForm(form) {
  const input = form.querySelector("[data-resident-id]");
  if (!input) return;
  const note = document.createElement("p");
  note.className = "hint live";
  note.setAttribute("aria-live", "polite");
  input.insertAdjacentElement("afterend", note);
  input.addEventListener("input", () => {
    const value = input.value.trim().toUpperCase();
    note.className = "hint live";
    if (value.length < 18) { note.textContent = value.length ? form.dataset.msgLength : ""; return; }
    if (!/^\d{17}[\dX]$/.test(value)) { note.textContent = form.dataset.msgLength; note.className = "field-error live"; return; }
    let sum = 0;
    for (let i = 0; i < 17; i++) sum += Number(value[i]) * WEIGHTS[i];
    if (CHECKS[sum % 11] !== value[17]) { note.textContent = form.dataset.msgCheck; note.className = "field-error live"; return; }
    const y = value.slice(6, 10), m = value.slice(10, 12), d = value.slice(12, 14);
    const date = new Date(Number(y), Number(m) - 1, Number(d));
    if (date.getFullYear() !== Number(y) || date.getMonth() !== Number(m) - 1 || date.getDate() !== Number(d)) {
      note.textContent = form.dataset.msgDate; note.className = "field-error live"; return;
    }
    const birth = form.querySelector("[name=birth_date]");
    const sex = form.querySelector("[name=gender]");
    if (birth) birth.value = `${y}-${m}-${d}`;
    if (sex) sex.value = Number(value[16]) % 2 === 1 ? "male" : "female";
    note.textContent = form.dataset.msgOk;
  });
}

/* Vital signs: warn while typing when a value is unusual or impossible in its unit. */
function vitalField(input) {
  const box = input.closest(".vital");
  const unit = box.querySelector("select[data-unit-for]");
  const [low, high] = input.dataset.plausible.split(",").map(Number);
  const [min, max] = input.dataset.possible.split(",").map(Number);
  const warning = box.querySelector("[data-warning-for]");
  const error = box.querySelector("[data-error-for]");
  const check = () => {
    const typed = input.value.trim().replace(",", ".");
    warning.hidden = true; error.hidden = true;
    box.classList.remove("unusual");
    if (!typed || Number.isNaN(Number(typed))) return;
    let value = Number(typed);
    if (unit) {
      const option = unit.selectedOptions[0];
      value = value * Number(option.dataset.factor) + Number(option.dataset.offset);
    }
    if (value < min || value > max) error.hidden = false;
    else if (value < low || value > high) { warning.hidden = false; box.classList.add("unusual"); }
  };
  input.addEventListener("input", check);
  if (unit) unit.addEventListener("change", check);
}

/* The ICD-10 picker: matches as you type; Enter or a click adds the code. */
function icd10Picker(box) {
  const input = box.querySelector("input[role=combobox]");
  const list = box.querySelector("[role=listbox]");
  const chosen = box.querySelector("[data-chosen]");
  let options = [], active = -1, latest = 0;
  const close = () => { list.hidden = true; input.setAttribute("aria-expanded", "false"); active = -1; };
  const add = (item) => {
    if (chosen.querySelector(`input[value="${CSS.escape(item.code)}"]`)) { close(); input.value = ""; return; }
    const li = document.createElement("li");
    const hidden = document.createElement("input");
    hidden.type = "hidden"; hidden.name = "diagnosis"; hidden.value = item.code;
    const code = document.createElement("code");
    code.textContent = item.code;
    const remove = document.createElement("button");
    remove.type = "button"; remove.className = "small"; remove.textContent = box.dataset.remove;
    remove.addEventListener("click", () => li.remove());
    li.append(hidden, code, " " + item.zh + " ", remove);
    chosen.append(li);
    input.value = "";
    close();
    input.focus();
  };
  const show = (items) => {
    options = items;
    list.replaceChildren();
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "none"; li.textContent = box.dataset.none;
      list.append(li);
    }
    items.forEach((item, i) => {
      const li = document.createElement("li");
      li.id = `icd10-option-${i}`;
      li.setAttribute("role", "option");
      li.dataset.code = item.code;
      const code = document.createElement("code");
      code.textContent = item.code;
      const en = document.createElement("span");
      en.className = "muted"; en.textContent = item.en;
      li.append(code, " " + item.zh + " ", en);
      li.addEventListener("mousedown", (event) => { event.preventDefault(); add(item); });
      list.append(li);
    });
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
    active = -1;
  };
  const highlight = (index) => {
    const items = list.querySelectorAll("[role=option]");
    items.forEach((li) => li.removeAttribute("aria-selected"));
    if (index >= 0 && items[index]) {
      items[index].setAttribute("aria-selected", "true");
      input.setAttribute("aria-activedescendant", items[index].id);
      items[index].scrollIntoView({ block: "nearest" });
    }
    active = index;
  };
  input.addEventListener("input", debounce(async () => {
    const ticket = ++latest;
    const query = input.value.trim();
    if (!query) { close(); return; }
    try {
      const response = await fetch(box.dataset.icd10Picker + "?q=" + encodeURIComponent(query), { credentials: "same-origin" });
      if (response.ok && ticket === latest) show(await response.json());
    } catch (error) { /* keep what is shown */ }
  }, 150));
  input.addEventListener("keydown", (event) => {
    if (list.hidden) return;
    if (event.key === "ArrowDown") { event.preventDefault(); highlight(Math.min(active + 1, options.length - 1)); }
    else if (event.key === "ArrowUp") { event.preventDefault(); highlight(Math.max(active - 1, 0)); }
    else if (event.key === "Enter") {
      event.preventDefault();
      const item = options[active >= 0 ? active : 0];
      if (item) add(item);
    } else if (event.key === "Escape") close();
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
  chosen.querySelectorAll("li").forEach((li) => {
    const remove = document.createElement("button");
    remove.type = "button"; remove.className = "small"; remove.textContent = box.dataset.remove;
    remove.addEventListener("click", () => li.remove());
    li.append(" ", remove);
  });
}

/* The bill: total and out of pocket as the amounts are typed. */
function billFields(fieldset) {
  const amount = (input) => {
    const value = Number(input.value.replace(/[,，¥￥\s]/g, ""));
    return Number.isFinite(value) ? Math.round(value * 100) : 0;
  };
  const money = (cents) => "¥" + (cents / 100).toFixed(2);
  const update = () => {
    let total = 0, paid = 0;
    fieldset.querySelectorAll("[data-fee]").forEach((i) => { total += amount(i); });
    fieldset.querySelectorAll("[data-paid]").forEach((i) => { paid += amount(i); });
    fieldset.querySelector("[data-total]").textContent = money(total);
    const out = fieldset.querySelector("[data-out-of-pocket]");
    out.textContent = money(total - paid);
    out.classList.toggle("bad", paid > total);
  };
  fieldset.addEventListener("input", update);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-search]").forEach(liveSearch);
  document.querySelectorAll("[data-resident-id-form]").forEach(residentIdForm);
  document.querySelectorAll("[data-vital]").forEach(vitalField);
  document.querySelectorAll("[data-icd10-picker]").forEach(icd10Picker);
  document.querySelectorAll("[data-bill]").forEach(billFields);
});
