"""Workload and request driver for ``bench_multiturn.py`` and ``bench_soak.py``.

``drive_engine`` is the engine task ``bench_multiturn.py`` runs in each configuration's engine
process (``breccia_sglang.harness``'s ``run_engine``, one per configuration); with ``--url`` it
drives a running server over HTTP with the same driver instead.

Task SPEC: {"config": name, "env": {...}, "enable": bool, "engine": {...Engine kwargs...},
            "task": "<this file>:drive_engine",
            "workload": {"conversations": [...], "output_len": int, "concurrency": int}}
It returns {"records": [...], "waves": [...], "engine": {...}}.

Turns run in waves: every conversation's turn k (at most ``concurrency`` at once), then
every conversation's turn k+1. Per-turn throughput is then the wave's own requests over the
wave's own wall time, and turn k+1's prompt (turn k's prompt + its answer + a new question)
only ever finds turn k's KV in the radix cache if the pool kept it while the other
conversations ran.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field

# Prose written for this benchmark: real English, so the tokenizer produces the token mix a
# chat model sees (random token ids would not), and no data set has to be downloaded.
SENTENCES = (
    "The old harbour town grew up around a narrow inlet where fishing boats could shelter from winter storms.",
    "Its market square still holds a weekly fair, with stalls selling bread, cheese, rope and hand-carved tools.",
    "In the nineteenth century a railway reached the coast, and the town became a quiet resort for city families.",
    "The lighthouse on the northern cliff was automated in 1962, and its keeper's cottage is now a small museum.",
    "Photosynthesis turns light, water and carbon dioxide into sugar, releasing oxygen as a by-product.",
    "Chlorophyll absorbs red and blue light strongly and reflects green, which is why most leaves look green.",
    "In autumn many trees stop making chlorophyll, revealing yellow and orange pigments that were there all along.",
    "A compiler translates source code into machine instructions, checking types and optimising loops on the way.",
    "Caches keep recently used data close to the processor, because main memory is hundreds of cycles away.",
    "When a cache is full, an eviction policy such as least-recently-used decides which entry to drop.",
    "Bread rises because yeast ferments sugars in the dough and releases bubbles of carbon dioxide.",
    "A longer, cooler fermentation gives the yeast and bacteria time to build a deeper, slightly sour flavour.",
    "Glaciers carve U-shaped valleys as they move, grinding rock into fine flour that clouds meltwater streams.",
    "Many mountain lakes owe their milky turquoise colour to that suspended glacial flour scattering sunlight.",
    "The violin family evolved in northern Italy during the sixteenth century, in workshops such as Cremona's.",
    "A violin's tone depends on the arching of its plates, the density of its spruce top and its varnish.",
    "Tides are driven mostly by the moon's gravity, with the sun adding spring tides and neap tides each month.",
    "In some narrow bays the tidal range exceeds ten metres, leaving boats resting on the mud at low water.",
    "Bees communicate the direction of food with a waggle dance whose angle matches the sun's bearing.",
    "A healthy hive in summer can hold fifty thousand workers, all daughters of a single queen.",
    "Double-entry bookkeeping records every transaction twice, once as a debit and once as a credit.",
    "Because the two sides must balance, many clerical errors show up as soon as the books are totalled.",
    "Maps of the London Underground bend geography into straight lines so that travellers read the connections.",
    "The design, first printed in 1933, influenced transit maps in cities on every continent.",
    "Coffee plants grow best on tropical hillsides, where cool nights slow the ripening of the cherries.",
    "After picking, the beans are dried, hulled, sorted and finally roasted shortly before they are sold.",
    "A suspension bridge hangs its deck from cables draped over tall towers and anchored deep in the banks.",
    "Engineers learned from the Tacoma Narrows collapse that a deck must be stiff against twisting in the wind.",
    "Owls can fly almost silently because soft fringes on their feathers break up the turbulence behind the wing.",
    "Their asymmetric ears let them locate a mouse under snow by the tiny delay between the two ears.",
)
QUESTIONS = (
    "Can you summarise that in two sentences?",
    "What is the most surprising part of this, and why?",
    "How would you explain it to a ten-year-old?",
    "What question would an expert ask next?",
    "Which detail matters most here?",
    "Can you give one concrete example?",
    "What is a common misconception about it?",
    "How does this connect to what we discussed before?",
)
SYSTEM_HEADER = "You are a helpful, concise assistant. Answer using these reference notes when they help.\n\nNotes:\n"


# ---------------------------------------------------------------------------------------------
# Workload: text only, so the benchmark can store it in the spec and every config gets the same
# ---------------------------------------------------------------------------------------------


def prose_of_tokens(tokenizer, rng: random.Random, num_tokens: int) -> str:
    """About ``num_tokens`` tokens of prose: sentences in a random order, cut at a token boundary."""
    if num_tokens <= 0:
        return ""
    pieces, ids = [], []
    while len(ids) < num_tokens:
        pieces.extend(rng.sample(SENTENCES, len(SENTENCES)))
        ids = tokenizer.encode(" ".join(pieces), add_special_tokens=False)
    return tokenizer.decode(ids[:num_tokens])


def build_conversations(tokenizer, *, groups: int, prompts_per_group: int, system_prompt_len: int,
                        question_len: int, turns: int, seed: int) -> list[dict]:
    """``groups * prompts_per_group`` conversations; those of a group share one system prompt.

    Like SGLang's generated-shared-prefix data set (a long shared system prompt per group, a
    short question per prompt and turn), but with prose rather than random token ids.
    Each question is ``question_len`` tokens in all: context prose, then a question stem.
    """
    rng = random.Random(seed)
    header_len = len(tokenizer.encode(SYSTEM_HEADER, add_special_tokens=False))
    conversations = []
    for group in range(groups):
        system = SYSTEM_HEADER + prose_of_tokens(tokenizer, rng, system_prompt_len - header_len)
        for index in range(prompts_per_group):
            questions = []
            for _ in range(turns):
                stem = rng.choice(QUESTIONS)
                stem_len = len(tokenizer.encode(" " + stem, add_special_tokens=False))
                questions.append((prose_of_tokens(tokenizer, rng, question_len - stem_len) + " " + stem).strip())
            conversations.append({"group": group, "index": index, "system": system, "questions": questions})
    return conversations


# ---------------------------------------------------------------------------------------------
# Prompts in token ids: turn k+1 = turn k's prompt ids + its answer ids + the new user turn
# ---------------------------------------------------------------------------------------------

_ANSWER_MARK = "@@ANSWER@@"


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def first_turn_ids(tokenizer, conversation: dict) -> list[int]:
    messages = [{"role": "system", "content": conversation["system"]},
                {"role": "user", "content": conversation["questions"][0]}]
    return _chat_ids(tokenizer, messages)


def next_turn_suffix_ids(tokenizer, question: str) -> list[int]:
    """The ids that follow an assistant answer: its end-of-turn marker, the user's turn and the
    generation prompt, as the model's own chat template writes them."""
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _ANSWER_MARK},
                {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text.split(_ANSWER_MARK, 1)[1], add_special_tokens=False)


