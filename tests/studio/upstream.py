"""A stand-in for a model endpoint behind the A/B router: a tiny OpenAI-compatible
``/v1/chat/completions`` (streaming and not) that answers every prompt with
``"<name> says: <the user's last message>"``, so a test can tell which arm answered. It also
counts the requests it got. The project's ``kubetune serve`` of a tiny model answers the same
API; this stand-in keeps a thousand requests cheap."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def upstream_app(name: str) -> FastAPI:
    app = FastAPI()
    app.state.requests = 0

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        body: dict[str, Any] = await request.json()
        app.state.requests += 1
        text = f"{name} says: {body['messages'][-1]['content']}"
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": f"upstream-{app.state.requests}",
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )

        def events():
            for n, word in enumerate(text.split(" ")):
                piece = word if n == 0 else " " + word
                chunk = {
                    "id": f"upstream-{app.state.requests}",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
