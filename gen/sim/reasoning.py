"""The simulator as a reasoning teacher, and its logprobs: traces in each wire format a real one uses.

`SimConfig.reasoning` picks how an OpenAI-path answer carries its trace:
    reasoning_content  `message.reasoning_content` (DeepSeek's API, vLLM's reasoning parsers)
    reasoning          `message.reasoning` (newer vLLM, other gateways)
    think-tags         `<think>\n...\n</think>\n\n` before the answer in `content` (no parser)
    hidden             no trace, only its tokens in usage (OpenAI's o-series reason unseen)
and on the Anthropic path a request with `thinking` enabled gets `thinking` blocks before its answer,
whatever `reasoning` says (as the API does); the API's refusals are played too: a forced tool with
thinking, a budget under 1,024 tokens or not under max_tokens, a temperature other than 1, a top_k,
a top_p under 0.95.

A trace is `reasoning_tokens` tokens long on average (4 characters a token, as its usage counts them;
+-25% drawn per answer; an Anthropic thinking budget caps it), made of sentences drawn from a fixed pool
(cheap: a trace of 30,000 tokens costs the simulator well under a millisecond to write). It is drawn
from the request's seed like the answer, or with `reasoning_near_copies` from the messages alone with
one word changed per seed, so that the samples of one input have near-identical traces. Usage reports
the trace's tokens in `completion_tokens` and, unless `reasoning_usage` is false, in
`completion_tokens_details.reasoning_tokens`. An answer cut at max_tokens inside its trace has an empty
answer (and an unclosed `<think>`).

`answer_text` replaces a free-text answer (not a JSON one) with a fixed text, such as `\\boxed{42}`:
the inputs then share a short final answer. `logprobs: true` with `top_logprobs: K` on the OpenAI path
answers `choices[0].logprobs.content`: the answer in 4-character tokens, each with K alternatives
(with `think-tags`, the whole content, the `<think>` block's tokens first, as a server without a
reasoning parser sends them).

Kept apart from gen.sim.dialects, which calls `parse_openai`, `parse_anthropic`, `openai_reasoning`
and `anthropic_thinking` where a request is read and an answer is built.
"""

from __future__ import annotations

import functools
import hashlib
import random
from typing import TYPE_CHECKING, Any

import orjson

from gen.sim.instances import VOCAB, sentences

if TYPE_CHECKING:
    from gen.sim.server import SimConfig

OPENAI_FORMATS = ("reasoning_content", "reasoning", "think-tags", "hidden")
MIN_BUDGET = 1024  # the Messages API's least budget_tokens
SCHEMA_MARKER = "JSON Schema:\n"  # where a system prompt gives the schema of a JSON answer in text
_POOL_SIZE = 512


@functools.cache
def _pool() -> tuple[str, ...]:
    """The sentences traces are made of: fixed, so a trace costs a draw and a join."""
    rng = random.Random("gen-sim-reasoning")
    return tuple(sentences(rng, rng.randint(10, 20)) for _ in range(_POOL_SIZE))


@functools.cache
def _sentence_chars() -> float:
    """A pool sentence's mean length with the space that joins it to the next (about 93 characters):
    measured, so that a trace of T tokens has about 4 x T characters."""
    pool = _pool()
    return sum(len(s) + 1 for s in pool) / len(pool)


def check_config(config: SimConfig) -> None:
    """ValueError for reasoning settings the simulator cannot play."""
    if config.reasoning is not None and config.reasoning not in OPENAI_FORMATS:
        raise ValueError(
            f"reasoning must be one of {', '.join(OPENAI_FORMATS)} or None, got {config.reasoning!r}"
        )
    if config.reasoning_tokens < 1:
        raise ValueError(f"reasoning_tokens must be >= 1, got {config.reasoning_tokens}")


def trace(config: SimConfig, messages: list[Any], rng: random.Random, limit: int | None = None) -> str:
    """A trace of about `reasoning_tokens` tokens (at most `limit`, an Anthropic budget), drawn from
    `rng`, or with `reasoning_near_copies` from the messages with one word changed by `rng`;
    `reasoning_text` as it is, when set."""
    if config.reasoning_text is not None:
        return config.reasoning_text
    pool = _pool()
    own = rng
    if config.reasoning_near_copies:
        digest = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()
        own = random.Random(digest)
    tokens = max(1, round(config.reasoning_tokens * own.uniform(0.75, 1.25)))
    if limit is not None:
        tokens = min(tokens, limit)
    n = max(1, round(tokens * 4 / _sentence_chars()))
    chosen = own.choices(pool, k=n)
    if config.reasoning_near_copies:  # one word of one sentence changed
        i = rng.randrange(n)
        words = chosen[i].split(" ")
        words[rng.randrange(len(words))] = rng.choice(VOCAB)
        chosen[i] = " ".join(words)
    text = " ".join(chosen)
    return text if limit is None else text[: limit * 4]  # a budget is a cap, not a mean


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


# --------------------------------------------------------------------------- requests


def parse_openai(body: dict[str, Any]) -> int | None:
    """The top-K alternatives a chat request asks for (`logprobs: true`, `top_logprobs: K`), or None."""
    if body.get("logprobs") is not True:
        return None
    k = body.get("top_logprobs")
    if k is None:
        return 0
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 20:
        raise ValueError(f"Invalid 'top_logprobs': expected an integer in 0..20, got {k!r}.")
    return k