# The answer is appended as the very token ids the engine generated, not re-tokenized text:
# re-tokenizing can split the answer differently, and then turn k+1 would miss turn k's
# cached KV for reasons that have nothing to do with the cache.


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request, as the client saw it. Times in seconds from the start of the measured run."""

    conversation: int
    group: int
    turn: int  # 1-based
    prompt_tokens: int = 0  # as the engine counted them (meta_info), else len(input_ids)
    cached_tokens: int = 0  # prompt tokens served from the radix prefix cache
    output_tokens: int = 0
    start_s: float = 0.0
    first_token_s: float | None = None
    end_s: float | None = None
    num_retractions: int = 0
    output_ids: list = field(default_factory=list)
    error: str | None = None

    @property
    def ttft_s(self):
        return None if self.first_token_s is None else self.first_token_s - self.start_s

    @property
    def latency_s(self):
        return None if self.end_s is None else self.end_s - self.start_s

    @property
    def tpot_s(self):
        """Time per output token after the first (decode only), as SGLang's bench_serving defines it."""
        if self.end_s is None or self.first_token_s is None or self.output_tokens < 2:
            return None
        return (self.end_s - self.first_token_s) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        return {**asdict(self), "ttft_s": self.ttft_s, "latency_s": self.latency_s, "tpot_s": self.tpot_s}


