import HTTPTypes
import Hummingbird
import NIOCore

/// The analytics page (`GET /analytics` and its script `GET /analytics.js`): per-object views,
/// clicks and CTR, top pages and events per minute, from the stats API, refreshed every 10 s.
///
/// Self-contained: no external scripts, fonts or styles. The page holds no data and no key: it
/// takes a `stats:read` key from the URL fragment (`/analytics#key=slk_…`, which browsers never
/// send to a server or in a `Referer`; `sluice dev` prints such a link) or from its form, keeps
/// it in `sessionStorage` for the tab, and calls the API with `Authorization: Bearer`.
///
/// Bots (the gateway's user-agent classifier: crawlers, headless browsers, probes…) are left
/// out unless the page's "include bots" box is ticked: the demo page opened by a headless
/// browser counts as a bot; events a back end sends with curl or an HTTP library do not.
///
/// Object and page names come from events anyone with a publishable key can send, so the
/// script writes them with `textContent` only, and the page's Content-Security-Policy allows
/// no inline script at all (the script is a separate, same-origin file).
enum AnalyticsPage {
    static let scriptPath = "/analytics.js"

    static func response() -> Response { self.answer(Self.html, type: "text/html; charset=utf-8") }

    static func script() -> Response { self.answer(Self.javascript, type: "text/javascript; charset=utf-8") }

