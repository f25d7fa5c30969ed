-- 100 events of ~400 bytes per request, as NDJSON.
local line = '{"action":"click","user_id":"u-1234567","page":"https://shop.example.com/products/12345?utm_source=newsletter&utm_campaign=autumn","object":"add-to-cart","referrer":"https://www.example.org/search?q=running+shoes","session_id":"s-0f3c2a9d8e7b6a5c","properties":{"price":119.99,"currency":"EUR","category":"shoes/running","position":3,"experiment":"checkout-b","viewport":"1280x720","lang":"de-DE"}}\n'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.body = string.rep(line, 100)
