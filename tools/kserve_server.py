"""A real KServe v2 server for a segedge model repository: Triton (PyPI's nvidia-pytriton)
running each ``<name>/<version>/model.xml`` of the repository with OpenVINO.

Not the agent's runtime: it runs in its own venv (scripts/setup_model_server.sh), for the
e2e tests and the benchmark, and for sites without OVMS or Triton's OpenVINO backend:

    .cache/model-server-venv/bin/python tools/kserve_server.py models/repository/cpu \\
        --http-port 8000 --grpc-port 8001 --metrics-port 8002

The newest version directory of each model is served as that version (Triton's REST on
``--http-port``, gRPC on ``--grpc-port``), compiled with the repository's OVMS
``plugin_config`` (the agent's own properties). One version per model: pytriton names
each model's sockets after the model alone, so a second version of one model in one
process fails to load (OVMS and Triton's OpenVINO backend serve the repository's
``num_versions: 2``). Restart it to serve a version added since. Loopback only unless
``--address``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any, Dict, List


def plugin_config(repo: Path, name: str) -> Dict[str, str]:
    path = repo / "config.json"
    if not path.is_file():
        return {}
    for entry in json.loads(path.read_text())["model_config_list"]:
        if entry["config"]["name"] == name:
            return {k: str(v) for k, v in entry["config"].get("plugin_config", {}).items()}
    return {}


def make_infer(compiled: Any, in_name: str, out_name: str):
    import numpy as np

    requests_lock = threading.Lock()
    pool: List[Any] = []

    def infer(requests: List[Any]) -> List[Dict[str, Any]]:
        with requests_lock:
            request = pool.pop() if pool else compiled.create_infer_request()
        try:
            answers = []
            for req in requests:
                request.infer({in_name: req["image"]})
                out = request.get_tensor(compiled.output(out_name)).data
                answers.append({out_name: np.array(out, np.uint8, copy=True)})
            return answers
        finally:
            with requests_lock:
                pool.append(request)
    return infer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repository", help="one target's tree: config.json, <name>/<n>/model.xml")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--instances", type=int, default=2, help="model instances per version")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import numpy as np
    import openvino as ov
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    repo = Path(args.repository)
    core = ov.Core()
    config = TritonConfig(http_address=args.address, http_port=args.http_port,
                          grpc_address=args.address, grpc_port=args.grpc_port,
                          metrics_address=args.address, metrics_port=args.metrics_port,
                          allow_gpu_metrics=False, exit_on_error=True)
    triton = Triton(config=config)
    served = []
    newest: Dict[str, Path] = {}
    for xml in repo.glob("*/*/model.xml"):
        name, version = xml.parent.parent.name, xml.parent.name
        if version.isdigit() and (name not in newest
                                  or int(version) > int(newest[name].parent.name)):
            newest[name] = xml
    for name, xml in sorted(newest.items()):
        version = xml.parent.name
        compiled = core.compile_model(core.read_model(str(xml)), "CPU",
                                      plugin_config(repo, name))
        inp, out = compiled.input(0), compiled.output(0)
        in_name, out_name = inp.get_any_name(), out.get_any_name()
        funcs = [make_infer(compiled, in_name, out_name) for _ in range(args.instances)]
        triton.bind(model_name=name, model_version=int(version), infer_func=funcs,
                    inputs=[Tensor(name=in_name, dtype=np.uint8,
                                   shape=tuple(inp.get_shape()))],
                    outputs=[Tensor(name=out_name, dtype=np.uint8,
                                    shape=tuple(out.get_shape()))],
                    config=ModelConfig(batching=False), strict=True)
        served.append(f"{name}:{version}")
    if not served:
        raise SystemExit(f"no <name>/<version>/model.xml under {repo}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    triton.run()
    print(f"serving {', '.join(served)} on http://{args.address}:{args.http_port}",
          flush=True)
    stop.wait()
    triton.stop()


if __name__ == "__main__":
    main()
