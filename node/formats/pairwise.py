"""Pairwise formats: TRL, Anthropic HH, conversational messages, typed A/B comparisons, multi-annotator.

Each parser takes one decoded JSON object and returns a `Comparison` (or, for multi, a list of
comparisons and rankings), or raises `RecordError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from node.formats.fields import (
    AGREEMENT,
    ANNOTATOR,
    CAMPAIGN,
    CHOSEN,
    COMMENT,
    CONFIDENCE,
    CREATED_AT,
    ID,
    IDEMPOTENCY_KEY,
    MODEL,
    MODEL_A,
    MODEL_B,
    MODEL_CHOSEN,
    MODEL_REJECTED,
    ORDER,
    OUTCOME,
    PROMPT,
    RANKINGS,
    REJECTED,
    RESPONSE_A,
    RESPONSE_B,
    RESPONSES,
    SUBSET,
    TEXT,
    VOTE_A,
    VOTE_B,
    VOTES,
    ParseContext,
    RecordError,
    check_text,
    json_type,
    opt_datetime,
    opt_index,
    opt_name,
    opt_person,
    opt_str,
    opt_unit,
    outcome,
    req_text,
    source_of,
    wrong_type,
)
from storage.records import Comparison, Ranking, Record

HH_ASSISTANT: Final = "\n\nAssistant:"
"""Anthropic HH turn marker; a prompt ends with it and the reply follows it."""

ROLE_LABELS: Final[dict[str, str]] = {"user": "Human", "assistant": "Assistant", "system": "System"}
"""How conversational messages render as prompt text: "\\n\\n{label}: {content}" per message."""

_IDENTICAL_FIX: Final = "a comparison needs two different responses; drop the record or fix the copy"


def _identical(key_a: str, key_b: str) -> RecordError:
    return RecordError(f"'{key_a}' and '{key_b}' are identical texts", _IDENTICAL_FIX)


def parse_trl(d: dict[str, Any], ctx: ParseContext) -> Comparison:
    """TRL preference record {"prompt", "chosen", "rejected"} (texts or message lists); outcome "A"."""
    chosen = d.get(CHOSEN)
    if type(chosen) is list or type(d.get(PROMPT)) is list:
        return parse_conversational(d, ctx)
    if chosen is None and RESPONSE_A in d:  # the typed A/B form that trl exports write for non-"A" outcomes
        return parse_ab(d, ctx)
    return parse_trl_text(d, ctx)


def parse_trl_text(d: dict[str, Any], ctx: ParseContext) -> Comparison:
    """TRL standard record {"prompt", "chosen", "rejected"}, all texts (the import hot path)."""
    prompt, chosen, rejected = d.get(PROMPT), d.get(CHOSEN), d.get(REJECTED)
    if not (type(prompt) is str and type(chosen) is str and type(rejected) is str and prompt and chosen
            and rejected and not prompt.isspace() and not chosen.isspace() and not rejected.isspace()):
        prompt = req_text(d, PROMPT, "add 'prompt', or use --format hh for Anthropic HH transcripts "
                                     "that embed the prompt in 'chosen' and 'rejected'")
        chosen, rejected = req_text(d, CHOSEN), req_text(d, REJECTED)  # these raise the precise error
    return _chosen_rejected(d, ctx, prompt, chosen, rejected)


# optional key -> (Comparison field, validator) for chosen/rejected records; looked up only when present
_CHOSEN_REJECTED_FIELDS: Final[dict[str, tuple[str, Callable[[dict[str, Any], str], object]]]] = {
    ANNOTATOR: ("annotator", opt_person),
    CONFIDENCE: ("confidence", opt_unit),
    COMMENT: ("comment", opt_str),
    AGREEMENT: ("agreement", opt_unit),
    MODEL_CHOSEN: ("model_a", opt_str),
    MODEL_REJECTED: ("model_b", opt_str),
    SUBSET: ("subset", opt_str),
    CAMPAIGN: ("campaign", opt_str),
    ID: ("external_id", opt_name),
    IDEMPOTENCY_KEY: ("idempotency_key", opt_str),
    CREATED_AT: ("created_at", opt_datetime),
}
_CHOSEN_REJECTED_KEYS: Final = frozenset(_CHOSEN_REJECTED_FIELDS)


def _chosen_rejected(d: dict[str, Any], ctx: ParseContext, prompt: str, chosen: str, rejected: str) -> Comparison:
    if chosen == rejected:
        raise _identical(CHOSEN, REJECTED)
    if OUTCOME in d and d[OUTCOME] != "A" and d[OUTCOME] is not None:
        raise RecordError(f"a chosen/rejected record says outcome {d[OUTCOME]!r}; chosen/rejected always means 'A'",
                          "write it as {\"response_a\", \"response_b\", \"outcome\"} instead, or drop 'outcome'")
    optional: dict[str, Any] = {}
    for key in _CHOSEN_REJECTED_KEYS.intersection(d):  # hot path: most records carry 0-3 of these
        field, check = _CHOSEN_REJECTED_FIELDS[key]
        value = check(d, key)
        if value is not None:
            optional[field] = value
    return Comparison(source_of(d, ctx), prompt, chosen, rejected, "A", **optional)


def parse_ab(d: dict[str, Any], ctx: ParseContext) -> Comparison:
    """Typed comparison {"prompt", "response_a", "response_b", "outcome"}: the lossless export form."""
    prompt = req_text(d, PROMPT)
    a = req_text(d, RESPONSE_A)
    b = req_text(d, RESPONSE_B)
    if a == b:
        raise _identical(RESPONSE_A, RESPONSE_B)
    return Comparison(
        source=source_of(d, ctx),
        prompt=prompt,
        response_a=a,
        response_b=b,
        outcome=outcome(d),
        annotator=opt_person(d, ANNOTATOR),
        confidence=opt_unit(d, CONFIDENCE),
        comment=opt_str(d, COMMENT),
        agreement=opt_unit(d, AGREEMENT),
        model_a=opt_str(d, MODEL_A),
        model_b=opt_str(d, MODEL_B),
        subset=opt_str(d, SUBSET),
        campaign=opt_str(d, CAMPAIGN),
        external_id=opt_name(d, ID),
        idempotency_key=opt_str(d, IDEMPOTENCY_KEY),
        created_at=opt_datetime(d),
    )


def parse_hh(d: dict[str, Any], ctx: ParseContext) -> Comparison:
    """Anthropic HH {"chosen", "rejected"} full transcripts; the prompt is the text up to the last Assistant turn."""
    if PROMPT in d:
        raise RecordError("an HH record embeds the prompt in 'chosen'/'rejected' but this one has a 'prompt' field",
                          "import it with --format trl (or --format auto)")
    prompt_c, reply_c = _split_hh(req_text(d, CHOSEN), CHOSEN)
    prompt_r, reply_r = _split_hh(req_text(d, REJECTED), REJECTED)
    if prompt_c != prompt_r:
        raise RecordError("'chosen' and 'rejected' differ before their last '\\n\\nAssistant:' turn, so they "
                          "share no prompt", "give the prompt explicitly: {\"prompt\", \"chosen\", \"rejected\"} "
                                             "with --format trl")
    return _chosen_rejected(d, ctx, prompt_c, reply_c, reply_r)


def _split_hh(transcript: str, key: str) -> tuple[str, str]:
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RecordError(f"'{key}' has no '\\n\\nAssistant:' turn, so it is not an HH transcript",
                          "give the prompt explicitly: {\"prompt\", \"chosen\", \"rejected\"} with --format trl")
    cut += len(HH_ASSISTANT)
    reply = transcript[cut:].strip()
    if not reply:
        raise RecordError(f"the final assistant reply in '{key}' is empty (empty responses cannot be compared)",
                          "drop the record or leave it out with --skip-invalid")
    return transcript[:cut], reply


def render_messages(messages: list[tuple[str, str]]) -> str:
    r"""Prompt text for messages in the HH convention, ending with the turn the reply answers.

    >>> render_messages([("system", "Be brief."), ("user", "Hi")])
    '\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant:'
    """
    return "".join(f"\n\n{ROLE_LABELS[role]}: {content}" for role, content in messages) + HH_ASSISTANT


def _messages(value: object, key: str) -> list[tuple[str, str]]:
    if type(value) is not list:
        raise wrong_type(key, "a list of {\"role\", \"content\"} messages", value)
    out: list[tuple[str, str]] = []
    for i, m in enumerate(value):
        where = f"{key}[{i}]"
        if type(m) is not dict:
            raise RecordError(f"{where} must be a {{\"role\", \"content\"}} object, got {json_type(m)}",
                              "write each message as {\"role\": \"user\", \"content\": \"...\"}")
        role = m.get("role")
        if role not in ROLE_LABELS:
            raise RecordError(f"{where}.role is {role!r}", f"use one of {', '.join(ROLE_LABELS)}")
        content = m.get("content")
        if type(content) is not str:
            raise RecordError(f"{where}.content must be a string, got {json_type(content)}",
                              "flatten multi-part content into one text before importing")
        out.append((role, content))
    return out


def parse_conversational(d: dict[str, Any], ctx: ParseContext) -> Comparison:
    """{"chosen": [messages], "rejected": [messages], "prompt"?: [messages]}: the final assistant messages differ."""
    if CHOSEN not in d:
        raise RecordError("missing required field 'chosen'", "add 'chosen': the conversation ending in the "
                                                             "preferred assistant message")
    if REJECTED not in d:
        raise RecordError("missing required field 'rejected'", "add 'rejected': the conversation ending in the "
                                                               "other assistant message")
    prompt_value = d.get(PROMPT)
    if type(prompt_value) is str:
        raise RecordError("'prompt' is text but 'chosen'/'rejected' are message lists",
                          "use the same shape for all three (TRL conversational: all message lists)")
    prefix = [] if prompt_value is None else _messages(prompt_value, PROMPT)
    chosen = prefix + _messages(d[CHOSEN], CHOSEN)
    rejected = prefix + _messages(d[REJECTED], REJECTED)
    for key, conversation in ((CHOSEN, chosen), (REJECTED, rejected)):
        if not conversation or conversation[-1][0] != "assistant":
            raise RecordError(f"'{key}' does not end with an assistant message",
                              "end each conversation with the assistant reply being compared")
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("'chosen' and 'rejected' differ before their final assistant message",
                          "keep the shared conversation identical and vary only the last reply")
    if len(chosen) < 2:
        raise RecordError("the conversations hold only the reply, no prompt messages",
                          "add the user turn(s) before the reply, or a 'prompt' message list")
    reply_a = chosen[-1][1]
    reply_b = rejected[-1][1]
    if not reply_a or reply_a.isspace() or not reply_b or reply_b.isspace():
        raise RecordError("a final assistant message is empty (empty responses cannot be compared)",
                          "drop the record or leave it out with --skip-invalid")
    if reply_a == reply_b:
        raise _identical(CHOSEN, REJECTED)
    return _chosen_rejected(d, ctx, render_messages(chosen[:-1]), reply_a, reply_b)


def parse_multi(d: dict[str, Any], ctx: ParseContext) -> list[Record]:
    """Multi-annotator record: responses + votes (one Comparison each) + rankings (one Ranking each)."""
    prompt = req_text(d, PROMPT)
    texts, models = _responses(d.get(RESPONSES))
    votes = d.get(VOTES)
    rankings = d.get(RANKINGS)
    if votes is None:
        votes = []
    if rankings is None:
        rankings = []
    if type(votes) is not list:
        raise wrong_type(VOTES, "a list of vote objects", votes)
    if type(rankings) is not list:
        raise wrong_type(RANKINGS, "a list of ranking objects", rankings)
    if not votes and not rankings:
        raise RecordError("a multi record needs at least one vote or ranking",
                          "add 'votes': [{\"annotator\", \"a\", \"b\", \"outcome\"}] or 'rankings'")
    if d.get(IDEMPOTENCY_KEY) is not None:
        raise RecordError("'idempotency_key' is set on the whole multi record",
                          "put an idempotency_key on each vote or ranking; a shared key would store only one")
    source = source_of(d, ctx)
    subset = opt_str(d, SUBSET)
    campaign = opt_str(d, CAMPAIGN)
    default_id = opt_name(d, ID)
    default_created = opt_datetime(d)
    out: list[Record] = []
    n = len(texts)
    for i, v in enumerate(votes):
        try:
            if type(v) is not dict:
                raise RecordError(f"a vote must be an object, got {json_type(v)}",
                                  "write {\"annotator\", \"a\", \"b\", \"outcome\"}")
            a = opt_index(v, VOTE_A, n)
            b = opt_index(v, VOTE_B, n)
            if texts[a] == texts[b]:
                raise RecordError(f"a={a} and b={b} point at identical texts", _IDENTICAL_FIX)
            created = opt_datetime(v)
            external_id = opt_name(v, ID)
            out.append(Comparison(
                source=source, prompt=prompt, response_a=texts[a], response_b=texts[b], outcome=outcome(v),
                annotator=opt_person(v, ANNOTATOR), confidence=opt_unit(v, CONFIDENCE),
                comment=opt_str(v, COMMENT), agreement=opt_unit(v, AGREEMENT), model_a=models[a],
                model_b=models[b], subset=subset,
                campaign=campaign, external_id=default_id if external_id is None else external_id,
                idempotency_key=opt_str(v, IDEMPOTENCY_KEY),
                created_at=default_created if created is None else created))
        except RecordError as exc:
            raise exc.within(f"{VOTES}[{i}]") from None
    for j, r in enumerate(rankings):
        try:
            if type(r) is not dict:
                raise RecordError(f"a ranking must be an object, got {json_type(r)}",
                                  "write {\"annotator\", \"order\": [best, ..., worst]}")
            order = _order(r.get(ORDER), texts)
            ranked_models = tuple(models[k] for k in order)
            created = opt_datetime(r)
            external_id = opt_name(r, ID)
            out.append(Ranking(
                source=source, prompt=prompt, responses=tuple(texts[k] for k in order),
                models=ranked_models if any(m is not None for m in ranked_models) else None,
                annotator=opt_person(r, ANNOTATOR), subset=subset, campaign=campaign,
                external_id=default_id if external_id is None else external_id,
                idempotency_key=opt_str(r, IDEMPOTENCY_KEY),
                created_at=default_created if created is None else created))
        except RecordError as exc:
            raise exc.within(f"{RANKINGS}[{j}]") from None
    return out


def _responses(value: object) -> tuple[list[str], list[str | None]]:
    if value is None:
        raise RecordError("missing required field 'responses'", "add 'responses': the texts the votes index into")
    if type(value) is not list or len(value) < 2:
        raise RecordError(f"'responses' must be a list of at least 2 responses, got {json_type(value)}"
                          + (f" of {len(value)}" if type(value) is list else ""),
                          "give every response the votes compare, as strings or {\"text\", \"model\"}")
    texts: list[str] = []
    models: list[str | None] = []
    for i, item in enumerate(value):
        where = f"{RESPONSES}[{i}]"
        if type(item) is dict:
            texts.append(check_text(item.get(TEXT), f"{where}.text"))
            model = item.get(MODEL)
            if model is not None and type(model) is not str:
                raise RecordError(f"{where}.model must be a string, got {json_type(model)}",
                                  "write the producing model's name as a string, or leave it out")
            models.append(model)
        else:
            texts.append(check_text(item, where))
            models.append(None)
    return texts, models


def _order(value: object, texts: list[str]) -> list[int]:
    if type(value) is not list:
        raise RecordError(f"'order' must be a list of response indices, best first, got {json_type(value)}",
                          "write 'order': [best, ..., worst] as 0-based indices into 'responses'")
    if len(value) < 2:
        raise RecordError(f"'order' ranks {len(value)} response(s); a ranking needs at least 2",
                          "rank at least two responses, or record a rating instead")
    n = len(texts)
    seen: set[str] = set()
    for k in value:
        if type(k) is not int:
            raise RecordError(f"'order' holds {json_type(k)} {k!r}, not an index",
                              "use 0-based integer indices into 'responses'")
        if not 0 <= k < n:
            raise RecordError(f"index {k} in 'order' is out of range: there are {n} responses (0..{n - 1})",
                              "use 0-based indices into 'responses'")
        if texts[k] in seen:
            raise RecordError(f"'order' ranks the same response text twice (index {k})",
                              "list each distinct response once")
        seen.add(texts[k])
    return value
