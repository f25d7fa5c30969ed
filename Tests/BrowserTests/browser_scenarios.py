#!/usr/bin/python3
"""Drives headless Chromium (Debian's chromium + chromium-driver, python3-selenium) through
the tracker scenarios of docs/tracker.md and prints what the browser saw as one JSON object.

Run by BrowserTests.swift, which started the real gateway, forwarder, loader and ClickHouse
and asserts on ClickHouse rows and the WAL. This script only serves the fixture pages (from an
origin the gateway allows), runs a pass-through proxy in front of the gateway that can answer
503 with Retry-After for a while (what a gateway behind a load balancer answers while it
drains), and reports the browser's console, its network requests and the proxy's log.

    browser_scenarios.py '{"gateway": "http://127.0.0.1:P", "key": "slp_...",
                           "fixture_port": F, "proxy_port": X}'
"""
import http.client
import http.server
import json
import sys
import threading
import time
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CONFIG = json.loads(sys.argv[1])
GATEWAY = CONFIG.get("gateway", "")
KEY = CONFIG.get("key", "")
FIXTURE = "http://127.0.0.1:%d" % CONFIG.get("fixture_port", 0)
# The same server under another name: an origin the gateway does not allow.
OTHER_ORIGIN = "http://localhost:%d" % CONFIG.get("fixture_port", 0)
PROXY = "http://127.0.0.1:%d" % CONFIG.get("proxy_port", 0)
RETRY_AFTER = 2


# Counts the events the page hands to navigator.sendBeacon (in localStorage, which outlives the
# page), so that the unload scenario can tell the beacon from a keepalive fetch.
COUNT_BEACONS = """<script>(function () {
  var send = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, body) {
    var ok = send(url, body);
    if (ok) localStorage.setItem('test.beaconed', String(Number(localStorage.getItem('test.beaconed') || 0)
      + JSON.parse(body).length));
    return ok;
  };
})();</script>"""


def page(title, body, endpoint=None, head="", attributes=""):
    extra = (' data-endpoint="%s"' % endpoint if endpoint else "") + attributes
    return """<!doctype html><html><head><meta charset="utf-8"><title>%s</title>
<style>body{margin:0;font:16px sans-serif} .gap{height:1400px} .obj{height:200px;background:#ddd;margin:0}</style>
%s<script src="%s/sluice.js" data-key="%s"%s defer></script></head><body>%s</body></html>""" % (
        title, head, GATEWAY, KEY, extra, body)


def objects(names):
    parts = ['<div class="gap">top</div>']
    for name in names:
        parts.append('<button class="obj" id="%s" data-sluice-object="%s" data-sluice-prop-item-id="%s-1">%s</button>'
                     % (name, name, name, name))
        parts.append('<div class="gap"></div>')
    return "".join(parts)


PAGES = {
    "/blank.html": "<!doctype html><title>blank</title>",
    "/five.html": page("five", objects(["obj-a", "obj-b", "obj-c", "obj-d", "obj-e"])),
    "/offline.html": page("offline", objects(["off-a", "off-b"])),
    "/unload.html": page("unload", objects(["unl-a", "unl-b", "unl-c"]), head=COUNT_BEACONS),
    "/retry.html": page("retry", objects(["ret-a", "ret-b"]), endpoint=PROXY),
    "/refused.html": page("refused", objects(["bad-a", "ok-b"]), endpoint=PROXY),
    "/other.html": page("other", objects(["oth-a"])),
    "/spa.html": page("spa", objects(["spa-a"])),
    # The browser's Do-Not-Track setting, as a page sees it.
    "/dnt.html": page("dnt", objects(["dnt-a"]),
                      head="<script>Object.defineProperty(navigator, 'doNotTrack', {value: '1'})</script>"),
    "/consent.html": page("consent", objects(["con-a"]), attributes=' data-consent="pending"'),
}


