"""Send one image to a segedge agent's frames-in service and print the mask it replies.

The agent must run with ``[frames_in] enabled = true`` (examples/multi-camera.toml).
This is what a small board (an ESP32-CAM, a Pi) does: publish the JPEG bytes to
``<prefix>/<agent>/frames_in/<sender>`` with an MQTT 5 response topic and correlation
data, and wait for the reply on that topic. Run from the repository root:

    .venv/bin/python examples/send_frame.py --agent edge-01 --sender doorbell \\
        --video demo/clip.mp4 --frame 100 [--host 127.0.0.1 --port 1883] [--save mask.png]

(``--image FILE`` sends a JPEG or PNG file as it is; ``--video`` sends one frame of a
video, JPEG-encoded.)

Exit 0 with a mask, 1 when the agent refused the frame (the reply says why), 2 when no
reply came in ``--timeout`` seconds, 66 when the image cannot be read, 69 when the
broker cannot be reached (DNS, connection, TLS) and 77 when it refuses the connection;
every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's edge_agent
from edge_agent import __version__  # noqa: E402
from edge_agent.protocol import connect  # noqa: E402

EX_NOINPUT = 66


def video_frame(path: str, index: int) -> bytes:
    import cv2

    cap = cv2.VideoCapture(path)
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, image = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"send_frame.py: --video {path}: cannot read frame {index}")
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="send_frame.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="broker host")
    parser.add_argument("--port", type=int, default=1883, help="broker port")
    parser.add_argument("--prefix", default="segedge", help="topic prefix")
    parser.add_argument("--agent", required=True, help="the agent's device_id")
    parser.add_argument("--sender", required=True, help="this sender's id (its camera id)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a JPEG or PNG file, sent as it is")
    source.add_argument("--video", help="a video file: one frame of it, as JPEG")
    parser.add_argument("--frame", type=int, default=0, help="with --video: which frame")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for "
                        "the reply")
    parser.add_argument("--save", help="write the mask (class indices) to this PNG")
    parser.add_argument("--version", action="version", version=f"send_frame.py {__version__}")
    args = parser.parse_args(argv)

    try:
        payload = Path(args.image).read_bytes() if args.image else video_frame(args.video,
                                                                               args.frame)
    except OSError as exc:
        print(f"send_frame.py: --image {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    reply_topic = f"{args.prefix}/{args.sender}/reply/{uuid.uuid4().hex[:8]}"
    correlation = uuid.uuid4().bytes
    got: dict = {}
    done = threading.Event()

    def on_message(client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr == correlation:
            got["reply"] = json.loads(msg.payload)
            done.set()

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
        client.publish(f"{args.prefix}/{args.agent}/frames_in/{args.sender}", payload, qos=1,
                       properties=props)

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5, client_id=f"sender-{args.sender}")
    client.on_connect = lambda c, *_: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        connect.connect(client, args.host, args.port, keepalive=30)
    except connect.BrokerError as exc:
        print(f"send_frame.py: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        if not done.wait(args.timeout):
            print(f"no reply on {reply_topic} within {args.timeout:g} s", file=sys.stderr)
            return 2
    finally:
        client.disconnect()
        client.loop_stop()
    reply = got["reply"]
    if "error" in reply:
        print(f"refused: {reply['error']}", file=sys.stderr)
        return 1
    coverage = ", ".join(f"{k} {v:.1%}" for k, v in reply["coverage"].items())
    print(f"mask {reply['width']}x{reply['height']} for frame {reply['frame_id']} of "
          f"{reply['device_id']}: {coverage}; latency {reply['latency_ms']:.1f} ms on "
          f"{reply['device']} ({reply['model']['name']} {reply['model']['version']})")
    if args.save:
        import cv2

        from edge_agent.protocol.encoding import decode

        cv2.imwrite(args.save, decode(reply["mask"], reply["encoding"]))
        print(f"mask written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
