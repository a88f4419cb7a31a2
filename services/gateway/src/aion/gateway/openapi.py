"""The OpenAPI 3.1 document of the gateway's HTTP surface, served at ``/openapi.json``.

Request schemas come from the pydantic models that parse the bodies, so the
document cannot drift from what the gateway accepts; every status a route
answers is listed with OpenAI's error object.
"""

from __future__ import annotations

from typing import Any

from pydantic import json_schema
from starlette import requests, responses, routing

from aion.gateway import openai_schema

_REF = "#/components/schemas/{model}"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _sse(data: str) -> dict[str, Any]:
    """A ``text/event-stream`` response. Before OpenAPI 3.2 (``itemSchema``), a sequential
    media type's ``schema`` describes one event: its fields, ``data`` being ``data``."""
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "properties": {
                    "data": {"type": "string", "description": data},
                    "event": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                },
                "required": ["data"],
            }
        }
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json({"$ref": _REF.format(model="Error")})}


_ERRORS = {
    "400": _error("bad input; `error.param` names the field"),
    "401": _error("no or unknown credentials"),
    "403": _error("the caller's role does not allow this"),
    "404": _error("no such agent (`model`) or path"),
    "413": _error("the body is too large"),
    "429": _error("over the tenant's rate limit; see Retry-After"),
    "503": _error("a service behind the gateway is down; retry"),
    "504": _error("the task ran out of time"),
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
        "aion": {"$ref": _REF.format(model="TaskResult")},
    },
}

_A2A_ERROR = {
    "type": "object",
    "required": ["error"],
    "description": "an A2A HTTP+JSON error",
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer"},
                "status": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array"},
            },
        }
    },
}

_TASK_RESULT = {
    "type": "object",
    "description": "aion's canonical result (as `aionctl get --json`)",
    "properties": {
        "task_id": {"type": "string"},
        "agent": {"type": "string"},
        "status": {"enum": ["QUEUED", "RUNNING", "OK", "ERROR", "TIMEOUT", "CANCELED"]},
        "output": {"type": "string"},
        "engine": {"type": "object"},
        "usage": {"type": "object"},
        "error": {"type": ["object", "null"]},
        "created_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]},
        "citations": {
            "type": "array",
            "description": "the knowledge base passages the answer drew on, in order of use",
            "items": {
                "type": "object",
                "properties": {
                    "knowledge_base": {"type": "string"},
                    "document_id": {"type": "string"},
                    "version": {"type": "integer"},
                    "chunk_index": {"type": "integer"},
                    "char_start": {"type": "integer"},
                    "char_end": {"type": "integer"},
                    "title": {"type": "string"},
                    "score": {"type": "number"},
                },
            },
        },
    },
}

_MODEL = {
    "type": "object",
    "required": ["id", "object"],
    "properties": {
        "id": {"type": "string", "description": "the agent's name"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "aion": {"type": "object"},
    },
}

_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "choices"],
    "properties": {
        "id": {"type": "string", "description": "the task id"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": {"type": "object"},
        "aion": {"$ref": _REF.format(model="TaskResult")},
    },
}

_EMBEDDINGS = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"const": "embedding"},
                    "index": {"type": "integer"},
                    "embedding": {
                        "description": "floats, or with `encoding_format: base64` the "
                        "little-endian float32 bytes in base64",
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string"},
                        ],
                    },
                },
            },
        },
        "model": {"type": "string", "description": "the embedding model"},
        "usage": {
            "type": "object",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}

_AGENT = {"name": "agent", "in": "path", "required": True, "schema": {"type": "string"}}

_JSONRPC = {
    "type": "object",
    "required": ["jsonrpc", "method"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {"type": ["string", "integer"]},
        "method": {
            "enum": [
                "SendMessage",
                "SendStreamingMessage",
                "GetTask",
                "CancelTask",
                "SubscribeToTask",
            ]
        },
        "params": {"type": "object"},
    },
}


_TASK_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_A2A_ANSWER = {
    "200": {
        "description": "the A2A (1.0) response, or its events as SSE",
        "content": {
            **_json({"type": "object"}),
            **_sse("an A2A StreamResponse as JSON"),
        },
    }
}


def _a2a_rest(auth: dict[str, Any]) -> dict[str, Any]:
    """A2A's HTTP+JSON binding: the message and task routes aion serves."""
    either = {
        "anyOf": [{"$ref": _REF.format(model="Error")}, {"$ref": _REF.format(model="A2AError")}]
    }
    errs = {
        **{
            code: {"description": _ERRORS[code]["description"], "content": _json(either)}
            for code in ("400", "404")
        },
        **_pick("413"),
        **auth,
    }
    body = {
        "required": True,
        "content": _json(
            {
                "type": "object",
                "properties": {"message": {"type": "object"}, "configuration": {"type": "object"}},
            }
        ),
    }

    def op(
        op_id: str, summary: str, *, task: bool = False, with_body: bool = False
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "parameters": [_AGENT, *([_TASK_ID] if task else [])],
            "responses": {**_A2A_ANSWER, **errs},
        }
        if with_body:
            spec["requestBody"] = body
        return spec

    return {
        "/a2a/{agent}/message:send": {
            "post": op("a2aSendMessage", "A2A SendMessage", with_body=True)
        },
        "/a2a/{agent}/message:stream": {
            "post": op("a2aSendStreamingMessage", "A2A SendStreamingMessage", with_body=True)
        },
        "/a2a/{agent}/tasks/{id}": {"get": op("a2aGetTask", "A2A GetTask", task=True)},
        "/a2a/{agent}/tasks/{id}:cancel": {
            "post": op("a2aCancelTask", "A2A CancelTask", task=True)
        },
        "/a2a/{agent}/tasks/{id}:subscribe": {
            "get": op("a2aSubscribeToTask", "A2A SubscribeToTask", task=True)
        },
    }


