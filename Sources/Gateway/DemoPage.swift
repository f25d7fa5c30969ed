/// `/demo` (with `gateway.demo_page`, which `sluice dev` turns on): a page of marked objects
/// that loads the tracker from this gateway, so that a newcomer can scroll and click and see
/// the events arrive. The publishable key comes from the address (`/demo?key=slp_…`, which
/// `sluice dev` prints), so the page holds no credential of its own; the key must be bound to
/// the gateway's own origin. The page takes the key out of the address before the tracker
/// loads, so that events do not carry it in `page`.
enum DemoPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Sluice tracker demo</title>
        <link rel="icon" href="data:,">
        <style>
        body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 44rem; padding: 1rem; color: #222; }
        .banner { background: #e8f0fe; border-radius: 8px; padding: 2rem; margin: 1rem 0; }
        button, .link { font: inherit; margin: .25rem .5rem .25rem 0; }
        .spacer { height: 120vh; color: #888; }
        #status { position: fixed; bottom: 0; left: 0; right: 0; background: #222; color: #eee; padding: .4rem 1rem; font-size: 14px; }
        code { background: #f3f3f3; padding: 0 .2rem; }
        </style>
        </head>
        <body>
        <h1>Sluice tracker demo</h1>
        <p>Every element with <code>data-sluice-object</code> counts a <b>view</b> when at least half of it
        is visible for a second (once per page view) and a <b>click</b> when clicked. The tracker is
        <code>/sluice.js</code> of this gateway; see docs/tracker.md.</p>
        <p id="nokey" hidden><b>No key:</b> open this page as <code>/demo?key=slp_…</code> with a publishable
        key bound to this origin (<code>sluice dev</code> prints the address).</p>
        <div class="banner" data-sluice-object="hero-banner" data-sluice-prop-campaign="winter">
          <h2>Winter sale</h2>
          <button data-sluice-object="hero-cta" data-sluice-prop-price="49.90">Shop now</button>
        </div>
        <p>
          <button data-sluice-object="add-to-cart" data-sluice-prop-sku="sku-42">Add to cart</button>
          <button data-sluice-object="wishlist">Add to wish list</button>
          <a class="link" href="#reviews" data-sluice-object="reviews-link">Read the reviews</a>
          <a class="link" href="?page=2" data-sluice-object="spa-next" id="spa">Next page (history.pushState)</a>
        </p>
        <div class="spacer">Scroll down: the objects below count a view only once you see them.</div>
        <div class="banner" data-sluice-object="footer-banner"><h2 id="reviews">Newsletter</h2>
          <button data-sluice-object="subscribe">Subscribe</button></div>
        <div id="status">loading…</div>
        <script>
        (function () {
          // The key leaves the address (and so every event's page) at once; a reload finds it
          // in sessionStorage.
          var key = new URLSearchParams(location.search).get('key') || sessionStorage.getItem('sluice-demo-key');
          if (!key) { document.getElementById('nokey').hidden = false; return; }
          sessionStorage.setItem('sluice-demo-key', key);
          history.replaceState(null, '', location.pathname);
          var s = document.createElement('script');
          s.src = '/sluice.js'; s.dataset.key = key; s.defer = true;
          document.head.appendChild(s);
          document.getElementById('spa').addEventListener('click', function (e) {
            e.preventDefault();
            var n = (Number(new URLSearchParams(location.search).get('page')) || 1) + 1;
            history.pushState({}, '', '?page=' + n);
          });
          setInterval(function () {
            var q = JSON.parse(localStorage.getItem('sluice.q') || '[]');
            document.getElementById('status').textContent =
              'waiting to be sent: ' + q.length + ' event(s) · visitor ' +
              JSON.parse(localStorage.getItem('sluice.v') || '"-"');
          }, 500);
        })();
        </script>
        </body>
        </html>
        """#
}
