"""Interoperability check with Python's paho-mqtt (PyPI), run by crates/pigeon/tests/interop.rs.

Usage: python3 paho_check.py PORT
For MQTT 3.1.1 and 5.0 in turn: a subscriber and a publisher connect, a retained message is
set, QoS 0/1/2 messages travel, and (5.0) user properties and a response topic pass through.
Exits non-zero with a message naming the step that failed.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])
TIMEOUT = 10


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def client(name, protocol):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    if protocol == mqtt.MQTTv5:
        c.connect("127.0.0.1", PORT, keepalive=30, clean_start=True)
    else:
        c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    if not connected.wait(TIMEOUT):
        fail(f"{name}: no CONNACK")
    return c


def run(protocol, label):
    prefix = f"interop/paho/{label}"
    got = []
    done = threading.Event()

    pub = client(f"paho-pub-{label}", protocol)
    info = pub.publish(f"{prefix}/retained", b"kept", qos=1, retain=True)
    info.wait_for_publish(TIMEOUT)

    sub = client(f"paho-sub-{label}", protocol)

    def on_message(_c, _u, msg):
        got.append(msg)
        if len(got) == 4:
            done.set()

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe(f"{prefix}/#", qos=2)
    if not subscribed.wait(TIMEOUT):
        fail(f"{label}: no SUBACK")

    props = None
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        props.ResponseTopic = f"{prefix}/reply"
    for qos in (0, 1, 2):
        pub.publish(f"{prefix}/q{qos}", f"m{qos}".encode(), qos=qos, properties=props).wait_for_publish(TIMEOUT)

    if not done.wait(TIMEOUT):
        fail(f"{label}: received {[(m.topic, m.payload) for m in got]}, expected 4 messages")
    by_topic = {m.topic: m for m in got}
    retained = by_topic.get(f"{prefix}/retained")
    if retained is None or retained.payload != b"kept" or not retained.retain:
        fail(f"{label}: retained message missing or without retain flag")
    for qos in (0, 1, 2):
        m = by_topic.get(f"{prefix}/q{qos}")
        if m is None or m.payload != f"m{qos}".encode() or m.qos != qos:
            fail(f"{label}: QoS {qos} message wrong: {m and (m.payload, m.qos)}")
        if protocol == mqtt.MQTTv5:
            user = getattr(m.properties, "UserProperty", None)
            if user != [("k", "v")]:
                fail(f"{label}: user property not passed through: {user}")
            if getattr(m.properties, "ResponseTopic", None) != f"{prefix}/reply":
                fail(f"{label}: response topic not passed through")

    # Clear the retained message so a rerun starts clean.
    pub.publish(f"{prefix}/retained", b"", qos=1, retain=True).wait_for_publish(TIMEOUT)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    print(f"ok: paho-mqtt {label}")


run(mqtt.MQTTv311, "v311")
run(mqtt.MQTTv5, "v5")
