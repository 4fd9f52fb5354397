"""batchrun/responses.py: answers, stream chunks, error bodies and Retry-After (pure)."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest
from multidict import CIMultiDict

from batchrun.errors import ResponseFormatError
from batchrun.records import Completion
from batchrun.responses import (
    MAX_DETAIL_CHARS,
    StreamAssembler,
    error_detail,
    is_problem_json,
    parse_completion,
    parse_retry_after,
)


def completion_body(message: dict[str, Any], **top: Any) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "qwen/qwen3.5-397b-a17b",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
    data.update(top)
    return json.dumps(data).encode()


def sse(chunk: dict[str, Any] | str) -> bytes:
    payload = chunk if isinstance(chunk, str) else json.dumps(chunk)
    return b"data: " + payload.encode()


def delta_chunk(delta: dict[str, Any], finish_reason: str | None = None, **top: Any) -> bytes:
    chunk: dict[str, Any] = {
        "id": "chat-abc",
        "object": "chat.completion.chunk",
        "created": 1700000001,
        "model": "qwen/qwen3.5-397b-a17b",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }
    chunk.update(top)
    return sse(chunk)


# ---------------------------------------------------------------- parse_completion


class TestParseCompletion:
    def test_plain_answer(self) -> None:
        c = parse_completion(completion_body({"role": "assistant", "content": "Four."}))
        assert c == Completion(
            content="Four.",
            reasoning_content=None,
            tool_calls=None,
            finish_reason="stop",
            prompt_tokens=11,
            completion_tokens=7,
            total_tokens=18,
            model="qwen/qwen3.5-397b-a17b",
            ttft_s=None,
        )

    def test_accepts_str(self) -> None:
        body = completion_body({"role": "assistant", "content": "ok"}).decode()
        assert parse_completion(body).content == "ok"

    def test_reasoning_content_field(self) -> None:
        c = parse_completion(
            completion_body({"role": "assistant", "content": "4", "reasoning_content": "2+2"})
        )
        assert (c.reasoning_content, c.content) == ("2+2", "4")

    def test_reasoning_field(self) -> None:
        c = parse_completion(
            completion_body({"role": "assistant", "content": "4", "reasoning": "two and two"})
        )
        assert (c.reasoning_content, c.content) == ("two and two", "4")

    def test_reasoning_content_wins_over_reasoning(self) -> None:
        message = {"content": "4", "reasoning_content": "first", "reasoning": "second"}
        assert parse_completion(completion_body(message)).reasoning_content == "first"

    def test_explicit_reasoning_leaves_think_tags_in_content(self) -> None:
        message = {"content": "<think>x</think>4", "reasoning_content": "real"}
        c = parse_completion(completion_body(message))
        assert (c.reasoning_content, c.content) == ("real", "<think>x</think>4")

    def test_think_split_from_content(self) -> None:
        c = parse_completion(
            completion_body({"content": "<think>\nAdd them.\n</think>\n\nThe answer is 4."})
        )
        assert c.reasoning_content == "Add them."
        assert c.content == "The answer is 4."

    def test_think_split_with_leading_whitespace(self) -> None:
        c = parse_completion(completion_body({"content": "  \n<think>why</think>answer"}))
        assert (c.reasoning_content, c.content) == ("why", "answer")

    def test_think_split_without_opening_tag(self) -> None:
        c = parse_completion(completion_body({"content": "I should add.</think>\n4"}))
        assert (c.reasoning_content, c.content) == ("I should add.", "4")

    def test_text_before_think_is_not_split(self) -> None:
        text = "Sure: <think>hmm</think> 4"
        c = parse_completion(completion_body({"content": text}))
        assert c.reasoning_content is None
        assert c.content == text

    def test_no_think_close_is_not_split(self) -> None:
        c = parse_completion(completion_body({"content": "<think>unfinished"}))
        assert (c.reasoning_content, c.content) == (None, "<think>unfinished")

    def test_tool_calls_kept(self) -> None:
        calls = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'},
            }
        ]
        c = parse_completion(completion_body({"content": None, "tool_calls": calls}))
        assert c.tool_calls == calls
        assert c.content is None

    def test_empty_tool_calls_is_none(self) -> None:
        assert (
            parse_completion(completion_body({"content": "x", "tool_calls": []})).tool_calls is None
        )

    def test_finish_reason_and_model(self) -> None:
        data = json.loads(completion_body({"content": "x"}))
        data["choices"][0]["finish_reason"] = "length"
        data["model"] = "meta/llama"
        c = parse_completion(json.dumps(data).encode())
        assert (c.finish_reason, c.model) == ("length", "meta/llama")

    def test_total_tokens_computed_when_missing(self) -> None:
        body = completion_body(
            {"content": "x"}, usage={"prompt_tokens": 30, "completion_tokens": 12}
        )
        c = parse_completion(body)
        assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (30, 12, 42)

    def test_total_tokens_from_server_is_kept(self) -> None:
        body = completion_body(
            {"content": "x"},
            usage={"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 50},
        )
        assert parse_completion(body).total_tokens == 50

    @pytest.mark.parametrize("usage", [None, "n/a", []])
    def test_no_usage(self, usage: Any) -> None:
        c = parse_completion(completion_body({"content": "x"}, usage=usage))
        assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (None, None, None)

    def test_usage_missing_key(self) -> None:
        data = json.loads(completion_body({"content": "x"}))
        del data["usage"]
        c = parse_completion(json.dumps(data))
        assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (None, None, None)
        assert c.content == "x"

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            (b"<html>502 Bad Gateway</html>", "not JSON"),
            (b"", "not JSON"),
            (b"\xff\xfe\xfa", "not JSON"),
            (b"[1, 2]", "not a JSON object"),
            (b'"text"', "not a JSON object"),
            (b'{"id": "x"}', "no choices"),
            (b'{"choices": []}', "no choices"),
            (b'{"choices": {"0": {}}}', "no choices"),
            (b'{"choices": ["x"]}', "no choices"),
            (b'{"choices": [{"index": 0}]}', "message"),
            (b'{"choices": [{"index": 0, "message": "hi"}]}', "message"),
        ],
    )
    def test_unusable_body(self, body: bytes, words: str) -> None:
        with pytest.raises(ResponseFormatError, match=words) as info:
            parse_completion(body)
        assert info.value.retryable is True


# ---------------------------------------------------------------- StreamAssembler


class TestStreamAssembler:
    def test_content_deltas_concatenated(self) -> None:
        a = StreamAssembler(time.monotonic())
        a.feed_line(delta_chunk({"role": "assistant", "content": None}))
        a.feed_line(delta_chunk({"content": "The "}))
        a.feed_line(delta_chunk({"content": "answer "}))
        a.feed_line(delta_chunk({"content": "is 4."}, finish_reason="stop"))
        a.feed_line(b"data: [DONE]")
        c = a.completion()
        assert c.content == "The answer is 4."
        assert c.finish_reason == "stop"
        assert c.model == "qwen/qwen3.5-397b-a17b"
        assert c.reasoning_content is None
        assert c.tool_calls is None
        assert a.done and a.finished

    @pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
    def test_reasoning_deltas(self, field: str) -> None:
        a = StreamAssembler(time.monotonic())
        a.feed_line(delta_chunk({field: "Two "}))
        a.feed_line(delta_chunk({field: "plus two."}))
        a.feed_line(delta_chunk({"content": "4"}, finish_reason="stop"))
        c = a.completion()
        assert (c.reasoning_content, c.content) == ("Two plus two.", "4")

    def test_think_tags_split_from_streamed_content(self) -> None:
        a = StreamAssembler(time.monotonic())
        for piece in ["<thi", "nk>hm", "m</th", "ink>\n\n4"]:
            a.feed_line(delta_chunk({"content": piece}))
        c = a.completion()
        assert (c.reasoning_content, c.content) == ("hmm", "4")

    def test_ttft_set_by_first_token_only(self) -> None:
        started = time.monotonic() - 1000.0
        a = StreamAssembler(started)
        a.feed_line(delta_chunk({"role": "assistant", "content": None}))
        assert a.ttft_s is None  # a role-only delta is not a token
        a.feed_line(delta_chunk({"content": "x"}))
        first = a.ttft_s
        assert first is not None
        assert 1000.0 <= first < 1100.0
        a.feed_line(delta_chunk({"content": "y"}))
        assert a.ttft_s == first
        assert a.completion().ttft_s == first

    def test_ttft_set_by_reasoning_token(self) -> None:
        a = StreamAssembler(time.monotonic() - 50.0)
        a.feed_line(delta_chunk({"reasoning_content": "r"}))
        assert a.ttft_s is not None and a.ttft_s >= 50.0

    def test_done(self) -> None:
        a = StreamAssembler(0.0)
        assert not a.done and not a.finished
        a.feed_line(b"data:[DONE]")
        assert a.done and a.finished

    def test_finish_reason_alone_is_finished(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "x"}, finish_reason="length"))
        assert a.finished and not a.done
        assert a.completion().finish_reason == "length"

    def test_usage_from_final_empty_choices_chunk(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "x"}))
        a.feed_line(delta_chunk({}, finish_reason="stop"))
        a.feed_line(
            sse(
                {
                    "id": "chat-abc",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
            )
        )
        a.feed_line(b"data: [DONE]")
        c = a.completion()
        assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (5, 3, 8)
        assert c.content == "x"

    def test_usage_total_computed(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}))
        assert a.completion().total_tokens == 8

    def test_null_usage_does_not_erase_usage(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(sse({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
        a.feed_line(delta_chunk({"content": "late"}))  # carries "usage": null
        assert a.completion().total_tokens == 3

    def test_no_usage(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "x"}, finish_reason="stop"))
        c = a.completion()
        assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (None, None, None)

    def test_chunks_without_choices_ignored(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "a"}))
        a.feed_line(sse({"id": "chat-abc", "object": "chat.completion.chunk"}))
        a.feed_line(sse({"choices": None}))
        a.feed_line(sse({"choices": "nonsense"}))
        a.feed_line(delta_chunk({"content": "b"}))
        assert a.completion().content == "ab"
        assert a.ttft_s is not None

    def test_other_choice_indexes_ignored(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "main"}))
        a.feed_line(sse({"choices": [{"index": 1, "delta": {"content": "OTHER"}}]}))
        assert a.completion().content == "main"

    def test_tool_calls_by_index_with_argument_fragments(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(
            delta_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "add", "arguments": ""},
                        }
                    ]
                }
            )
        )
        a.feed_line(delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}))
        a.feed_line(
            delta_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "mul", "arguments": '{"x":'},
                        }
                    ]
                }
            )
        )
        a.feed_line(delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 2}"}}]}))
        a.feed_line(delta_chunk({"tool_calls": [{"index": 1, "function": {"arguments": " 3}"}}]}))
        a.feed_line(delta_chunk({}, finish_reason="tool_calls"))
        c = a.completion()
        assert c.finish_reason == "tool_calls"
        assert c.tool_calls == [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "mul", "arguments": '{"x": 3}'},
            },
        ]
        assert c.content is None

    def test_tool_calls_by_id_without_index(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(
            delta_chunk(
                {"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"k"'}}]}
            )
        )
        a.feed_line(
            delta_chunk(
                {"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "{}"}}]}
            )
        )
        a.feed_line(delta_chunk({"tool_calls": [{"id": "c1", "function": {"arguments": ": 1}"}}]}))
        c = a.completion()
        assert c.tool_calls == [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"k": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]

    def test_tool_calls_taken_whole_without_index_or_id(self) -> None:
        a = StreamAssembler(0.0)
        whole = {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        a.feed_line(delta_chunk({"tool_calls": [whole, whole]}))
        a.feed_line(delta_chunk({"tool_calls": [whole]}))
        c = a.completion()
        assert (
            c.tool_calls
            == [
                {"id": None, "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ]
            * 3
        )

    def test_tool_call_arguments_as_object(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(
            delta_chunk(
                {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"a": 1}}}]}
            )
        )
        assert a.completion().tool_calls == [
            {"id": None, "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ]

    def test_error_chunk_raises(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "partial"}))
        error = {"error": {"object": "error", "message": "model crashed", "type": "InternalError"}}
        with pytest.raises(ResponseFormatError, match="model crashed"):
            a.feed_line(sse(error))

    @pytest.mark.parametrize(
        "line",
        [
            b"",
            b": keep-alive comment",
            b"event: message",
            b"id: 7",
            b"retry: 100",
            b"data:",
            b"data:  ",
        ],
    )
    def test_non_data_lines_ignored(self, line: bytes) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(line)
        assert not a.finished
        assert a.completion() == Completion()

    @pytest.mark.parametrize("line", [b"data: {not json", b'data: {"a": 1', b"data: \xff\xfe"])
    def test_bad_json_raises(self, line: bytes) -> None:
        with pytest.raises(ResponseFormatError, match="not JSON"):
            StreamAssembler(0.0).feed_line(line)

    @pytest.mark.parametrize("line", [b"data: [1, 2]", b"data: 42", b'data: "x"'])
    def test_non_object_chunk_raises(self, line: bytes) -> None:
        with pytest.raises(ResponseFormatError, match="not an object"):
            StreamAssembler(0.0).feed_line(line)

    def _full_stream(self) -> StreamAssembler:
        a = StreamAssembler(time.monotonic())
        a.feed_line(delta_chunk({"role": "assistant", "content": None}))
        a.feed_line(delta_chunk({"reasoning": "think "}))
        a.feed_line(delta_chunk({"reasoning": "hard"}))
        a.feed_line(delta_chunk({"content": "Calling."}))
        a.feed_line(
            delta_chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "call_1", "function": {"name": "add", "arguments": "{"}}
                    ]
                }
            )
        )
        a.feed_line(delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))
        a.feed_line(delta_chunk({}, finish_reason="tool_calls"))
        a.feed_line(
            sse(
                {
                    "id": "chat-abc",
                    "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
                }
            )
        )
        a.feed_line(b"data: [DONE]")
        return a

    def test_as_chat_completion(self) -> None:
        a = self._full_stream()
        obj = a.as_chat_completion()
        assert obj == {
            "id": "chat-abc",
            "object": "chat.completion",
            "created": 1700000001,
            "model": "qwen/qwen3.5-397b-a17b",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Calling.",
                        "reasoning_content": "think hard",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "add", "arguments": "{}"},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        }

    def test_as_chat_completion_parses_back_to_completion(self) -> None:
        a = self._full_stream()
        reparsed = parse_completion(json.dumps(a.as_chat_completion()))
        expected = a.completion()
        expected.ttft_s = None
        assert reparsed == expected

    def test_as_chat_completion_with_think_tags(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "<think>r</think>answer"}, finish_reason="stop"))
        message = a.as_chat_completion()["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "answer", "reasoning_content": "r"}
        reparsed = parse_completion(json.dumps(a.as_chat_completion()))
        assert (reparsed.content, reparsed.reasoning_content) == ("answer", "r")

    def test_as_chat_completion_minimal(self) -> None:
        a = StreamAssembler(0.0)
        a.feed_line(delta_chunk({"content": "hi"}))
        obj = a.as_chat_completion()
        assert obj["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
        assert obj["usage"] is None
        assert obj["choices"][0]["finish_reason"] is None


# ---------------------------------------------------------------- error_detail


class TestErrorDetail:
    def test_problem_json_title_and_detail(self) -> None:
        body = {
            "type": "urn:inference-service:problem-details:bad-request",
            "title": "Bad Request",
            "status": 400,
            "detail": "max_tokens must be positive",
            "instance": "/v2/nvcf/pexec/functions/f",
            "requestId": "r",
        }
        assert error_detail(json.dumps(body).encode()) == "Bad Request: max_tokens must be positive"

    def test_problem_json_title_only(self) -> None:
        assert error_detail(b'{"status":429,"title":"Too Many Requests"}') == "Too Many Requests"

    def test_problem_json_detail_equal_to_title(self) -> None:
        assert error_detail(b'{"title":"Gone","detail":"Gone"}') == "Gone"

    def test_openai_error(self) -> None:
        body = {"error": {"message": "model is required", "type": "invalid_request_error"}}
        assert error_detail(json.dumps(body).encode()) == "model is required"

    def test_openai_error_without_message(self) -> None:
        assert error_detail(b'{"error": {"code": "x"}}') == '{"code": "x"}'

    def test_error_string(self) -> None:
        assert error_detail(b'{"error": "quota exhausted"}') == "quota exhausted"

    def test_bare_detail(self) -> None:
        body = b"{\"detail\":\"Function 'f-1': Not found for account 'a-2'\"}"
        assert error_detail(body) == "Function 'f-1': Not found for account 'a-2'"

    def test_bare_detail_list(self) -> None:
        detail = [{"loc": ["body", "messages"], "msg": "field required", "type": "missing"}]
        out = error_detail(json.dumps({"detail": detail}).encode())
        assert out == json.dumps(detail)
        assert "field required" in out

    def test_message_field(self) -> None:
        assert error_detail(b'{"message": "overloaded"}') == "overloaded"

    def test_plain_text(self) -> None:
        assert error_detail(b"404 page not found\n") == "404 page not found"

    def test_plain_text_whitespace_collapsed(self) -> None:
        assert error_detail(b"<html>\n  <h1>Bad   Gateway</h1>\n</html>") == (
            "<html> <h1>Bad Gateway</h1> </html>"
        )

    def test_json_without_known_fields_is_kept(self) -> None:
        assert error_detail(b'{"foo": 1}') == '{"foo": 1}'
        assert error_detail(b"[1, 2]") == "[1, 2]"

    def test_sse_wrapped(self) -> None:
        body = b'data: {"status":400,"title":"Bad Request","detail":"bad tools"}\n\n'
        assert error_detail(body) == "Bad Request: bad tools"

    def test_sse_wrapped_openai(self) -> None:
        assert error_detail(b'data:{"error":{"message":"nope"}}') == "nope"

    def test_empty(self) -> None:
        assert error_detail(b"") == ""
        assert error_detail(b"  \n") == ""

    def test_not_utf8(self) -> None:
        assert error_detail(b"bad \xff byte") == "bad \ufffd byte"

    def test_long_text_clipped(self) -> None:
        out = error_detail(b"x" * 5000)
        assert len(out) <= MAX_DETAIL_CHARS == 500
        assert out.startswith("x" * 400)
        assert out.endswith("…")

    def test_long_json_detail_clipped(self) -> None:
        out = error_detail(json.dumps({"title": "Bad", "detail": "y " * 2000}).encode())
        assert len(out) <= 500
        assert out.startswith("Bad: y y y")

    def test_short_text_not_clipped(self) -> None:
        text = "z" * 500
        assert error_detail(text.encode()) == text


class TestIsProblemJson:
    def test_content_type(self) -> None:
        assert is_problem_json(b"", "application/problem+json")
        assert is_problem_json(b"whatever", "application/problem+json; charset=utf-8")

    def test_problem_shape_in_json(self) -> None:
        assert is_problem_json(b'{"status": 404, "title": "Not Found"}', "application/json")
        assert is_problem_json(b'{"type": "about:blank"}', "")

    def test_plain_404(self) -> None:
        assert not is_problem_json(b"404 page not found", "text/plain; charset=utf-8")

    def test_empty_body(self) -> None:
        assert not is_problem_json(b"", "text/plain")

    def test_json_without_problem_fields(self) -> None:
        assert not is_problem_json(b'{"foo": 1}', "application/json")
        assert not is_problem_json(b"[1]", "application/json")

    def test_not_utf8(self) -> None:
        assert not is_problem_json(b"\xff\xfe", "application/octet-stream")


class TestParseRetryAfter:
    def test_ms(self) -> None:
        assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5

    def test_ms_wins_over_seconds(self) -> None:
        assert parse_retry_after({"retry-after-ms": "250", "retry-after": "30"}) == 0.25

    def test_bad_ms_falls_back_to_seconds(self) -> None:
        assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "7"}) == 7.0

    def test_seconds(self) -> None:
        assert parse_retry_after({"retry-after": "10800"}) == 10800.0
        assert parse_retry_after({"retry-after": "2.5"}) == 2.5

    def test_case_insensitive_headers(self) -> None:
        assert parse_retry_after(CIMultiDict({"Retry-After": "12"})) == 12.0
        assert parse_retry_after(CIMultiDict({"Retry-After-Ms": "300"})) == 0.3

    def test_http_date(self) -> None:
        now = 1_700_000_000.0
        date = email.utils.formatdate(now + 120, usegmt=True)
        assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(120.0)

    def test_http_date_in_past(self) -> None:
        now = 1_700_000_000.0
        date = email.utils.formatdate(now - 3600, usegmt=True)
        assert parse_retry_after({"retry-after": date}, now=now) == 0.0

    @pytest.mark.parametrize("value", ["soon", "tomorrow at noon", "1 2 3", "Fri, 99 Foo"])
    def test_garbage(self, value: str) -> None:
        assert parse_retry_after({"retry-after": value}) is None

    def test_absent(self) -> None:
        assert parse_retry_after({}) is None
        assert parse_retry_after({"retry-after": ""}) is None

    @pytest.mark.parametrize("raw", ["-5", "inf", "nan", "1e3", "5s"])
    def test_not_plain_seconds_is_ignored(self, raw: str) -> None:
        # RFC 9110: delay-seconds is 1*DIGIT; anything else must not pause the job.
        assert parse_retry_after({"retry-after": raw}) is None
        assert parse_retry_after({"retry-after-ms": raw}) is None