def parse_anthropic(body: dict[str, Any], max_tokens: int, forced_tool: bool) -> int | None:
    """The thinking budget a Messages request enables, or None; ValueError (the API's message) for
    one the API refuses."""
    thinking = body.get("thinking")
    if thinking is None or (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        return None
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        raise ValueError("thinking: Input should be an object with type 'enabled' or 'disabled'.")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_BUDGET:
        raise ValueError(
            f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_BUDGET}"
        )
    if budget >= max_tokens:
        raise ValueError("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if forced_tool:
        raise ValueError("Thinking may not be enabled when tool_choice forces tool use.")
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None and temperature != 1:
        raise ValueError("`temperature` may only be set to 1 when thinking is enabled.")
    if body.get("top_k") is not None:
        raise ValueError("`top_k` may not be set when thinking is enabled.")
    if top_p is not None and not (isinstance(top_p, int | float) and 0.95 <= top_p <= 1):
        raise ValueError("`top_p` must be greater than or equal to 0.95 when thinking is enabled.")
    return budget


def schema_in_text(system: Any) -> dict[str, Any] | None:
    """The JSON schema a system prompt asks the answer to follow ("... JSON Schema:" and the schema on
    the next line, as gen asks when thinking rules out a forced tool), or None: the simulator then
    answers with an instance of it in the text, as a compliant model does."""
    text = system if isinstance(system, str) else ""
    head, marker, tail = text.rpartition(SCHEMA_MARKER)
    if not marker:
        return None
    try:
        schema = orjson.loads(tail.split("\n\n", 1)[0])
    except orjson.JSONDecodeError:
        return None
    return schema if isinstance(schema, dict) else None


# --------------------------------------------------------------------------- answers


def openai_reasoning(
    body: dict[str, Any],
    config: SimConfig,
    messages: list[Any],
    max_tokens: int | None,
    rng: random.Random,
    top_logprobs: int | None = None,
) -> None:
    """Give a chat-completion `body` its trace as `config.reasoning` says (nothing when None); the
    usage counts it, and max_tokens cuts into it. With the trace inline (think-tags), the logprobs
    asked for (`top_logprobs`) cover it too, as a server without a reasoning parser sends them."""
    if config.reasoning is None:
        return
    choice, usage = body["choices"][0], body["usage"]
    message = choice["message"]
    answer, answer_tokens = message["content"], usage["completion_tokens"]
    text = trace(config, messages, rng)
    tokens = _tokens(text)
    if max_tokens is not None and tokens + answer_tokens > max_tokens:  # cut: in the trace, or the answer
        tokens = min(tokens, max_tokens)
        text = text[: tokens * 4]
        answer_tokens = max_tokens - tokens
        answer = answer[: answer_tokens * 4]
        choice["finish_reason"] = "length"
    if config.reasoning == "hidden":  # reasoned, counted in usage, not sent (OpenAI's o-series)
        message["content"] = answer
    elif config.reasoning == "think-tags":
        closed = answer_tokens > 0 or choice["finish_reason"] != "length"
        message["content"] = f"<think>\n{text}\n</think>\n\n{answer}" if closed else f"<think>\n{text}"
        _inline_logprobs(choice, message["content"], answer if closed else "", top_logprobs)
    else:
        message["content"] = answer
        message[config.reasoning] = text
    usage["completion_tokens"] = tokens + answer_tokens
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if config.reasoning_usage:
        usage["completion_tokens_details"] = {"reasoning_tokens": tokens}


def anthropic_thinking(
    body: dict[str, Any], config: SimConfig, messages: list[Any], budget: int | None, rng: random.Random
) -> None:
    """Put a `thinking` block (with a signature, as the API sends) before a Messages `body`'s answer when
    the request enabled thinking with `budget`; the usage's output tokens count it."""
    if budget is None:
        return
    text = trace(config, messages, rng, limit=budget)
    block = {"type": "thinking", "thinking": text, "signature": hashlib.sha256(text.encode()).hexdigest()}
    body["content"].insert(0, block)
    body["usage"]["output_tokens"] += _tokens(text)


def fixed_answer(config: SimConfig, mode: str, content: str) -> str:
    """`answer_text` in place of a free-text answer, when set."""
    return config.answer_text if config.answer_text is not None and mode == "text" else content


def _inline_logprobs(choice: dict[str, Any], content: str, answer: str, k: int | None) -> None:
    """A server without a reasoning parser gives logprobs for every token it generated: with the trace
    inline, the `<think>` block's tokens come before the answer's (kept, up to a cut `answer`)."""
    logprobs = choice.get("logprobs")
    if k is None or not logprobs:
        return
    kept = logprobs["content"][: -(-len(answer) // 4)]
    prefix = content[: len(content) - len(answer)]
    logprobs["content"] = _token_entries(prefix, k, random.Random(prefix)) + kept


def openai_logprobs(body: dict[str, Any], k: int | None, rng: random.Random) -> None:
    """`choices[0].logprobs.content` for the answer, in 4-character tokens with `k` alternatives each
    (the token itself first, then words of the vocabulary, each less likely than the one before)."""
    if k is None:
        return
    choice = body["choices"][0]
    choice["logprobs"] = {"content": _token_entries(choice["message"]["content"] or "", k, rng)}


def _token_entries(content: str, k: int, rng: random.Random) -> list[dict[str, Any]]:
    entries = []
    for i in range(0, len(content), 4):
        token = content[i : i + 4]
        logprob = -round(rng.expovariate(4.0), 4)
        top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        for j in range(1, k):
            alt = " " + rng.choice(VOCAB)[:5]
            alt_logprob = round(logprob - j - rng.random(), 4)
            top.append({"token": alt, "logprob": alt_logprob, "bytes": list(alt.encode())})
        entry = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top[:k]}
        entries.append(entry)
    return entries
