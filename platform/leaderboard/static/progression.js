(function () {
  var select = document.getElementById("progression-select"), view = document.getElementById("progression-view");
  var data = document.getElementById("progression-data");
  if (!select || !view || !data) return;
  var rows = JSON.parse(data.textContent);
  function line(kind, head, text) {
    var tr = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
    tr.className = kind; th.scope = "row"; th.textContent = head; td.textContent = text;
    tr.appendChild(th); tr.appendChild(td);
    return tr;
  }
  function show(id) {
    var p = Object.prototype.hasOwnProperty.call(rows, id) ? rows[id] : null;
    if (!p) return false;
    var body = document.createElement("tbody");
    body.appendChild(line("prompt", "prompt", p.prompt));
    for (var i = 0; i < p.steps.length; i++) {
      var tr = line("step", "step " + p.steps[i] + " / " + p.total_steps, p.texts[i]);
      tr.setAttribute("data-step", String(p.steps[i]));
      body.appendChild(tr);
    }
    body.appendChild(line("reference", "reference", p.reference));
    view.replaceChild(body, view.tBodies[0]);
    view.setAttribute("data-row-id", id);
    select.value = id;
    return true;
  }
  function fromHash() {  /* #progression=<row_id> picks a row (links in the tables use it) */
    var m = /^#progression=(.+)$/.exec(window.location.hash);
    if (m && show(decodeURIComponent(m[1]))) document.getElementById("progression").scrollIntoView();
  }
  select.addEventListener("change", function () {
    show(select.value);
    try { history.replaceState(null, "", "#progression=" + encodeURIComponent(select.value)); } catch (e) {}
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