    private static func answer(_ text: String, type: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = type
        headers[.contentSecurityPolicy] =
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
            + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static let html = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Sluice analytics</title>
        <style>
        body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1c2430; background: #f5f7fa; }
        header { background: #1c2430; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
        header h1 { font-size: 17px; margin: 0 12px 0 0; }
        header label { font-size: 13px; }
        header input, header select, header button { font: inherit; padding: 3px 6px; }
        main { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; padding: 16px 20px; }
        section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
        section.wide { grid-column: 1 / -1; }
        h2 { font-size: 15px; margin: 0 0 8px; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e8ee; }
        td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
        #status { font-size: 13px; }
        #status.error { color: #ffb4b4; }
        svg { width: 100%; height: 180px; }
        .legend span { margin-right: 12px; font-size: 12px; }
        .empty { color: #7a8494; }
        </style>
        </head>
        <body>
        <header>
          <h1>Sluice analytics</h1>
          <label>Key <input id="key" type="password" size="30" placeholder="slk_… with stats:read" autocomplete="off"></label>
          <label>Range <select id="range">
            <option value="3600">last hour</option>
            <option value="86400" selected>last 24 hours</option>
            <option value="604800">last 7 days</option>
          </select></label>
          <label>Min views <input id="min-views" type="number" min="0" value="1" size="5"></label>
          <label title="events the user-agent classifier flagged as bots (crawlers, headless browsers, probes) are left out unless this is ticked"><input id="bots" type="checkbox"> include bots</label>
          <button id="refresh" type="button">Refresh</button>
          <span id="status">waiting for a key</span>
        </header>
        <main>
          <section class="wide">
            <h2>Objects: views, clicks and CTR</h2>
            <table id="objects">
              <thead><tr><th>Object</th><th class="n">Views</th><th class="n">Clicks</th><th class="n">CTR</th><th class="n">Visitors</th></tr></thead>
              <tbody></tbody>
            </table>
          </section>
          <section>
            <h2>Top pages</h2>
            <table id="pages">
              <thead><tr><th>Page</th><th class="n">Page views</th><th class="n">Events</th><th class="n">Visitors</th></tr></thead>
              <tbody></tbody>
            </table>
          </section>
          <section>
            <h2>Events per minute (last hour)</h2>
            <svg id="timeseries" viewBox="0 0 600 180" preserveAspectRatio="none" role="img" aria-label="events per minute"></svg>
            <div class="legend" id="legend"></div>
            <table id="totals"><tbody></tbody></table>
          </section>
        </main>
        <script src="/analytics.js"></script>
        </body>
        </html>
        """

    static let javascript = """
        "use strict";
        (function () {
          var keyInput = document.getElementById("key");
          var statusText = document.getElementById("status");
          var colours = ["#2f6fde", "#e0732e", "#2e9e5b", "#a04fc4", "#c43f4f", "#6b7688"];
          var match = /(?:^|&)key=([^&]+)/.exec(location.hash.slice(1));
          if (match) {
            sessionStorage.setItem("sluice-stats-key", decodeURIComponent(match[1]));
            history.replaceState(null, "", location.pathname + location.search);
          }
          keyInput.value = sessionStorage.getItem("sluice-stats-key") || "";
          keyInput.addEventListener("change", function () {
            sessionStorage.setItem("sluice-stats-key", keyInput.value.trim());
            refresh();
          });
          document.getElementById("range").addEventListener("change", refresh);
          document.getElementById("min-views").addEventListener("change", refresh);
          document.getElementById("bots").addEventListener("change", refresh);
          document.getElementById("refresh").addEventListener("click", refresh);

          function get(path) {
            return fetch(path, { headers: { "Authorization": "Bearer " + keyInput.value.trim() }, cache: "no-store" })
              .then(function (response) {
                return response.json().then(function (body) {
                  if (!response.ok) { throw new Error(response.status + " " + (body.detail || body.title || "")); }
                  return body;
                });
              });
          }

          function cell(row, text, numeric) {
            var td = document.createElement("td");
            td.textContent = text;
            if (numeric) { td.className = "n"; }
            row.appendChild(td);
            return td;
          }

          function fill(table, items, columns) {
            var body = document.querySelector("#" + table + " tbody");
            body.textContent = "";
            if (items.length === 0) {
              var row = body.insertRow();
              var td = cell(row, "no data in this range", false);
              td.colSpan = columns.length;
              td.className = "empty";
              return;
            }
            items.forEach(function (item) {
              var row = body.insertRow();
              row.dataset.name = item[columns[0]];
              columns.forEach(function (column, index) {
                var value = item[column];
                var td = cell(row, column === "ctr" ? (value * 100).toFixed(2) + " %" : String(value), index > 0);
                td.dataset.column = column;
              });
            });
          }

          function chart(points) {
            var svg = document.getElementById("timeseries");
            var legend = document.getElementById("legend");
            var totals = document.querySelector("#totals tbody");
            svg.textContent = "";
            legend.textContent = "";
            totals.textContent = "";
            var ns = "http://www.w3.org/2000/svg";
            var end = Math.floor(Date.now() / 60000) * 60;
            var start = end - 59 * 60;
            var series = {};
            var max = 1;
            points.forEach(function (p) {
              var minute = Date.parse(p.minute) / 1000;
              (series[p.action] = series[p.action] || {})[minute] = p.events;
              if (p.events > max) { max = p.events; }
            });
            Object.keys(series).sort().forEach(function (action, index) {
              var colour = colours[index % colours.length];
              var path = "";
              var total = 0;
              for (var m = start, i = 0; m <= end; m += 60, i++) {
                var value = series[action][m] || 0;
                total += value;
                path += (i === 0 ? "M" : "L") + (i * 600 / 59).toFixed(1) + "," + (175 - value * 165 / max).toFixed(1);
              }
              var line = document.createElementNS(ns, "path");
              line.setAttribute("d", path);
              line.setAttribute("fill", "none");
              line.setAttribute("stroke", colour);
              line.setAttribute("stroke-width", "2");
              svg.appendChild(line);
              var label = document.createElement("span");
              label.style.color = colour;
              label.textContent = "\\u25A0 " + action;
              legend.appendChild(label);
              var row = totals.insertRow();
              row.dataset.name = action;
              cell(row, action, false);
              cell(row, String(total), true).dataset.column = "events";
            });
          }

          function refresh() {
            if (!keyInput.value.trim()) { statusText.textContent = "enter a key with the stats:read scope"; return; }
            var seconds = Number(document.getElementById("range").value);
            var minViews = Math.max(0, Number(document.getElementById("min-views").value) || 0);
            var to = Date.now();
            var from = to - seconds * 1000;
            var bots = document.getElementById("bots").checked ? "&bots=include" : "";
            var range = "from=" + from + "&to=" + to + bots;
            Promise.all([
              get("/v1/stats/objects?" + range + "&min_views=" + minViews + "&limit=100"),
              get("/v1/stats/pages?" + range + "&limit=20"),
              get("/v1/stats/timeseries?from=" + (to - 3600 * 1000) + "&to=" + to + bots)
            ]).then(function (answers) {
              fill("objects", answers[0].objects, ["object", "views", "clicks", "ctr", "visitors"]);
              fill("pages", answers[1].pages, ["page", "page_views", "events", "visitors"]);
              chart(answers[2].points);
              statusText.className = "";
              statusText.textContent = "updated " + new Date().toLocaleTimeString();
              document.body.dataset.updated = String(Date.now());
            }).catch(function (error) {
              statusText.className = "error";
              statusText.textContent = error.message;
            });
          }

          refresh();
          setInterval(refresh, 10000);
        })();
        """
}
