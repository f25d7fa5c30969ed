"""Sends a known set of messages through a real Segment-protocol SDK from PyPI.

Usage: send.py segment|rudder HOST WRITE_KEY

The gateway's test CA comes from REQUESTS_CA_BUNDLE (both SDKs post with `requests`).
The SDK's clock is set back by an hour (its `sentAt`, and the timestamps given to it) so
that the gateway's clock-skew correction can be seen: what it stores must be the real time.
Prints one JSON line per message sent ("sent"), then "done"; exits 1 if the SDK reported
an error.
"""

import datetime as _datetime
import json
import sys
import time
import uuid

SKEW = _datetime.timedelta(hours=1)


class SkewedDatetime(_datetime.datetime):
    """What the SDK sees as `datetime`: an hour behind the real clock."""

    @classmethod
    def now(cls, tz=None):
        return _datetime.datetime.now(tz) - SKEW


def main():
    sdk, host, write_key = sys.argv[1], sys.argv[2], sys.argv[3]
    if sdk == "segment":
        from segment.analytics import Client, request
    elif sdk == "rudder":
        from rudderstack.analytics import Client, request
    else:
        raise SystemExit("unknown sdk " + sdk)
    request.datetime = SkewedDatetime
    errors = []
    client = Client(
        write_key,
        host=host,
        gzip=True,
        max_retries=3,
        upload_interval=0.2,
        on_error=lambda error, batch: errors.append("%s (%d messages)" % (error, len(batch))),
    )

    def sent(kind, message_id, user_id, anonymous_id, real_ms, **extra):
        line = {
            "sent": kind,
            "messageId": message_id,
            "userId": user_id,
            "anonymousId": anonymous_id,
            "timestamp_ms": real_ms,
        }
        line.update(extra)
        print(json.dumps(line), flush=True)

    def moment(seconds_ago):
        real = _datetime.datetime.now(_datetime.timezone.utc) - _datetime.timedelta(seconds=seconds_ago)
        return real - SKEW, int(real.timestamp() * 1000)

    agent = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
    )
    context = {"userAgent": agent, "ip": "203.0.113.7", "page": {"url": "https://shop.example/cart"}}

    message_id = str(uuid.uuid4())
    at, real = moment(10)
    client.track(user_id="u-1", event="Order Completed", properties={"total": 42.5}, context=dict(context),
                 timestamp=at, message_id=message_id)
    sent("track", message_id, "u-1", None, real, action="order_completed", page="https://shop.example/cart")

    # A messageId that is not a UUID, sent twice (a retry after a lost answer): one event.
    at, real = moment(9)
    for _ in range(2):
        client.track(anonymous_id="anon-1", event="Signed Up", properties={"plan": "pro"}, timestamp=at,
                     message_id="signup-anon-1-" + sdk)
        client.flush()
    sent("track", "signup-anon-1-" + sdk, None, "anon-1", real, action="signed_up")

    message_id = str(uuid.uuid4())
    at, real = moment(8)
    client.page(user_id="u-1", anonymous_id="anon-1", name="Pricing",
                properties={"url": "https://shop.example/pricing", "referrer": "https://search.example/"},
                context=dict(context), timestamp=at, message_id=message_id)
    sent("page", message_id, "u-1", "anon-1", real, action="page_view", page="https://shop.example/pricing")

    message_id = str(uuid.uuid4())
    at, real = moment(7)
    client.identify(user_id="u-1", anonymous_id="anon-1", traits={"email": "u1@example.org", "plan": "pro"},
                    timestamp=at, message_id=message_id)
    sent("identify", message_id, "u-1", "anon-1", real, action="identify")

    for index in range(200):
        message_id = str(uuid.uuid4())
        at, real = moment(5)
        client.track(user_id="bulk-%d" % (index % 7), event="Item Viewed", properties={"index": index},
                     timestamp=at, message_id=message_id)
        sent("track", message_id, "bulk-%d" % (index % 7), None, real, action="item_viewed")

    client.flush()
    client.join()
    if errors:
        print(json.dumps({"errors": errors}), flush=True)
        sys.exit(1)
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    main()
