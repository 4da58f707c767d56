#!/usr/bin/env python3
"""A minimal OpenAI-compatible embeddings server around sentence-transformers.

Just enough for `hfms bench --mode embeddings` to measure sentence-transformers over
HTTP, the way it measures hfms: POST /v1/embeddings (input: a string or a list of
strings; float embeddings; usage.prompt_tokens), GET /v1/models, GET /v1/models/{id}
(task "embed"), GET /health. Standard library HTTP (a thread per connection, keep-alive,
TCP_NODELAY) in front of one model thread that runs sentence-transformers' own `encode`,
one request at a time.

    st_server.py --model models/sentence-transformers/all-MiniLM-L6-v2 --port 8001 --threads 2
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="sentence-transformers model folder")
    p.add_argument("--name", default="all-minilm", help="model id to report")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    # The model runs on one long-lived thread: torch's OpenMP thread team belongs to the
    # thread that calls it, and a new team for every connection's handler thread would
    # cost milliseconds a request.
    worker = ThreadPoolExecutor(max_workers=1, initializer=torch.set_num_threads, initargs=(args.threads,))
    model_obj = {"id": args.name, "object": "model", "created": 0, "owned_by": "sentence-transformers", "task": "embed"}

    def embed_now(inputs):
        # What a user of the library calls; the usage count re-tokenizes (a fast
        # tokenizer on short sentences: well under 1% of the time).
        vectors = model.encode(inputs, batch_size=len(inputs))
        ids = model.tokenizer(inputs, truncation=True, max_length=model.max_seq_length)["input_ids"]
        return vectors.tolist(), sum(len(i) for i in ids)

    def embed(inputs):
        return worker.submit(embed_now, inputs).result()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without this, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every response.
        disable_nagle_algorithm = True

        def log_message(self, fmt, *a):
            pass

        def send_json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status, message, code=None):
            self.send_json(
                status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
            )

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/health":
                self.send_json(200, {"status": "ok"})
            elif path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [model_obj]})
            elif path == f"/v1/models/{args.name}":
                self.send_json(200, model_obj)
            else:
                self.error(404, f"no route {path}", "not_found")

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self.path.split("?")[0] != "/v1/embeddings":
                return self.error(404, f"no route {self.path}", "not_found")
            try:
                req = json.loads(raw)
            except ValueError as e:
                return self.error(400, f"invalid JSON: {e}")
            inputs = req.get("input")
            if isinstance(inputs, str):
                inputs = [inputs]
            if not inputs or not isinstance(inputs, list) or not all(isinstance(s, str) and s for s in inputs):
                return self.error(400, "input must be a non-empty string or list of non-empty strings")
            if req.get("model") not in (None, args.name):
                return self.error(404, f"model {req.get('model')!r} not found", "model_not_found")
            vectors, tokens = embed(inputs)
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                    "model": args.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"st_server listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
