// diffbench report: the results table (sort, filter, column choice, CSV of the filtered view).
// Plain DOM, no library, no network: the data is the JSON block #table-data in this page.
(function () {
  "use strict";
  var source = document.getElementById("table-data");
  var table = document.getElementById("results");
  if (!source || !table) return;
  var data = JSON.parse(source.textContent);
  var state = { sort: -1, desc: false, filters: {}, search: "", all: false };
  var NUMBER = /^\s*(<=|>=|!=|<|>|=)?\s*(-?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*$/i;
  var RANGE = /^\s*(-?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*\.\.\s*(-?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*$/i;

  function columns() {
    var out = [];
    data.columns.forEach(function (c, i) { if (state.all || c.shown) out.push(i); });
    return out;
  }

  // A column filter: "<0.9", ">=4", "=8", "!=2", "4..16" on numbers; otherwise text it must contain
  // (case-insensitive), or must not contain after a leading "!".
  function predicate(text, numeric) {
    text = text.trim();
    if (!text) return null;
    var m;
    if (numeric && (m = RANGE.exec(text))) {
      var lo = parseFloat(m[1]), hi = parseFloat(m[2]);
      return function (raw) { return raw !== null && raw >= lo && raw <= hi; };
    }
    if (numeric && (m = NUMBER.exec(text)) && m[1]) {
      var v = parseFloat(m[2]), op = m[1];
      return function (raw) {
        if (raw === null) return false;
        return op === "<" ? raw < v : op === ">" ? raw > v : op === "<=" ? raw <= v : op === ">=" ? raw >= v
          : op === "!=" ? raw !== v : raw === v;
      };
    }
    var negate = text.charAt(0) === "!";
    var needle = (negate ? text.slice(1) : text).toLowerCase();
    return function (raw, shown) {
      var found = shown.toLowerCase().indexOf(needle) >= 0 || String(raw === null ? "" : raw).toLowerCase().indexOf(needle) >= 0;
      return negate ? !found : found;
    };
  }

  function rows() {
    var tests = [];
    Object.keys(state.filters).forEach(function (k) {
      var i = +k, p = predicate(state.filters[k], data.columns[i].kind === "num");
      if (p) tests.push([i, p]);
    });
    var search = state.search.trim().toLowerCase();
    var shownCols = columns();
    var out = [];
    for (var r = 0; r < data.rows.length; r++) {
      var ok = tests.every(function (t) { return t[1](data.rows[r][t[0]], data.text[r][t[0]]); });
      if (ok && search) {
        ok = shownCols.some(function (i) { return data.text[r][i].toLowerCase().indexOf(search) >= 0; });
      }
      if (ok) out.push(r);
    }
    if (state.sort >= 0) {
      var c = state.sort, numeric = data.columns[c].kind === "num", sign = state.desc ? -1 : 1;
      out.sort(function (a, b) {
        var x = data.rows[a][c], y = data.rows[b][c];
        if (x === null && y === null) return a - b;
        if (x === null) return 1;  // empty cells last, whichever the direction
        if (y === null) return -1;
        var d = numeric ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
        return d !== 0 ? sign * d : a - b;
      });
    }
    return out;
  }

  function head() {
    var thead = table.tHead || table.createTHead();
    thead.innerHTML = "";
    var names = thead.insertRow(), filters = thead.insertRow();
    filters.className = "filters";
    columns().forEach(function (i) {
      var col = data.columns[i], th = document.createElement("th");
      th.className = "sortable" + (col.kind === "num" ? " num" : "");
      th.title = col.help || ("sort by " + col.name);
      th.textContent = col.name;
      if (state.sort === i) {
        var arrow = document.createElement("span");
        arrow.className = "arrow";
        arrow.textContent = state.desc ? "\u25bc" : "\u25b2";
        th.appendChild(arrow);
      }
      th.addEventListener("click", function () {
        state.desc = state.sort === i ? !state.desc : false;
        state.sort = i;
        head();
        body();
      });
      names.appendChild(th);
      var cell = document.createElement("th"), input = document.createElement("input");
      input.type = "search";
      input.placeholder = col.kind === "num" ? "<, >, a..b" : "filter";
      input.setAttribute("aria-label", "filter " + col.name);
      input.dataset.column = col.name;
      input.value = state.filters[i] || "";
      input.addEventListener("input", function () { state.filters[i] = input.value; body(); });
      cell.appendChild(input);
      filters.appendChild(cell);
    });
  }

  function body() {
    var tbody = table.tBodies[0] || table.createTBody();
    var shownCols = columns(), picked = rows(), html = [];
    picked.forEach(function (r) {
      html.push("<tr>");
      shownCols.forEach(function (i) {
        var cls = data.columns[i].kind === "num" ? "num" : "";
        if (data.columns[i].name === "status" && data.rows[r][i] !== "ok") cls += " failed";
        html.push('<td class="' + cls + '">' + escape(data.text[r][i]) + "</td>");
      });
      html.push("</tr>");
    });
    tbody.innerHTML = html.join("");
    var count = document.getElementById("row-count");
    if (count) count.textContent = picked.length + " of " + data.rows.length + " rows";
  }

  function escape(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  // The filtered, sorted view as CSV: the shown columns, raw (unformatted) values.
  function csv() {
    var shownCols = columns();
    var quote = function (v) {
      var s = v === null ? "" : String(v);
      return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    };
    var lines = [shownCols.map(function (i) { return quote(data.columns[i].name); }).join(",")];
    rows().forEach(function (r) {
      lines.push(shownCols.map(function (i) { return quote(data.rows[r][i]); }).join(","));
    });
    return lines.join("\n") + "\n";
  }

  function download() {
    var blob = new Blob([csv()], { type: "text/csv" });
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "diffbench-results-filtered.csv";
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 0);
  }

  var search = document.getElementById("table-search");
  if (search) search.addEventListener("input", function () { state.search = search.value; body(); });
  var all = document.getElementById("all-columns");
  if (all) all.addEventListener("change", function () { state.all = all.checked; head(); body(); });
  var reset = document.getElementById("table-reset");
  if (reset) reset.addEventListener("click", function () {
    state.sort = -1; state.desc = false; state.filters = {}; state.search = "";
    if (search) search.value = "";
    head(); body();
  });
  var button = document.getElementById("csv-download");
  if (button) button.addEventListener("click", download);
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  });
  head();
  body();
  window.diffbenchReport = { csv: csv, rows: function () { return rows().length; }, columns: function () { return columns().length; } };
})();
