-- One ~400-byte clickstream event per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"action":"page_view","user_id":"u-1234567","page":"https://shop.example.com/products/12345?utm_source=newsletter&utm_campaign=autumn","object":"product-card-12345","referrer":"https://www.example.org/search?q=running+shoes","session_id":"s-0f3c2a9d8e7b6a5c","properties":{"price":119.99,"currency":"EUR","category":"shoes/running","position":3,"experiment":"checkout-b","viewport":"1280x720","lang":"de-DE"}}'
