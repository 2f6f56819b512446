"""Injects one message into the cluster as a Python backend would: PyPI `redis` and `msgpack`.

    python3 inject.py REDIS_URL TOPIC PAYLOAD [QOS [RETAIN [ID]]]

PAYLOAD is sent as a msgpack str; prefixed with `hex:` it is hex-decoded and sent as bytes (bin).
RETAIN is 0 or 1. ID defaults to a fresh uuid4. Prints the id used.
"""

import sys
from uuid import uuid4

try:
    import msgpack
    import redis
except ImportError as e:
    sys.exit(f"{e}: pip install redis msgpack (scripts/test does)")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    url, topic, payload = sys.argv[1:4]
    if payload.startswith("hex:"):
        payload = bytes.fromhex(payload[4:])
    qos = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    retain = len(sys.argv) > 5 and sys.argv[5] == "1"
    msg_id = sys.argv[6] if len(sys.argv) > 6 else str(uuid4())
    r = redis.Redis.from_url(url)
    r.publish(
        topic,
        msgpack.packb(
            {
                "id": msg_id,
                "msg": {
                    "cmd": "publish",
                    "topic": topic,
                    "payload": payload,
                    "qos": qos,
                    "retain": retain,
                    "messageId": 0,
                },
            }
        ),
    )
    print(msg_id)


if __name__ == "__main__":
    main()