class InflightTokens:
    """Prompt + generated tokens of the requests sent and not yet finished, summed; and its peak.

    Client-side: a prefix shared by two running requests counts twice, so this is an upper
    bound on the KV slots they hold (SGLang 0.5.23 reports no live token usage to callers).
    """

    def __init__(self):
        self.by_request: dict = {}
        self.peak = 0

    def update(self, key, tokens: int) -> None:
        self.by_request[key] = tokens
        self.peak = max(self.peak, sum(self.by_request.values()))

    def finish(self, key) -> None:
        self.by_request.pop(key, None)


def so_far(previous: list, new: list, meta: dict) -> list:
    """A stream chunk's per-token lists hold every token so far (SGLang's default) or only the
    new ones (``--incremental-streaming-output``); its ``completion_tokens`` tells the two apart."""
    return new if len(new) == meta.get("completion_tokens", len(new)) else previous + new


def output_ids_so_far(previous: list, chunk: dict) -> list:
    return so_far(previous, list(chunk.get("output_ids") or []), chunk.get("meta_info") or {})


async def run_request(stream_fn, record: RequestRecord, input_ids: list, sampling_params: dict,
                      clock_zero: float, inflight: InflightTokens) -> None:
    """Send one streaming request; fill ``record`` from its chunks. Never raises (errors are counted)."""
    key = (record.conversation, record.turn)
    record.start_s = time.perf_counter() - clock_zero
    record.prompt_tokens = len(input_ids)
    inflight.update(key, len(input_ids))
    try:
        async for chunk in stream_fn(input_ids, sampling_params):
            now = time.perf_counter() - clock_zero
            meta = chunk.get("meta_info") or {}
            record.output_ids = output_ids_so_far(record.output_ids, chunk)
            if record.output_ids and record.first_token_s is None:
                record.first_token_s = now
            record.prompt_tokens = meta.get("prompt_tokens", record.prompt_tokens)
            record.cached_tokens = meta.get("cached_tokens", record.cached_tokens) or 0
            record.num_retractions = meta.get("num_retractions", record.num_retractions) or 0
            inflight.update(key, record.prompt_tokens + len(record.output_ids))
            finish = meta.get("finish_reason") or {}
            if finish.get("type") == "abort":  # e.g. a prompt longer than the pool: SGLang ends the stream
                raise RuntimeError(f"aborted by SGLang: {finish.get('message')}")
        record.end_s = time.perf_counter() - clock_zero
        record.output_tokens = len(record.output_ids)
        if record.first_token_s is None:
            raise RuntimeError("the stream ended without an output token")
    except Exception as exc:  # noqa: BLE001 - one failed request must not end the benchmark
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        inflight.finish(key)


async def run_conversations(stream_fn, tokenizer, workload: dict, progress=None, on_wave=None) -> dict:
    """Drive every conversation through its turns, one wave per turn (see the module docstring).

    ``stream_fn(input_ids, sampling_params)`` is an async iterator of SGLang stream chunks;
    ``on_wave(turn, "start" | "end")`` is called around each wave.
    Returns {"records": [...], "waves": [...]}; a conversation whose request failed stops there.
    """
    conversations, concurrency = workload["conversations"], workload["concurrency"]
    sampling_params = {"temperature": 0, "max_new_tokens": workload["output_len"], "ignore_eos": True}
    semaphore = asyncio.Semaphore(concurrency)
    prompts = {i: first_turn_ids(tokenizer, c) for i, c in enumerate(conversations)}
    records, waves = [], []
    clock_zero = time.perf_counter()

    async def one(record, ids, inflight):
        async with semaphore:
            await run_request(stream_fn, record, ids, sampling_params, clock_zero, inflight)
        if progress is not None:
            progress.update(1)

    num_turns = len(conversations[0]["questions"])
    for turn in range(1, num_turns + 1):
        inflight = InflightTokens()
        wave = [RequestRecord(conversation=i, group=conversations[i]["group"], turn=turn) for i in prompts]
        if on_wave is not None:
            on_wave(turn, "start")
        started = time.perf_counter() - clock_zero
        await asyncio.gather(*(one(record, prompts[record.conversation], inflight) for record in wave))
        waves.append({"turn": turn, "start_s": started, "end_s": time.perf_counter() - clock_zero,
                      "peak_inflight_tokens": inflight.peak})
        if on_wave is not None:
            on_wave(turn, "end")
        records.extend(wave)
        if turn == num_turns:
            break
        prompts = {r.conversation: prompts[r.conversation] + r.output_ids
                   + next_turn_suffix_ids(tokenizer, conversations[r.conversation]["questions"][turn])
                   for r in wave if r.error is None}
        if progress is not None:  # the later turns of a conversation that failed will never run
            progress.total -= (len(wave) - len(prompts)) * (num_turns - turn)
    return {"records": [r.to_json() for r in records], "waves": waves}


