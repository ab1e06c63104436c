"""A vLLM stand-in (development only, never in an image): answers `GET /v1/models` the way a vLLM
server with `VLLM_PLUGINS=lora_filesystem_resolver` would see its adapters, the served base model
plus every folder of the resolver directory whose `adapter_config.json` vLLM's resolver would
accept (`peft_type` LORA, `base_model_name_or_path` equal to the served model name). It reads the
directory on every request and keeps nothing in memory: like the real server after a restart,
what it serves is what the directory (the adapter syncer's work) holds.

`python -m lora_devkit.vllm_standin --model NAME --dir DIR --port N`.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def resolvable_adapters(directory: Path, served_model: str) -> list[str]:
    """The adapters vLLM's filesystem resolver would load from `directory`."""
    names: list[str] = []
    if not directory.is_dir():
        return names
    for folder in sorted(directory.iterdir()):
        config_path = folder / "adapter_config.json"
        if folder.name.startswith(".") or not config_path.is_file():
            continue
        try:
            config = json.loads(config_path.read_text())
        except ValueError:
            continue
        if (
            config.get("peft_type") == "LORA"
            and config.get("base_model_name_or_path") == served_model
        ):
            names.append(folder.name)
    return names


def models_body(directory: Path, served_model: str) -> dict[str, Any]:
    """vLLM's `/v1/models` shape: the base model, then each adapter with the base as parent."""
    data: list[dict[str, Any]] = [{"id": served_model, "object": "model", "parent": None}]
    data += [
        {"id": name, "object": "model", "parent": served_model, "root": str(directory / name)}
        for name in resolvable_adapters(directory, served_model)
    ]
    return {"object": "list", "data": data}


class VllmStandIn:
    """The stand-in on 127.0.0.1:`port` (0: a free one), in a thread; `with` starts and stops."""

    def __init__(self, served_model: str, directory: Path, port: int = 0) -> None:
        model, folder = served_model, directory

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    self.send_error(404, "not found")
                    return
                body = json.dumps(models_body(folder, model)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> VllmStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm_standin", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with VllmStandIn(args.model, args.dir, args.port) as server:
        print(f"vllm stand-in at {server.url}", flush=True)
        server.thread.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