class Fixture(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        body = PAGES.get(path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the gateway; while `failing_until` is ahead, answers 503 with Retry-After
    (and the CORS headers the gateway would send) without forwarding."""
    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    failing_until = 0.0
    fail_for = 0.0
    log = []

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        now = time.time()
        ids = []
        if self.command == "POST":
            try:
                ids = [e.get("event_id") for e in json.loads(body)]
            except ValueError:
                ids = ["(unreadable)"]
        with Proxy.lock:
            if Proxy.fail_for and not Proxy.failing_until and self.command == "POST":
                Proxy.failing_until = now + Proxy.fail_for
            failing = self.command == "POST" and now < Proxy.failing_until
        if failing:
            status, headers, data = 503, [("Retry-After", str(RETRY_AFTER)), ("Content-Type", "text/plain")], b"draining"
            origin = self.headers.get("Origin")
            if origin:
                headers += [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", "Retry-After")]
        else:
            target = urllib.parse.urlsplit(GATEWAY)
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body, headers=forwarded)
            answer = connection.getresponse()
            data = answer.read()
            status = answer.status
            headers = [(k, v) for k, v in answer.getheaders()
                       if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive")]
            connection.close()
        if self.command == "POST":
            with Proxy.lock:
                Proxy.log.append({"at": now, "status": status, "event_ids": ids,
                                  "retry_after": RETRY_AFTER if status == 503 else None})
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_OPTIONS = forward

    def log_message(self, *args):
        pass


def serve(handler, port, host="127.0.0.1"):
    server = http.server.ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser(insecure=False):
    options = webdriver.ChromeOptions()
    if insecure:  # sluice dev's own test CA
        options.add_argument("--ignore-certificate-errors")
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


class Run:
    def __init__(self, driver):
        self.driver = driver
        self.console = []
        self.requests = []

    def drain_logs(self):
        """The console messages and the network requests to the gateway since the last call."""
        console = [{"level": e["level"], "message": e["message"]} for e in self.driver.get_log("browser")]
        requests = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.requestWillBeSent":
                continue
            params = message["params"]
            url = params["request"]["url"]
            if "/v1/events" in url:
                requests.append({"url": url.split("?")[0], "type": params.get("type"),
                                 "method": params["request"]["method"]})
        self.console += console
        self.requests += requests
        return console, requests

    def fresh(self, origin=FIXTURE):
        """A new visitor: an empty localStorage on the origin."""
        self.driver.get(origin + "/blank.html")
        self.driver.execute_script("localStorage.clear()")
        self.drain_logs()

    def queue(self):
        return self.driver.execute_script("return JSON.parse(localStorage.getItem('sluice.q') || '[]').length")

    def wait_sent(self, timeout=30):
        """Until the tracker's queue is empty (everything handed to the gateway)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.queue() == 0:
                return True
            time.sleep(0.1)
        return False

    def scroll_to(self, element_id):
        self.driver.execute_script(
            "document.getElementById(arguments[0]).scrollIntoView({block: 'center'})", element_id)

    def scroll_top(self):
        self.driver.execute_script("window.scrollTo(0, 0)")

    def settle(self):
        """Until two frames were rendered: the IntersectionObserver has seen the scroll, so the
        time in view counts from here even on a loaded machine."""
        self.driver.execute_async_script(
            "var done = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(done))")

    def click(self, element_id):
        self.driver.find_element(By.ID, element_id).click()


def five_objects(run):
    """Two objects in view for 1.5 s, one for 0.3 s, three clicks."""
    run.fresh()
    d = run.driver
    d.get(FIXTURE + "/five.html")
    run.settle()
    run.scroll_to("obj-a")
    run.settle()
    time.sleep(1.5)
    run.click("obj-a")
    run.scroll_to("obj-b")
    run.settle()
    time.sleep(1.5)
    run.click("obj-b")
    run.click("obj-b")
    run.scroll_to("obj-c")
    run.settle()
    time.sleep(0.3)
    run.scroll_top()
    run.settle()
    time.sleep(2.5)  # past the batching delay, so a late view would have been sent too
    sent = run.wait_sent()
    console, requests = run.drain_logs()
    return {"sent": sent, "console": console, "requests": requests}


def offline(run):
    """Ten clicks while offline, a reload while still offline, back online."""
    run.fresh()
    d = run.driver
    d.get(FIXTURE + "/offline.html")
    first = run.wait_sent()
    d.set_network_conditions(offline=True, latency=0, download_throughput=-1, upload_throughput=-1)
    on_line = d.execute_script("return navigator.onLine")
    run.scroll_to("off-a")
    for i in range(10):
        run.click("off-a" if i % 2 == 0 else "off-b")
    time.sleep(3)  # the tracker tries, fails and backs off
    queued_offline = run.queue()
    reload_error = None
    try:
        d.refresh()  # the page cannot load offline; the queue stays in localStorage
    except Exception as error:  # noqa: BLE001 - the browser's error page is the point
        reload_error = type(error).__name__
    time.sleep(0.5)
    d.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=-1)
    d.get(FIXTURE + "/offline.html")
    sent = run.wait_sent()
    console, requests = run.drain_logs()
    return {"first_sent": first, "navigator_online_when_offline": on_line, "queued_offline": queued_offline,
            "reload_error": reload_error, "sent": sent, "console": console, "requests": requests}


def unload(run):
    """Clicks, then the page goes away before the batch is due: the beacon carries them."""
    run.fresh()
    d = run.driver
    d.get(FIXTURE + "/unload.html")
    started = time.monotonic()
    run.scroll_to("unl-a")
    for name in ("unl-a", "unl-b", "unl-c"):
        run.scroll_to(name)
        run.click(name)
    queued = run.queue()
    d.get(FIXTURE + "/blank.html")  # pagehide: well inside the 2 s batching delay, on a quiet machine
    # From the page load to the page gone: under 1 s no object was in view long enough for a
    # view and no batch was due, so everything must leave by beacon; a busier machine may
    # see a view or a scheduled send first (delivered exactly once all the same).
    elapsed = time.monotonic() - started
    left = run.queue()
    beaconed = int(d.execute_script("return localStorage.getItem('test.beaconed') || '0'"))
    time.sleep(1)
    console, requests = run.drain_logs()
    return {"queued_before_leaving": queued, "left_in_queue": left, "beaconed": beaconed, "elapsed": elapsed,
            "console": console, "requests": requests}


def retry(run):
    """The gateway (through the proxy) answers 503 with Retry-After for 3 s."""
    run.fresh()
    d = run.driver
    with Proxy.lock:
        Proxy.log.clear()
        Proxy.fail_for, Proxy.failing_until = 3.0, 0.0
    d.get(FIXTURE + "/retry.html")
    run.scroll_to("ret-a")
    for name in ("ret-a", "ret-b", "ret-a"):
        run.click(name)
    sent = run.wait_sent(timeout=40)
    time.sleep(0.5)
    with Proxy.lock:
        log = list(Proxy.log)
        Proxy.fail_for = 0.0
    console, requests = run.drain_logs()
    return {"sent": sent, "proxy": log, "console": console, "requests": requests}


def refused(run):
    """An event whose body the gateway cannot parse (a lone UTF-16 surrogate) gets a 400: it
    is dropped, not retried, and the tracker keeps working."""
    run.fresh()
    d = run.driver
    with Proxy.lock:
        Proxy.log.clear()
    d.get(FIXTURE + "/refused.html")
    run.wait_sent()
    d.execute_script("document.getElementById('bad-a').dataset.sluiceObject = 'bad-\\ud800'")
    run.scroll_to("bad-a")
    run.click("bad-a")
    time.sleep(2.5)
    run.wait_sent()
    time.sleep(4)  # long enough for two retries, had there been any
    run.scroll_to("ok-b")
    run.click("ok-b")
    time.sleep(2.5)
    sent = run.wait_sent()
    with Proxy.lock:
        log = list(Proxy.log)
    console, requests = run.drain_logs()
    return {"sent": sent, "proxy": log, "console": console, "requests": requests}


def other_origin(run):
    """A page on an origin the gateway does not allow: refused, not retried."""
    run.fresh(OTHER_ORIGIN)
    d = run.driver
    d.get(OTHER_ORIGIN + "/other.html")
    run.scroll_to("oth-a")
    run.click("oth-a")
    time.sleep(2.5)
    sent = run.wait_sent()
    time.sleep(3)
    console, requests = run.drain_logs()
    return {"sent": sent, "console": console, "requests": requests}


def spa(run):
    """Page views on history changes: pushState to a new URL, replaceState to the same one
    (nothing), back (popstate); then an object added to the page later is seen."""
    run.fresh()
    d = run.driver
    d.get(FIXTURE + "/spa.html")
    run.settle()
    d.execute_script("history.pushState({}, '', '/spa.html?step=2')")
    d.execute_script("history.replaceState({}, '', '/spa.html?step=2')")
    d.execute_script("history.back()")
    time.sleep(0.5)
    # An object rendered after load (as a framework would) is observed too.
    d.execute_script("document.body.insertAdjacentHTML('beforeend', "
                     "'<div class=\"gap\"></div><button class=\"obj\" id=\"late\" data-sluice-object=\"late-obj\">late</button>"
                     "<div class=\"gap\"></div>')")
    run.scroll_to("late")
    run.settle()
    time.sleep(1.5)
    sent = run.wait_sent()
    time.sleep(2.5)
    console, requests = run.drain_logs()
    return {"sent": sent and run.queue() == 0, "console": console, "requests": requests}


def privacy(run):
    """Do-Not-Track: nothing collected, stored or sent. data-consent="pending": nothing until
    sluice('consent', true); sluice('consent', false) stops and erases the ids."""
    run.fresh()
    d = run.driver
    d.get(FIXTURE + "/dnt.html")
    run.scroll_to("dnt-a")
    run.click("dnt-a")
    time.sleep(2.5)
    dnt_stored = d.execute_script("return Object.keys(localStorage).filter(k => k.startsWith('sluice.')).length")
    _, dnt_requests = run.drain_logs()

    run.fresh()
    d.get(FIXTURE + "/consent.html")
    run.scroll_to("con-a")
    run.click("con-a")  # before consent: not collected
    time.sleep(2.5)
    pending_stored = d.execute_script("return Object.keys(localStorage).filter(k => k.startsWith('sluice.')).length")
    _, pending_requests = run.drain_logs()
    d.execute_script("sluice('consent', true)")
    run.click("con-a")
    sent = run.wait_sent()
    visitor = d.execute_script("return localStorage.getItem('sluice.v')")
    d.execute_script("sluice('consent', false)")
    run.click("con-a")  # after withdrawal: not collected
    time.sleep(2.5)
    after = d.execute_script(
        "return ['sluice.q', 'sluice.v', 'sluice.s'].filter(k => localStorage.getItem(k) !== null).length")
    console, requests = run.drain_logs()
    return {"dnt_stored": dnt_stored, "dnt_requests": len(dnt_requests), "pending_stored": pending_stored,
            "pending_requests": len(pending_requests), "sent": sent, "visitor_while_consented": visitor,
            "stored_after_withdrawal": after, "requests_after_consent": len(requests), "console": console}


def demo(url):
    """sluice dev's /demo page, as a newcomer uses it: load, click, navigate within the page."""
    driver = browser(insecure=True)
    try:
        run = Run(driver)
        driver.get(url)
        run.settle()
        first = run.wait_sent()
        driver.find_element(By.CSS_SELECTOR, "[data-sluice-object=add-to-cart]").click()
        driver.find_element(By.ID, "spa").click()
        time.sleep(2.5)
        sent = run.wait_sent()
        console, requests = run.drain_logs()
        return {"first_sent": first, "sent": sent, "address": driver.current_url, "console": console,
                "requests": requests}
    finally:
        driver.quit()


def analytics(url, screenshot):
    """sluice dev's /analytics page: what it shows (read from the DOM), by default and with
    bots included, and a screenshot of it."""
    driver = browser(insecure=True)
    try:
        driver.set_window_size(1200, 1000)
        driver.get(url)

        def tables(before):
            deadline = time.time() + 30
            while time.time() < deadline:
                updated = driver.execute_script("return document.body.dataset.updated || ''")
                if updated and updated != before:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("the page did not update: %s" % driver.find_element(By.ID, "status").text)
            read = """
              var out = {};
              ['objects', 'pages', 'totals'].forEach(function (table) {
                out[table] = {};
                document.querySelectorAll('#' + table + ' tbody tr[data-name]').forEach(function (row) {
                  var cells = {};
                  row.querySelectorAll('td[data-column]').forEach(function (td) { cells[td.dataset.column] = td.textContent; });
                  out[table][row.dataset.name] = cells;
                });
              });
              out.updated = document.body.dataset.updated;
              out.status = document.getElementById('status').textContent;
              out.address = location.href;
              return out;"""
            return driver.execute_script(read)

        default = tables("")
        driver.find_element(By.ID, "bots").click()
        with_bots = tables(default["updated"])
        driver.find_element(By.ID, "bots").click()
        tables(with_bots["updated"])
        driver.save_screenshot(screenshot)
        console, _ = Run(driver).drain_logs()
        return {"default": default, "with_bots": with_bots, "console": console}
    finally:
        driver.quit()


def main():
    if "demo_url" in CONFIG:
        print(json.dumps({"demo": demo(CONFIG["demo_url"])}))
        return
    if "analytics_url" in CONFIG:
        print(json.dumps({"analytics": analytics(CONFIG["analytics_url"], CONFIG["screenshot"])}))
        return
    servers = [serve(Fixture, CONFIG["fixture_port"]), serve(Proxy, CONFIG["proxy_port"])]
    # localhost may resolve to ::1 first; serve it there too when the system has IPv6.
    try:
        class V6(http.server.ThreadingHTTPServer):
            address_family = __import__("socket").AF_INET6
        v6 = V6(("::1", CONFIG["fixture_port"]), Fixture)
        threading.Thread(target=v6.serve_forever, daemon=True).start()
        servers.append(v6)
    except OSError:
        pass
    scenarios = [("five_objects", five_objects), ("offline", offline), ("unload", unload), ("retry", retry),
                 ("refused", refused), ("other_origin", other_origin), ("spa", spa), ("privacy", privacy)]
    only = CONFIG.get("only")
    report = {}
    driver = browser()
    try:
        run = Run(driver)
        for name, scenario in scenarios:
            if only and name not in only:
                continue
            started = time.time()
            try:
                report[name] = scenario(run)
            except Exception as error:  # noqa: BLE001 - reported to the Swift test, which fails
                report[name] = {"error": "%s: %s" % (type(error).__name__, error)}
            report[name]["seconds"] = round(time.time() - started, 2)
        report["user_agent"] = driver.execute_script("return navigator.userAgent")
    finally:
        driver.quit()
        for server in servers:
            server.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