def _pick(*codes: str) -> dict[str, Any]:
    return {code: _ERRORS[code] for code in codes}


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    _, defs = json_schema.models_json_schema(
        [
            (openai_schema.ChatCompletionRequest, "validation"),
            (openai_schema.EmbeddingRequest, "validation"),
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas.update(
        Error=_ERROR_SCHEMA,
        A2AError=_A2A_ERROR,
        TaskResult=_TASK_RESULT,
        Model=_MODEL,
        ChatCompletion=_COMPLETION,
        EmbeddingList=_EMBEDDINGS,
    )
    auth = _pick("401", "403", "429", "503")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aion gateway",
            "version": "v1",
            "description": "OpenAI-compatible and A2A access to aion agents: `model` "
            "(or the A2A path) names an agent; for `/v1/embeddings` it names the "
            "platform's embedding model. Authenticate with an API "
            "key (`Authorization: Bearer <key>` or `x-api-key`) or a JWT "
            "(`Authorization: Bearer`).",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "Run an agent on a conversation (SSE with `stream: true`)",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 256},
                            "description": "retries with the same key return the first task",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": _json({"$ref": _REF.format(model="ChatCompletionRequest")}),
                    },
                    "responses": {
                        "200": {
                            "description": "the completion, or its chunks as SSE",
                            "content": {
                                **_json({"$ref": _REF.format(model="ChatCompletion")}),
                                **_sse("a chat.completion.chunk as JSON, then [DONE]"),
                            },
                        },
                        **_pick("400", "404", "413", "504"),
                        **auth,
                    },
                }
            },
            "/v1/embeddings": {
                "post": {
                    "operationId": "createEmbedding",
                    "summary": "Embed texts with the platform's embedding model (the one "
                    "knowledge bases are indexed with)",
                    "requestBody": {
                        "required": True,
                        "content": _json({"$ref": _REF.format(model="EmbeddingRequest")}),
                    },
                    "responses": {
                        "200": {
                            "description": "one vector per text, in order",
                            "content": _json({"$ref": _REF.format(model="EmbeddingList")}),
                        },
                        **_pick("400", "413", "504"),
                        **auth,
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The caller's agents",
                    "responses": {
                        "200": {
                            "description": "the agents",
                            "content": _json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "object": {"const": "list"},
                                        "data": {
                                            "type": "array",
                                            "items": {"$ref": _REF.format(model="Model")},
                                        },
                                    },
                                }
                            ),
                        },
                        **auth,
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "summary": "One of the caller's agents",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "the agent",
                            "content": _json({"$ref": _REF.format(model="Model")}),
                        },
                        **_pick("404"),
                        **auth,
                    },
                }
            },
            "/a2a/{agent}/.well-known/agent-card.json": {
                "get": {
                    "operationId": "agentCard",
                    "summary": "The A2A agent card of one of your agents",
                    "parameters": [_AGENT],
                    "responses": {
                        "200": {
                            "description": "the A2A (1.0) agent card",
                            "content": _json({"type": "object"}),
                        },
                        **_pick("404"),
                        **auth,
                    },
                }
            },
            "/a2a/{agent}": {
                "post": {
                    "operationId": "a2aJsonRpc",
                    "summary": "A2A 1.0 JSON-RPC: SendMessage, SendStreamingMessage, GetTask, "
                    "CancelTask, SubscribeToTask",
                    "parameters": [_AGENT],
                    "requestBody": {"required": True, "content": _json(_JSONRPC)},
                    "responses": {
                        "200": {
                            "description": "the JSON-RPC response, or its events as SSE",
                            "content": {
                                **_json({"type": "object"}),
                                **_sse("a JSON-RPC response (an A2A StreamResponse) as JSON"),
                            },
                        },
                        **_pick("404", "413"),
                        **auth,
                    },
                }
            },
            **_a2a_rest(auth),
            "/mcp": {
                "post": {
                    "operationId": "mcp",
                    "summary": "MCP (Streamable HTTP, stateless): knowledge_search, list_agents, "
                    "run_agent",
                    "parameters": [
                        {
                            "name": "Accept",
                            "in": "header",
                            "required": True,
                            "schema": {"const": "application/json, text/event-stream"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["jsonrpc", "method"],
                                "properties": {
                                    "jsonrpc": {"const": "2.0"},
                                    "id": {"type": ["string", "integer"]},
                                    "method": {"type": "string"},
                                    "params": {"type": "object"},
                                },
                            }
                        ),
                    },
                    "responses": {
                        "200": {
                            "description": "the JSON-RPC response",
                            "content": _json({"type": "object"}),
                        },
                        "202": {"description": "a notification, accepted"},
                        "400": {
                            "description": "not a valid MCP message",
                            "content": _json({"type": "object"}),
                        },
                        "406": {
                            "description": "the Accept header lacks application/json",
                            "content": _json({"type": "object"}),
                        },
                        **_pick("401", "403", "429"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}
                    },
                }
            },
        },
    }


def route() -> routing.Route:
    """``GET /openapi.json``."""
    doc = document()

    async def serve(request: requests.Request) -> responses.Response:
        return responses.JSONResponse(doc)

    return routing.Route("/openapi.json", serve, methods=["GET"])