def make_progress(config: str, workload: dict):
    from tqdm import tqdm

    total = len(workload["conversations"]) * len(workload["conversations"][0]["questions"])
    # stdout: the benchmark sends this process's stderr (engine warnings) to a log file.
    return tqdm(total=total, desc=config, unit="req", file=sys.stdout, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Backends: an in-process sgl.Engine, or a running server's /generate over HTTP
# ---------------------------------------------------------------------------------------------


def engine_stream_fn(engine):
    async def stream(input_ids, sampling_params):
        generator = await engine.async_generate(input_ids=input_ids, sampling_params=sampling_params, stream=True)
        async for chunk in generator:
            yield chunk

    return stream


def http_stream_fn(session, url: str):
    """SGLang's native ``/generate`` with ``stream``: server-sent events of the same chunks.
    ``extra`` adds request fields (``rid``, ``return_logprob``...)."""

    async def stream(input_ids, sampling_params, extra: dict | None = None):
        payload = {"input_ids": input_ids, "sampling_params": sampling_params, "stream": True, **(extra or {})}
        async with session.post(url.rstrip("/") + "/generate", json=payload) as response:
            if response.status != 200:
                raise RuntimeError(f"/generate -> {response.status}: {(await response.text())[:500]}")
            async for line in response.content:
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[len(b"data:"):])
                if "error" in chunk:
                    raise RuntimeError(str(chunk["error"])[:500])
                yield chunk

    return stream


WARMUP_TEXT = "Warm-up: the quick brown fox jumps over the lazy dog. "


def warmup_batch(tokenizer, workload: dict) -> tuple[list, dict]:
    """``concurrency`` prompts as long as a first turn, and the benchmark's output length: on a
    CPU the first batches of each shape pay for kernel setup (oneDNN primitives, allocator
    growth) that the measured run should not."""
    length = len(first_turn_ids(tokenizer, workload["conversations"][0]))
    batch = []
    for i in range(min(workload["concurrency"], len(workload["conversations"]))):
        ids = tokenizer.encode(f"{i}. " + WARMUP_TEXT * (length // 8 + 1), add_special_tokens=False)
        batch.append(ids[:length])
    return batch, {"temperature": 0, "max_new_tokens": workload["output_len"], "ignore_eos": True}


WAVE_MARK = "[multiturn] wave {turn} {event}"


def mark_wave_in_log(turn: int, event: str) -> None:
    """Our stderr is the engine's log file too: the benchmark splits SGLang's per-step lines there by wave."""
    print(WAVE_MARK.format(turn=turn, event=event), file=sys.stderr, flush=True)


def drive_engine(engine, spec: dict) -> dict:
    """The engine task: warm up, then every conversation's turns in waves, on ``engine``."""
    from breccia_sglang.harness.engine_worker import engine_report, flush_cache

    tokenizer = engine.tokenizer_manager.tokenizer
    workload = spec["workload"]
    # Warm-up outside the clock, then flush so it leaves nothing in the prefix cache.
    warmup_ids, warmup_params = warmup_batch(tokenizer, workload)
    engine.generate(input_ids=warmup_ids, sampling_params=warmup_params)
    flush_cache(engine)
    progress = make_progress(spec["config"], workload)
    try:
        run = engine.loop.run_until_complete(
            run_conversations(engine_stream_fn(engine), tokenizer, workload, progress, mark_wave_in_log))
    finally:
        progress.close()
    return {**run, "engine": engine_report(engine)}


async def flush_http_cache(session, url: str, attempts: int = 100) -> None:
    """Like ``flush_cache`` for a server: refused while a finished request is still being finalized."""
    for _ in range(attempts):
        async with session.post(url + "/flush_cache") as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"/flush_cache refused {attempts} times")


def server_model_path(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/get_model_info", timeout=30) as r:
        info = json.loads(r.read())
    return info.get("tokenizer_path") or info["model_path"]
