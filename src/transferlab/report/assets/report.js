/* transferlab report.html: the views of one run, drawn from the JSON embedded in the page.
   Plain browser JavaScript, no library, no network: the file works offline from disk.
   Every text from the data enters the page as a text node (never as HTML). */
(function () {
  "use strict";
  var FORMAT = 1;
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var SVGNS = "http://www.w3.org/2000/svg";

  // -- small helpers -----------------------------------------------------------------
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    add(e, kids);
    return e;
  }
  function svg(tag, attrs, kids) {
    var e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    add(e, kids);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") e.textContent = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    });
  }
  function add(e, kids) {
    if (kids === null || kids === undefined) return;
    if (!Array.isArray(kids)) kids = [kids];
    kids.forEach(function (k) {
      if (k === null || k === undefined || k === false) return;
      e.appendChild(typeof k === "string" || typeof k === "number" ? document.createTextNode(String(k)) : k);
    });
  }
  function $(id) { return document.getElementById(id); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function num(x) { return typeof x === "number" && isFinite(x); }
  function fmt(x, d) {
    if (!num(x)) return "–";
    d = d || 3;
    if (x === 0) return "0";
    var a = Math.abs(x);
    return a < Math.pow(10, -d) || a >= 1e5 ? x.toExponential(d - 1) : x.toFixed(d);
  }
  function sfmt(x) { return num(x) ? (x > 0 ? "+" : "") + fmt(x) : "–"; }
  function pfmt(p) { return num(p) ? (p < 1e-3 ? p.toExponential(1) : p.toFixed(3)) : "–"; }
  // Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi], zero among them when in range.
  function ticks(lo, hi) {
    var raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
    var step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag, out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }
  function mean(a) { var s = 0; a.forEach(function (x) { s += x; }); return a.length ? s / a.length : NaN; }
  function options(sel, values, labels, keep) {
    var old = sel.value;
    clear(sel);
    values.forEach(function (v, i) { sel.appendChild(el("option", { value: v, text: labels ? labels[i] : v })); });
    if (keep && values.map(String).indexOf(old) >= 0) sel.value = old;
  }
  function table(head, rows, cls) {
    var t = el("table", { class: cls || "grid" });
    t.appendChild(el("thead", null, el("tr", null, head.map(function (h) { return el("th", { text: h }); }))));
    var b = el("tbody");
    rows.forEach(function (r) { b.appendChild(el("tr", null, r.map(function (c) { return el("td", null, c); }))); });
    t.appendChild(b);
    return t;
  }
  function snippet(s, n) { s = String(s === null || s === undefined ? "" : s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  if (D.format !== FORMAT) {
    document.querySelector("main").prepend(el("p", { class: "warn loud", text:
      "This page reads report data format " + FORMAT + "; this file holds format " + D.format +
      ". Regenerate it with this version: transferlab report RUN_DIR" }));
    return;
  }

  // -- the rows ----------------------------------------------------------------------
  var COLS = D.rows.cols;
  var ROWS = D.rows.data.map(function (a) {
    var o = {};
    for (var i = 0; i < COLS.length; i++) o[COLS[i]] = a[i];
    return o;
  });
  var REF = D.reference, PRIMARY = D.primary;
  var SCORES = D.scores;
  var BY_UNIT = {};
  var PAIRS = [], PAIR_AT = {};
  ROWS.forEach(function (r) {
    var pk = r.model + "|" + r.seed + "|" + r.pair_id;
    BY_UNIT[pk + "|" + r.condition] = r;
    var p = PAIR_AT[pk];
    if (!p) {
      p = { key: pk, model: r.model, seed: r.seed, pair_id: r.pair_id, source_id: r.source_id,
            target_id: r.target_id, source_group: r.source_group, target_group: r.target_group, rows: {} };
      PAIR_AT[pk] = p;
      PAIRS.push(p);
    }
    p.rows[r.condition] = r;
  });
  PAIRS.forEach(function (p) {
    var parts = [promptText(p.source_id), promptText(p.target_id)];
    Object.keys(p.rows).forEach(function (c) { parts.push(p.rows[c].text || ""); });
    p.hay = parts.join("\n").toLowerCase();
  });
  function promptText(id) { var p = D.prompts[id]; return p && p.text !== undefined ? p.text : ""; }
  function row(model, seed, pair, cond) { return BY_UNIT[model + "|" + seed + "|" + pair + "|" + cond]; }

  // -- highlighting: markers, source-overlap and target-overlap words ------------------
  var WORD = /[\p{L}\p{N}_]+(?:'[\p{L}\p{N}_]+)*/gu;
  var SETS = {};
  function sets(id) {
    if (SETS[id]) return SETS[id];
    var p = D.prompts[id] || {};
    var cw = {};
    (p.cw || []).forEach(function (w) { cw[w] = true; });
    var re = null;
    if (p.markers && p.markers.length) {
      var alts = p.markers.slice().sort(function (a, b) { return b.length - a.length; }).map(function (m) {
        return m.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/\s+/g, "\\s+");
      });
      re = new RegExp("(?<![\\p{L}\\p{N}_])(?:" + alts.join("|") + ")(?:s|es|'s|\u2019s)?(?![\\p{L}\\p{N}_])", "giu");
    }
    SETS[id] = { cw: cw, markers: re };
    return SETS[id];
  }
  function highlight(text, sourceId, targetId) {
    text = text || "";
    var frag = document.createDocumentFragment();
    var src = sets(sourceId), tgt = sets(targetId);
    var spans = [];
    if (src.markers) {
      src.markers.lastIndex = 0;
      var m;
      while ((m = src.markers.exec(text)) !== null) {
        if (m[0].length === 0) { src.markers.lastIndex++; continue; }
        spans.push([m.index, m.index + m[0].length, "m"]);
      }
    }
    var inMarker = function (a, b) { return spans.some(function (s) { return s[2] === "m" && a < s[1] && b > s[0]; }); };
    var words = [];
    WORD.lastIndex = 0;
    var w;
    while ((w = WORD.exec(text)) !== null) {
      var lw = w[0].toLowerCase(), a = w.index, b = a + w[0].length;
      if (inMarker(a, b)) continue;
      if (src.cw[lw]) words.push([a, b, "s"]);
      else if (tgt.cw[lw]) words.push([a, b, "t"]);
    }
    spans = spans.concat(words).sort(function (x, y) { return x[0] - y[0]; });
    var at = 0;
    spans.forEach(function (s) {
      if (s[0] < at) return;
      if (s[0] > at) frag.appendChild(document.createTextNode(text.slice(at, s[0])));
      frag.appendChild(el("mark", { class: s[2], text: text.slice(s[0], s[1]) }));
      at = s[1];
    });
    if (at < text.length) frag.appendChild(document.createTextNode(text.slice(at)));
    return frag;
  }

  // -- tabs ----------------------------------------------------------------------------
  var DRAWN = {};
  function show(view) {
    document.querySelectorAll("#tabs button").forEach(function (b) { b.classList.toggle("on", b.dataset.view === view); });
    document.querySelectorAll(".view").forEach(function (s) { s.classList.toggle("on", s.id === "view-" + view); });
    if (!DRAWN[view] && DRAWERS[view]) { DRAWERS[view](); DRAWN[view] = true; }
    if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  }
  document.querySelectorAll("#tabs button").forEach(function (b) {
    b.addEventListener("click", function () { show(b.dataset.view); });
  });

  // -- Verdict ---------------------------------------------------------------------------
  function drawVerdict() {
    var rd = $("reading");
    D.reading.forEach(function (line) { rd.appendChild(el("p", { class: "reading", text: line })); });
    if (D.confirmatory.length) {
      var c = $("confirmatory");
      c.appendChild(el("h3", { text: "Confirmatory family" }));
      c.appendChild(el("p", { class: "hint", text: "The contrasts the config claims before the run: Holm within them only, family intervals at Holm's level, TOST for equivalence claims. Every other row is exploratory (unadjusted)." }));
      var keys = Object.keys(D.confirmatory[0]);
      c.appendChild(table(keys, D.confirmatory.map(function (r) {
        return keys.map(function (k) { var v = r[k]; return num(v) ? (k === "Holm p" ? pfmt(v) : k === "n" ? String(v) : fmt(v)) : (v === null || v === undefined ? "–" : String(v)); });
      }), "grid family"));
    }
    var ul = $("warnings");
    if (!D.warnings.length) ul.appendChild(el("li", { class: "ok", text: "No warnings: every audited intervention fired, no condition differs from the reference in more than its plan, no score is missing." }));
    D.warnings.forEach(function (w) { ul.appendChild(el("li", { class: w.loud ? "warn loud" : "warn", "data-kind": w.kind, text: w.message })); });
    var notes = $("notes");
    D.notes.forEach(function (n) { notes.appendChild(el("p", { class: "note", text: n })); });
    var scoresWithDeltas = SCORES.filter(function (s) { return D.deltas.some(function (r) { return r.score === s; }); });
    var sel = $("forest-score");
    options(sel, scoresWithDeltas);
    sel.value = D.primary_score;
    sel.addEventListener("change", function () { forest(sel.value); });
    forest(sel.value || D.primary_score);
  }
  function forest(score) {
    $("forest-score-name").textContent = score;
    var box = clear($("forest"));
    var rows = [];
    D.models.forEach(function (m) {
      ["vs_reference", "vs_control", "claim"].forEach(function (fam) {
        D.deltas.forEach(function (r) {
          if (r.model === m && r.family === fam && r.score === score) rows.push(r);
        });
      });
    });
    if (!rows.length) { box.appendChild(el("p", { text: "No paired deltas for this score." })); return; }
    var lo = 0, hi = 0;
    rows.forEach(function (r) {
      [r.ci_low, r.ci_high, r.mean_diff].forEach(function (v) { if (num(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    });
    if (hi - lo === 0) { lo -= 1; hi += 1; }
    var pad = (hi - lo) * 0.06; lo -= pad; hi += pad;
    var W = 980, L = 300, R = 250, H = 26, top = 24;
    var plotW = W - L - R;
    var x = function (v) { return L + (v - lo) / (hi - lo) * plotW; };
    var s = svg("svg", { class: "forest", width: W, height: top + rows.length * H + 30, viewBox: "0 0 " + W + " " + (top + rows.length * H + 30) });
    s.appendChild(svg("line", { x1: x(0), x2: x(0), y1: top - 8, y2: top + rows.length * H, class: "zero" }));
    s.appendChild(svg("text", { x: L, y: 14, class: "axis", text: "Δ " + score }));
    var COLX = [W - R + 10, W - R + 150, W - R + 232];
    ["Δ [95% CI]", "p", "n"].forEach(function (h, k) { s.appendChild(svg("text", { x: COLX[k], y: 14, class: "axis", text: h })); });
    var multi = D.models.length > 1;
    rows.forEach(function (r, i) {
      var y = top + i * H + H / 2;
      var claim = r.role && r.role !== "exploratory";
      var label = (multi ? r.model + ": " : "") + r.condition + " − " + r.reference + (claim ? " ★" : "");
      var g = svg("g", { class: "frow " + r.family + (claim ? " claim" : ""), "data-condition": r.condition, "data-reference": r.reference });
      g.appendChild(svg("text", { x: L - 10, y: y + 4, class: "label", "text-anchor": "end", text: label }));
      if (num(r.ci_low) && num(r.ci_high)) g.appendChild(svg("line", { x1: x(r.ci_low), x2: x(r.ci_high), y1: y, y2: y, class: "ci" }));
      if (num(r.mean_diff)) g.appendChild(svg("circle", { cx: x(r.mean_diff), cy: y, r: 5, class: "pt" }));
      var p = claim ? pfmt(r.p_holm) + " Holm" : pfmt(num(r.p_boot) ? r.p_boot : r.p_perm_cluster) + " unadj.";
      [sfmt(r.mean_diff) + " [" + fmt(r.ci_low) + ", " + fmt(r.ci_high) + "]", p, String(r.n)].forEach(function (t, k) {
        g.appendChild(svg("text", { x: COLX[k], y: y + 4, class: "num", text: t }));
      });
      g.appendChild(svg("title", { text: label + ": Δ " + sfmt(r.mean_diff) + ", d_z " + fmt(r.d_z) + (claim ? ", " + r.role + " claim, verdict " + (r.verdict || "–") : ", exploratory") }));
      s.appendChild(g);
    });
    ticks(lo, hi).forEach(function (v) {
      var xx = x(v), yb = top + rows.length * H;
      s.appendChild(svg("line", { x1: xx, x2: xx, y1: yb, y2: yb + 5, class: "tick" }));
      s.appendChild(svg("text", { x: xx, y: yb + 18, "text-anchor": "middle", class: "axis", text: String(+v.toPrecision(6)) }));
    });
    box.appendChild(s);
  }

  // -- Examples ------------------------------------------------------------------------
  var EX = { q: "", model: "", seed: "", sgroup: "", tgroup: "", conds: null, sortCond: "", sortScore: "",
             sortKind: "value", sortDir: "desc", page: 0, per: 25 };
  function distinct(key) {
    var seen = {}, out = [];
    PAIRS.forEach(function (p) { var v = p[key]; if (v !== null && v !== undefined && !seen[v]) { seen[v] = true; out.push(v); } });
    return out;
  }
  function drawExamplesControls() {
    var any = function (vals) { return [""].concat(vals.map(String)); };
    var anyLabels = function (vals) { return ["(all)"].concat(vals.map(String)); };
    [["ex-model", "model"], ["ex-seed", "seed"], ["ex-sgroup", "source_group"], ["ex-tgroup", "target_group"]].forEach(function (c) {
      var vals = distinct(c[1]);
      options($(c[0]), any(vals), anyLabels(vals));
    });
    if (EX.conds === null) EX.conds = D.conditions.slice();
    var box = clear($("ex-conds"));
    D.conditions.forEach(function (c) {
      var cb = el("input", { type: "checkbox", value: c, "data-condition": c });
      cb.checked = EX.conds.indexOf(c) >= 0;
      cb.addEventListener("change", function () {
        EX.conds = D.conditions.filter(function (k) { return box.querySelector('input[value="' + CSS.escape(k) + '"]').checked; });
        EX.page = 0; drawExamples();
      });
      box.appendChild(el("label", { class: "cond" }, [cb, " " + c]));
    });
    options($("ex-sort-cond"), [""].concat(D.conditions), ["(pair order)"].concat(D.conditions));
    options($("ex-sort-score"), SCORES);
    var bind = function (id, key, ev) {
      $(id).addEventListener(ev || "change", function () { EX[key] = $(id).value; EX.page = 0; drawExamples(); });
    };
    bind("ex-search", "q", "input"); bind("ex-model", "model"); bind("ex-seed", "seed");
    bind("ex-sgroup", "sgroup"); bind("ex-tgroup", "tgroup"); bind("ex-sort-cond", "sortCond");
    bind("ex-sort-score", "sortScore"); bind("ex-sort-kind", "sortKind"); bind("ex-sort-dir", "sortDir");
    $("ex-prev").addEventListener("click", function () { if (EX.page > 0) { EX.page--; drawExamples(); } });
    $("ex-next").addEventListener("click", function () { EX.page++; drawExamples(); });
    EX.sortScore = D.primary_score;
    $("ex-sort-score").value = EX.sortScore;
  }
  function syncExampleControls() {
    $("ex-search").value = EX.q; $("ex-model").value = EX.model; $("ex-seed").value = EX.seed;
    $("ex-sgroup").value = EX.sgroup; $("ex-tgroup").value = EX.tgroup; $("ex-sort-cond").value = EX.sortCond;
    $("ex-sort-score").value = EX.sortScore; $("ex-sort-kind").value = EX.sortKind; $("ex-sort-dir").value = EX.sortDir;
    $("ex-conds").querySelectorAll("input").forEach(function (cb) { cb.checked = EX.conds.indexOf(cb.value) >= 0; });
  }
  function sortValue(p) {
    var r = p.rows[EX.sortCond];
    if (!r) return NaN;
    var v = r[EX.sortScore];
    if (!num(v)) return NaN;
    if (EX.sortKind === "delta") {
      var b = p.rows[REF];
      return b && num(b[EX.sortScore]) ? v - b[EX.sortScore] : NaN;
    }
    return v;
  }
  function filteredPairs() {
    var q = EX.q.trim().toLowerCase();
    var terms = q ? q.split(/\s+/) : [];
    var out = PAIRS.filter(function (p) {
      if (EX.model !== "" && String(p.model) !== EX.model) return false;
      if (EX.seed !== "" && String(p.seed) !== EX.seed) return false;
      if (EX.sgroup !== "" && String(p.source_group) !== EX.sgroup) return false;
      if (EX.tgroup !== "" && String(p.target_group) !== EX.tgroup) return false;
      for (var i = 0; i < terms.length; i++) if (p.hay.indexOf(terms[i]) < 0) return false;
      return true;
    });
    if (EX.sortCond) {
      var sign = EX.sortDir === "asc" ? 1 : -1;
      var keyed = out.map(function (p) { return [sortValue(p), p]; });
      keyed.sort(function (a, b) {
        var x = a[0], y = b[0];
        if (!num(x) && !num(y)) return 0;
        if (!num(x)) return 1;
        if (!num(y)) return -1;
        return sign * (x - y);
      });
      out = keyed.map(function (k) { return k[1]; });
    }
    return out;
  }
  function scoreLine(r, ref) {
    var box = el("div", { class: "scores" });
    SCORES.forEach(function (s) {
      var v = r[s];
      var d = ref && ref !== r && num(v) && num(ref[s]) ? v - ref[s] : null;
      var cls = "sc" + (s === D.primary_score ? " primary" : "");
      box.appendChild(el("span", { class: cls, "data-score": s, title: s },
        s + " " + fmt(v, 2) + (d !== null ? " (" + (d > 0 ? "+" : "") + fmt(d, 2) + ")" : "")));
    });
    var tags = [];
    if (r.finish_reason === "eos") tags.push(r.n_new_tokens === 0 ? "ended at EOS at once" : "ended at EOS");
    if (r.n_never_fired) tags.push(r.n_never_fired + " never fired");
    tags.forEach(function (t) { box.appendChild(el("span", { class: "tag", text: t })); });
    return box;
  }
  function drawExamples() {
    var list = filteredPairs();
    var pages = Math.max(1, Math.ceil(list.length / EX.per));
    if (EX.page >= pages) EX.page = pages - 1;
    var slice = list.slice(EX.page * EX.per, (EX.page + 1) * EX.per);
    $("ex-count").textContent = list.length + " of " + PAIRS.length + " pairs" + (EX.q ? " matching “" + EX.q + "”" : "") +
      (EX.sortCond ? "; sorted by " + EX.sortScore + (EX.sortKind === "delta" ? " change vs " + REF : "") + " of " + EX.sortCond : "");
    $("ex-page").textContent = "page " + (EX.page + 1) + " of " + pages;
    var conds = D.conditions.filter(function (c) { return EX.conds.indexOf(c) >= 0; });
    var thead = clear($("ex-table").querySelector("thead"));
    thead.appendChild(el("tr", null, [el("th", { text: "pair" }), el("th", { text: "source" }), el("th", { text: "target" })]
      .concat(conds.map(function (c) {
        var role = D.prompt_roles[c] === "source" ? " (from the source)" : "";
        return el("th", { "data-condition": c, text: c + role });
      }))));
    var tbody = clear($("ex-table").querySelector("tbody"));
    slice.forEach(function (p) {
      var tr = el("tr", { "data-pair": p.key });
      var open = el("button", { class: "open", text: "open", title: "open this pair",
        onclick: function () { openPair(p.model, p.seed, p.pair_id); } });
      tr.appendChild(el("td", { class: "pid" }, [String(p.pair_id), el("br"), el("small", { text: (D.models.length > 1 ? p.model + " · " : "") + "seed " + p.seed }), el("br"), open]));
      tr.appendChild(el("td", { class: "prompt" }, [el("div", { class: "pg", text: p.source_group + " · " + p.source_id }), el("div", { class: "ptext", text: promptText(p.source_id) || p.source_id })]));
      tr.appendChild(el("td", { class: "prompt" }, [el("div", { class: "pg", text: p.target_group + " · " + p.target_id }), el("div", { class: "ptext", text: promptText(p.target_id) || p.target_id })]));
      var ref = p.rows[REF];
      conds.forEach(function (c) {
        var r = p.rows[c];
        if (!r) { tr.appendChild(el("td", { class: "missing", text: "–" })); return; }
        var cell = el("td", { class: "cont", "data-condition": c });
        cell.appendChild(el("div", { class: "ctext" }, highlight(r.text, p.source_id, p.target_id)));
        cell.appendChild(scoreLine(r, ref));
        tr.appendChild(cell);
      });
      tbody.appendChild(tr);
    });
    $("ex-prev").disabled = EX.page === 0;
    $("ex-next").disabled = EX.page >= pages - 1;
  }

  // -- Pair drilldown ----------------------------------------------------------------------
  var PAIR = { model: null, seed: null, pair: 0, cond: null };
  function openPair(model, seed, pair, cond) {
    PAIR.model = model; PAIR.seed = seed; PAIR.pair = pair;
    if (cond) PAIR.cond = cond;
    show("pair");
    syncPairControls();
    drawPair();
  }
  function drawPairControls() {
    options($("pair-model"), D.models);
    options($("pair-seed"), D.seeds.map(String));
    var others = D.conditions.filter(function (c) { return c !== REF; });
    options($("pair-cond"), others);
    if (PAIR.model === null) { PAIR.model = D.models[0]; PAIR.seed = D.seeds[0]; PAIR.pair = PAIRS.length ? PAIRS[0].pair_id : 0; }
    if (PAIR.cond === null) PAIR.cond = PRIMARY && others.indexOf(PRIMARY) >= 0 ? PRIMARY : others[0];
    $("pair-model").addEventListener("change", function () { PAIR.model = $("pair-model").value; drawPair(); });
    $("pair-seed").addEventListener("change", function () { PAIR.seed = Number($("pair-seed").value); drawPair(); });
    $("pair-id").addEventListener("change", function () { PAIR.pair = Number($("pair-id").value); drawPair(); });
    $("pair-cond").addEventListener("change", function () { PAIR.cond = $("pair-cond").value; drawPair(); });
    syncPairControls();
  }
  function syncPairControls() {
    if (!DRAWN.pair) return;
    $("pair-model").value = PAIR.model; $("pair-seed").value = String(PAIR.seed);
    $("pair-id").value = PAIR.pair; if (PAIR.cond) $("pair-cond").value = PAIR.cond;
  }
  // The prompt positions an intervention wrote: the audit's count placed by the intervention's alignment.
  function writtenPositions(n, info, a) {
    var where = info[4] || { align: "right" };
    var phase = info[2] || "prompt";
    var count = num(a[3]) ? a[3] : 0;
    if (phase === "both" || phase === "decode") count -= num(a[2]) ? a[2] : 0;
    if (phase === "decode" || count <= 0 || where.align === "none") return [];
    var end = where.prefix ? n - 1 : n;
    var out = [];
    if (where.align === "range") {
      for (var i = where.a; i < Math.min(where.b, n); i++) out.push(i);
    } else if (where.align === "left") {
      var s0 = where.skip_first ? 1 : 0;
      for (var j = s0; j < Math.min(s0 + count, end); j++) out.push(j);
    } else {
      for (var k = Math.max(0, end - count); k < end; k++) out.push(k);
    }
    return out;
  }
  var PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  function tokenStrip(tokens, written, infos) {
    var box = el("div", { class: "tokens" });
    tokens.forEach(function (t, i) {
      var by = [];
      written.forEach(function (w, k) { if (w.indexOf(i) >= 0) by.push(k); });
      var shown = t.replace(/\n/g, "↵").replace(/ /g, "·");
      var attrs = { class: "tok" + (by.length ? " w" : ""), "data-pos": i,
        title: "position " + i + (by.length ? ": written by " + by.map(function (k) { return infos[k][0]; }).join(", ") : "") };
      var span = el("span", attrs, shown);
      if (by.length) span.style.boxShadow = by.map(function (k, j) { return "inset 0 " + (-3 - 3 * j) + "px 0 " + PALETTE[k % PALETTE.length]; }).join(",");
      box.appendChild(span);
    });
    return box;
  }
  function departure(a, b) {
    a = a || ""; b = b || "";
    var i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    if (i === a.length && i === b.length) return null;
    var words = a.slice(0, i).split(/\s+/).filter(Boolean).length;
    return { chr: i, word: words };
  }
  function splitAt(text, at, cls) {
    text = text || "";
    if (at === null) return [el("span", { class: "same", text: text })];
    return [el("span", { class: "same", text: text.slice(0, at) }), el("span", { class: cls, text: text.slice(at) })];
  }
  function drawPair() {
    var body = clear($("pair-body"));
    var m = PAIR.model, s = PAIR.seed, p = PAIR.pair, c = PAIR.cond;
    var ref = row(m, s, p, REF), r = row(m, s, p, c);
    if (!ref && !r) { body.appendChild(el("p", { class: "warn", text: "No rows for pair " + p + " (model " + m + ", seed " + s + ")." })); return; }
    var any = ref || r;
    var toks = (D.tokens[m] || {});
    var infos = D.interventions[m + "|" + c] || [];
    var audit = r ? r.audit || [] : [];
    var role = D.prompt_roles[c];
    var fedId = role === "source" ? any.source_id : any.target_id;
    body.appendChild(el("h3", { text: "Prompts" }));
    [["source", any.source_id, any.source_group], ["target", any.target_id, any.target_group]].forEach(function (x) {
      var id = x[1];
      var written = [];
      if (id === fedId && toks[id]) {
        written = infos.map(function (info, k) {
          var a = audit.filter(function (q) { return q[0] === k; })[0];
          return a ? writtenPositions(toks[id].length, info, a) : [];
        });
      }
      body.appendChild(el("div", { class: "pp" }, [
        el("div", { class: "pg", text: x[0] + " · " + x[2] + " · " + id + (toks[id] ? " · " + toks[id].length + " tokens as fed" : "") }),
        toks[id] ? tokenStrip(toks[id], written, infos) : el("div", { class: "ptext", text: promptText(id) || id })
      ]));
    });
    if (infos.length) {
      var legend = el("div", { class: "legend" });
      infos.forEach(function (info, k) {
        legend.appendChild(el("span", { class: "sw" }, [el("i", { style: "background:" + PALETTE[k % PALETTE.length] }), " " + info[0] + " @ " + info[1] + " (" + info[2] + ")" + (info[4] && info[4].approx ? " (placement approximate)" : "")]));
      });
      body.appendChild(legend);
      body.appendChild(el("p", { class: "hint", text: "Positions written: the audit's count of prompt positions, placed by the intervention's alignment (the audit records counts, not indices); a KV splice writes the cache of every prompt token but the last in the corrected flavour. Hover a token for its position." }));
    }
    body.appendChild(el("h3", { text: "Audit of " + c }));
    if (audit.length) {
      body.appendChild(table(["intervention", "hook point", "phase", "calls (prefill)", "calls (decode)", "positions", "change norm", "never fired"],
        audit.map(function (a) {
          var info = infos[a[0]] || ["?", "?", "?"];
          return [info[0], String(info[1]), String(info[2]), String(a[1]), String(a[2]), String(a[3]), fmt(a[4]), a[5] ? "YES" : "no"];
        }), "grid audit"));
    } else body.appendChild(el("p", { text: r ? "No audit rows (the condition has no intervention)." : "No row for this condition." }));
    body.appendChild(el("h3", { text: "Continuations" }));
    var list = el("div", { class: "conts" });
    D.conditions.forEach(function (k) {
      var rr = row(m, s, p, k);
      if (!rr) return;
      var dep = k === REF || !ref ? null : departure(ref.text, rr.text);
      var label = k === REF ? k + " (reference)" : k + (dep ? " — departs from " + REF + " at word " + (dep.word + 1) + " (character " + dep.chr + ")" : " — identical to " + REF);
      var text = k === REF || !ref ? [el("span", null, highlight(rr.text, rr.source_id, rr.target_id))] : splitAt(rr.text, dep ? dep.chr : null, "diff");
      list.appendChild(el("div", { class: "cont-row" + (k === c ? " chosen" : ""), "data-condition": k, "data-departs": dep ? dep.chr : "" }, [
        el("div", { class: "pg", text: label }),
        el("div", { class: "ctext" }, text),
        scoreLine(rr, ref)
      ]));
    });
    body.appendChild(list);
  }

  // -- Contrasts -------------------------------------------------------------------------
  function contrasts() {
    var out = [], seen = {};
    D.deltas.forEach(function (r) {
      var k = r.condition + "|" + r.reference;
      if (!seen[k]) { seen[k] = true; out.push({ cond: r.condition, ref: r.reference, family: r.family }); }
    });
    if (!out.length) D.conditions.forEach(function (c) { if (c !== REF) out.push({ cond: c, ref: REF, family: "vs_reference" }); });
    return out;
  }
  function diffs(model, score, cond, ref) {
    var out = [];
    PAIRS.forEach(function (p) {
      if (p.model !== model) return;
      var a = p.rows[cond], b = p.rows[ref];
      if (a && b && num(a[score]) && num(b[score])) out.push({ d: a[score] - b[score], p: p, a: a, b: b });
    });
    return out;
  }
  function drawContrastControls() {
    options($("con-score"), SCORES); $("con-score").value = D.primary_score;
    options($("con-model"), D.models);
    var cs = contrasts();
    options($("con-contrast"), cs.map(function (c, i) { return String(i); }), cs.map(function (c) { return c.cond + " − " + c.ref; }));
    ["con-score", "con-model", "con-contrast"].forEach(function (id) { $(id).addEventListener("change", drawContrasts); });
  }
  var TIP = $("tip");
  function tip(ev, kids) {
    clear(TIP); add(TIP, kids); TIP.hidden = false;
    var x = Math.min(ev.clientX + 14, window.innerWidth - TIP.offsetWidth - 8);
    var y = Math.min(ev.clientY + 14, window.innerHeight - TIP.offsetHeight - 8);
    TIP.style.left = x + "px"; TIP.style.top = y + "px";
  }
  function untip() { TIP.hidden = true; }
  // At most n items, evenly spaced through the list (a strip of thousands of points reads no better than n).
  var MAX_DOTS = 1500, DOTS = [];
  function spread(list, n) {
    if (list.length <= n) return list;
    var out = [];
    for (var k = 0; k < n; k++) out.push(list[Math.floor(k * list.length / n)]);
    return out;
  }
  function drawContrasts() {
    var score = $("con-score").value, model = $("con-model").value;
    var cs = contrasts();
    var box = clear($("strips"));
    var all = cs.map(function (c) { return diffs(model, score, c.cond, c.ref); });
    var lo = 0, hi = 0;
    all.forEach(function (ds) { ds.forEach(function (x) { lo = Math.min(lo, x.d); hi = Math.max(hi, x.d); }); });
    if (hi - lo === 0) { lo -= 1; hi += 1; }
    var pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
    var W = 980, L = 260, R = 40, H = 46, top = 10;
    var x = function (v) { return L + (v - lo) / (hi - lo) * (W - L - R); };
    var height = top + cs.length * H + 30;
    var s = svg("svg", { class: "strip", width: W, height: height, viewBox: "0 0 " + W + " " + height });
    s.appendChild(svg("line", { x1: x(0), x2: x(0), y1: top, y2: top + cs.length * H, class: "zero" }));
    var stats = {};
    D.deltas.forEach(function (r) { if (r.model === model && r.score === score) stats[r.condition + "|" + r.reference] = r; });
    cs.forEach(function (c, i) {
      var y0 = top + i * H, mid = y0 + H / 2;
      var g = svg("g", { class: "srow", "data-condition": c.cond, "data-reference": c.ref });
      var pts = spread(all[i], MAX_DOTS);
      var drawn = pts.length < all[i].length ? ", " + pts.length + " drawn" : "";
      g.appendChild(svg("text", { x: L - 10, y: mid + 4, "text-anchor": "end", class: "label", text: c.cond + " − " + c.ref + " (n " + all[i].length + drawn + ")" }));
      pts.forEach(function (q, j) {
        var jitter = ((j * 0.6180339887498949) % 1) - 0.5;  // golden-ratio spread: points never stack
        g.appendChild(svg("circle", { cx: x(q.d), cy: mid + jitter * (H - 14), r: 3, class: "dot", "data-c": i, "data-j": j }));
      });
      DOTS[i] = pts;
      var st = stats[c.cond + "|" + c.ref];
      if (st && num(st.ci_low) && num(st.ci_high)) g.appendChild(svg("line", { x1: x(st.ci_low), x2: x(st.ci_high), y1: mid, y2: mid, class: "ci" }));
      if (st && num(st.mean_diff)) g.appendChild(svg("rect", { x: x(st.mean_diff) - 4, y: mid - 4, width: 8, height: 8, class: "mean" }));
      s.appendChild(g);
    });
    ticks(lo, hi).forEach(function (v) {
      var yb = top + cs.length * H;
      s.appendChild(svg("line", { x1: x(v), x2: x(v), y1: yb, y2: yb + 5, class: "tick" }));
      s.appendChild(svg("text", { x: x(v), y: yb + 18, "text-anchor": "middle", class: "axis", text: String(+v.toPrecision(6)) }));
    });
    var hit = function (ev) {
      var t = ev.target;
      if (!t.classList || !t.classList.contains("dot")) return null;
      var ci = Number(t.getAttribute("data-c"));
      return { c: cs[ci], q: DOTS[ci][Number(t.getAttribute("data-j"))] };
    };
    s.addEventListener("mousemove", function (ev) {
      var h = hit(ev);
      if (!h) { untip(); return; }
      var c = h.c, q = h.q;
      tip(ev, [el("b", { text: c.cond + " − " + c.ref + " = " + sfmt(q.d) + " (" + score + ")" }),
        el("div", { class: "pg", text: "pair " + q.p.pair_id + ", seed " + q.p.seed + " · source " + q.p.source_id + " · target " + q.p.target_id }),
        el("div", { class: "pg", text: c.cond }), el("div", { class: "ctext" }, highlight(q.a.text, q.p.source_id, q.p.target_id)),
        el("div", { class: "pg", text: c.ref }), el("div", { class: "ctext" }, highlight(q.b.text, q.p.source_id, q.p.target_id))]);
    });
    s.addEventListener("mouseleave", untip);
    s.addEventListener("click", function (ev) {
      var h = hit(ev);
      if (h) { untip(); openPair(h.q.p.model, h.q.p.seed, h.q.p.pair_id, h.c.cond !== REF ? h.c.cond : null); }
    });
    box.appendChild(s);
    var c = cs[Number($("con-contrast").value) || 0];
    var bySource = clear($("by-source")), byGroup = clear($("by-group"));
    if (!c) return;
    var ds = diffs(model, score, c.cond, c.ref);
    var group = function (key) {
      var g = {};
      ds.forEach(function (q) { var k = q.p[key]; (g[k] = g[k] || []).push(q.d); });
      return Object.keys(g).map(function (k) { return [k, g[k]]; }).sort(function (a, b) { return mean(b[1]) - mean(a[1]); });
    };
    bySource.appendChild(el("h4", { text: "per source prompt: " + c.cond + " − " + c.ref }));
    bySource.appendChild(table(["source", "text", "n", "mean Δ"], group("source_id").map(function (g) {
      return [g[0], snippet(promptText(g[0]), 90), String(g[1].length), sfmt(mean(g[1]))];
    })));
    byGroup.appendChild(el("h4", { text: "per target group: " + c.cond + " − " + c.ref }));
    byGroup.appendChild(table(["target group", "n", "mean Δ"], group("target_group").map(function (g) {
      return [g[0], String(g[1].length), sfmt(mean(g[1]))];
    })));
  }

  // -- Overview --------------------------------------------------------------------------
  function drawOverview() {
    var rows = D.deltas.filter(function (r) { return r.family === "vs_reference"; });
    var scores = SCORES.filter(function (s) { return rows.some(function (r) { return r.score === s; }); });
    var keys = [], seen = {};
    rows.forEach(function (r) { var k = r.model + "|" + r.condition; if (!seen[k]) { seen[k] = true; keys.push([r.model, r.condition]); } });
    var cell = {};
    rows.forEach(function (r) { cell[r.model + "|" + r.condition + "|" + r.score] = r; });
    var vmax = 0.5;
    rows.forEach(function (r) { if (num(r.d_z)) vmax = Math.max(vmax, Math.abs(r.d_z)); });
    var t = el("table", { class: "heat" });
    t.appendChild(el("thead", null, el("tr", null, [el("th", { text: "condition − " + REF })].concat(scores.map(function (s) { return el("th", { text: s }); })))));
    var tb = el("tbody");
    keys.forEach(function (k) {
      var tr = el("tr", null, el("th", { text: (D.models.length > 1 ? k[0] + ": " : "") + k[1] }));
      scores.forEach(function (s) {
        var r = cell[k[0] + "|" + k[1] + "|" + s];
        var td = el("td", { class: "hc", "data-condition": k[1], "data-score": s, title: "click: examples of " + k[1] + " sorted by the change in " + s });
        if (r && num(r.mean_diff)) {
          td.appendChild(el("div", { class: "v", text: sfmt(r.mean_diff) }));
          td.appendChild(el("div", { class: "ci", text: "[" + fmt(r.ci_low, 2) + ", " + fmt(r.ci_high, 2) + "]" }));
          if (num(r.d_z)) {
            var a = Math.min(1, Math.abs(r.d_z) / vmax);
            td.style.background = r.d_z > 0 ? "rgba(214,39,40," + (0.08 + 0.6 * a) + ")" : "rgba(31,119,180," + (0.08 + 0.6 * a) + ")";
          }
        } else td.textContent = "n/a";
        td.addEventListener("click", function () { filterFromHeat(k[0], k[1], s); });
        tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    t.appendChild(tb);
    $("heatmap").appendChild(rows.length ? t : el("p", { text: "No paired deltas." }));
    var ct = D.conditions_table;
    var ms = SCORES.filter(function (s) { return ct.some(function (r) { return r.score === s; }); });
    var mrows = [];
    D.models.forEach(function (m) {
      D.conditions.forEach(function (c) {
        var got = ct.filter(function (r) { return r.model === m && r.condition === c; });
        if (!got.length) return;
        mrows.push([(D.models.length > 1 ? m + ": " : "") + c].concat(ms.map(function (s) {
          var r = got.filter(function (q) { return q.score === s; })[0];
          return r ? fmt(r.mean) + " ± " + fmt(r.sd) + " [" + fmt(r.ci_low, 2) + ", " + fmt(r.ci_high, 2) + "]" : "–";
        })));
      });
    });
    $("means").appendChild(table(["condition"].concat(ms.map(function (s) { return s + " mean ± SD [95% CI]"; })), mrows));
    [["survival", "Target survival", "How much of the target's message keeps its own keys and values (target_kept: in every layer; below 0.5 the target was erased)."],
     ["fidelity", "Target fidelity", "The primary score beside the scores of whether the continuation still does the target's task."]].forEach(function (sec) {
      var rows = D[sec[0]];
      if (!rows || !rows.length) return;
      var box = $("extra-tables");
      box.appendChild(el("h3", { text: sec[1] }));
      box.appendChild(el("p", { class: "hint", text: sec[2] }));
      var keys = Object.keys(rows[0]);
      box.appendChild(table(keys, rows.map(function (r) {
        return keys.map(function (k) { var v = r[k]; return num(v) ? (Number.isInteger(v) ? String(v) : fmt(v)) : (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v)); });
      }), "grid " + sec[0]));
    });
    if (D.rv_groups.length) {
      $("rv").appendChild(table(["model", "role", "group", "prompts", "n", "NaN", "mean ± SD", "median", ""], D.rv_groups.map(function (r) {
        var bar = el("span", { class: "bar" });
        bar.style.width = (num(r.mean) ? Math.max(2, Math.min(200, r.mean * 120)) : 0) + "px";
        return [r.model, r.role, r.group, String(r.n_prompts), String(r.n), String(r.n_nan), fmt(r.mean) + " ± " + fmt(r.sd), fmt(r.median), bar];
      })));
    } else $("rv").appendChild(el("p", { text: "No R_V measured in this run." }));
    if (D.audit.length) {
      $("audit").appendChild(table(["model", "condition", "intervention", "hook point", "phase", "never fired", "calls (prefill)", "calls (decode)", "positions", "change norm"],
        D.audit.map(function (r) {
          return [r.model, r.condition, r.description, String(r.hook_point), String(r.phase), r.examples_never_fired + "/" + r.examples,
            fmt(r.mean_fired_prompt), fmt(r.mean_fired_decode), fmt(r.mean_positions), fmt(r.mean_change_norm)];
        })));
    } else $("audit").appendChild(el("p", { text: "No intervention was audited." }));
  }
  function filterFromHeat(model, cond, score) {
    show("examples");
    EX.model = D.models.length > 1 ? String(model) : "";
    EX.conds = D.conditions.filter(function (c) { return c === REF || c === cond; });
    EX.sortCond = cond; EX.sortScore = score; EX.sortKind = "delta"; EX.sortDir = "desc"; EX.page = 0;
    syncExampleControls();
    drawExamples();
  }

  // -- Run -------------------------------------------------------------------------------
  function kv(obj) {
    return table(["", ""], Object.keys(obj || {}).map(function (k) {
      var v = obj[k];
      return [k, v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v)];
    }), "grid kv");
  }
  function drawRun() {
    var box = $("run-info"), run = D.run;
    box.appendChild(el("h3", { text: "Command" }));
    box.appendChild(el("pre", { class: "cmd", text: run.command || "(not recorded: a run made before commands were recorded)" }));
    if (run.resume_commands && run.resume_commands.length) box.appendChild(el("pre", { class: "cmd", text: run.resume_commands.join("\n") }));
    box.appendChild(kv({ name: run.name, started: run.started, finished: run.finished, bank: run.bank, executor: run.executor }));
    if (run.progress) box.appendChild(kv(run.progress));
    box.appendChild(el("h3", { text: "Versions" })); box.appendChild(kv(run.versions));
    if (run.engine_settings) { box.appendChild(el("h3", { text: "Engine settings" })); box.appendChild(kv(run.engine_settings)); }
    box.appendChild(el("h3", { text: "Fingerprint" }));
    box.appendChild(el("pre", { class: "json", text: JSON.stringify(run.fingerprint || "(not recorded)", null, 2) }));
    if (run.models) { box.appendChild(el("h3", { text: "Models" })); box.appendChild(el("pre", { class: "json", text: JSON.stringify(run.models, null, 2) })); }
    if (D.plans.length) {
      box.appendChild(el("h3", { text: "Plans" }));
      box.appendChild(table(["model", "condition", "plan", "prompt generated from"], D.plans.map(function (p) {
        return [p.model, p.condition, p.plan, D.prompt_roles[p.condition] || "–"];
      })));
    }
    box.appendChild(el("h3", { text: "Statistics" })); box.appendChild(kv(D.stats));
    box.appendChild(el("h3", { text: "Config" }));
    box.appendChild(el("pre", { class: "json", text: JSON.stringify(run.config, null, 2) }));
  }

  var DRAWERS = {
    verdict: drawVerdict,
    examples: function () { drawExamplesControls(); drawExamples(); },
    pair: function () { drawPairControls(); drawPair(); },
    contrasts: function () { drawContrastControls(); drawContrasts(); },
    overview: drawOverview,
    run: drawRun
  };
  window.transferlabReport = { data: D, show: show, openPair: openPair };
  window.addEventListener("hashchange", function () {
    var v = location.hash.slice(1);
    if (DRAWERS[v]) show(v);
  });
  var first = (location.hash || "#verdict").slice(1);
  show(DRAWERS[first] ? first : "verdict");
})();
