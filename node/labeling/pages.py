"""The labeling page: a prompt, two responses side by side (sides randomized and recorded), one key per choice.

    GET  /label              the campaigns this labeler may label
    GET  /label/{campaign}   the next pair (or "nothing left")
    POST /label/{campaign}   the answer (form: pair_id, left, choice, confidence?, comment?, better?, csrf)
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote

from aiohttp import web

from node.http import NotFound, Principal, Role, ValidationError
from node.http.routes import CONFIG_KEY
from node.labeling.auth import SESSION_KEY, campaign_allowed, check_csrf, page_principal, read_form
from node.labeling.html import h, page
from node.labeling.service import SERVICE_KEY, csrf_token
from storage.errors import InvalidRecordError, NotFoundError
from storage.labeling import CampaignInfo, PairToLabel

CHOICES = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}
KEYS = {"A": ("1", "a"), "B": ("2", "b"), "tie": ("3", "t"), "both_bad": ("4", "x"), "skip": ("s",)}
_HEX64 = re.compile(r"[0-9a-f]{64}")

LABEL_JS = """
(function(){
var keys={'1':'A','a':'A','2':'B','b':'B','3':'tie','t':'tie','4':'both_bad','x':'both_bad','s':'skip'};
var form=document.getElementById('label-form');if(!form)return;var sent=false;
document.addEventListener('keydown',function(e){
  var t=e.target,tag=t&&t.tagName;
  if(tag==='TEXTAREA'||tag==='INPUT'||tag==='SELECT'){if(e.key==='Escape'){t.blur();}return;}
  if(e.ctrlKey||e.metaKey||e.altKey)return;
  var c=keys[e.key.toLowerCase()];if(!c||sent)return;
  e.preventDefault();sent=true;
  var b=document.getElementById('choice-'+c);b.classList.add('chosen');form.requestSubmit(b);
});
form.addEventListener('submit',function(){sent=true;});
})();
"""


def _nav(principal: Principal, csrf: str) -> str:
    dash = " <a href=/dashboard>dashboard</a>" if principal.role is Role.ADMIN else ""
    logout = (f"<form method=post action=/logout style='margin-left:auto'><input type=hidden name=csrf "
              f"value='{h(csrf)}'><button>Sign out {h(principal.name)}</button></form>") if csrf else ""
    return f"<a href=/label>campaigns</a>{dash}{logout}"


def _csrf(request: web.Request) -> str:
    session = request.get(SESSION_KEY)
    return csrf_token(session.secret) if session is not None else ""


def _keys_help() -> str:
    items = "".join(f"<li>{' / '.join(f'<kbd>{k}</kbd>' for k in KEYS[c])} {h(label)}</li>"
                    for c, label in CHOICES.items())
    return (f"<details open class=card id=keys><summary>Keyboard</summary><ul>{items}"
            "<li><kbd>Tab</kbd> into confidence, comment or a better response; <kbd>Esc</kbd> leaves a text "
            "field so the keys above work again</li></ul></details>")


def _pair_html(campaign: CampaignInfo, pair: PairToLabel, mine: int, csrf: str, swap: bool) -> str:
    left_id, left, right_id, right = (pair.response_hi_id, pair.response_hi, pair.response_lo_id, pair.response_lo) \
        if swap else (pair.response_lo_id, pair.response_lo, pair.response_hi_id, pair.response_hi)
    buttons = "".join(f"<button type=submit name=choice value='{c}' id='choice-{c}'>{h(label)} "
                      f"<kbd>{KEYS[c][0]}</kbd></button>" for c, label in CHOICES.items())
    guidelines = (f"<details class=card><summary>Guidelines</summary><pre>{h(campaign.guidelines)}</pre></details>"
                  if campaign.guidelines else "")
    return (
        f"<h1>{h(campaign.name)}</h1>{guidelines}"
        f"<p id=progress>You labeled <strong id=mine>{mine}</strong> pairs here. Campaign: {campaign.complete:,} of "
        f"{campaign.pairs:,} pairs have {campaign.overlap} label(s); {campaign.labels:,} labels in all.</p>"
        f"<section class=card><h2>Prompt</h2><pre id=prompt>{h(pair.prompt)}</pre></section>"
        f"<div class=pair><article id=left data-response-id='{left_id}'><h2>A <kbd>1</kbd></h2>"
        f"<pre>{h(left)}</pre></article><article id=right data-response-id='{right_id}'><h2>B <kbd>2</kbd></h2>"
        f"<pre>{h(right)}</pre></article></div>"
        f"<form method=post id=label-form class=card><input type=hidden name=csrf value='{h(csrf)}'>"
        f"<input type=hidden name=pair_id value='{pair.pair_id}'><input type=hidden name=left value='{left_id}'>"
        f"<div class=choices>{buttons}</div>"
        "<label>Confidence <select name=confidence><option value=''>-</option><option value='0.5'>unsure"
        "</option><option value='0.75'>fairly sure</option><option value='1'>sure</option></select></label>"
        "<label>Comment<textarea name=comment maxlength=2000></textarea></label>"
        "<label>Optional: write a better response<textarea name=better></textarea></label></form>"
        + _keys_help()
    )


async def campaigns_page(request: web.Request) -> web.Response:
    """GET /label."""
    principal = await page_principal(request, Role.LABELER)
    service = request.config_dict[SERVICE_KEY]
    session = request.get(SESSION_KEY)
    if session is not None and session.token.campaign and principal.role is not Role.ADMIN:
        raise web.HTTPSeeOther(f"/label/{quote(session.token.campaign, safe='')}")
    campaigns = await service.call(service.store.list_campaigns)
    items = "".join(f"<li><a href='/label/{h(quote(c.name, safe=''))}'>{h(c.name)}</a> ({c.complete:,} of "
                    f"{c.pairs:,} pairs done)</li>" for c in campaigns if c.pairs)
    body = f"<h1>Campaigns</h1><ul>{items}</ul>" if items else "<h1>Campaigns</h1><p class=none>none yet</p>"
    return page("Campaigns", body, nav=_nav(principal, _csrf(request)))


async def label_page(request: web.Request) -> web.Response:
    """GET /label/{campaign}: the next pair for this labeler."""
    principal = await page_principal(request, Role.LABELER)
    name = request.match_info["campaign"]
    campaign_allowed(request, principal, name)
    service = request.config_dict[SERVICE_KEY]
    store = service.store
    try:
        campaign = await service.call(store.get_campaign, name)
    except NotFoundError as e:
        raise NotFound(str(e)) from None
    uncertain = await service.call(service.uncertain_pairs, name)
    pair = await service.call(store.next_pair, name, principal.name, uncertain=uncertain)
    mine = await service.call(store.labeled_count, name, principal.name)
    csrf = _csrf(request)
    if pair is None:
        body = (f"<h1>{h(name)}</h1><p id=done>Nothing left for you to label here: thank you! You labeled "
                f"<strong id=mine>{mine}</strong> pairs.</p>")
        return page(name, body, nav=_nav(principal, csrf))
    swap = secrets.randbelow(2) == 1
    return page(name, _pair_html(campaign, pair, mine, csrf, swap), script=LABEL_JS, nav=_nav(principal, csrf))


def _optional_text(form: Any, key: str, limit: int) -> str | None:
    value = form.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError(key, "must be text")
    if len(value) > limit:
        raise ValidationError(key, f"is {len(value)} characters, more than the limit of {limit}; shorten it")
    return value.strip() or None


async def label_submit(request: web.Request) -> web.StreamResponse:
    """POST /label/{campaign}: store the answer, then show the next pair (303)."""
    principal = await page_principal(request, Role.LABELER)
    name = request.match_info["campaign"]
    campaign_allowed(request, principal, name)
    form = await read_form(request)
    check_csrf(request, form)
    service = request.config_dict[SERVICE_KEY]
    limit = request.config_dict[CONFIG_KEY].max_text_chars
    choice = form.get("choice")
    if choice not in CHOICES:
        raise ValidationError("choice", f"must be one of {', '.join(CHOICES)}")
    try:
        pair_id = int(str(form.get("pair_id", "")))
    except ValueError:
        raise ValidationError("pair_id", "must be the integer id of the pair shown") from None
    left = str(form.get("left", ""))
    if not _HEX64.fullmatch(left):
        raise ValidationError("left", "must be the id of the response shown on the left")
    confidence: float | None = None
    raw_conf = form.get("confidence")
    if raw_conf not in (None, ""):
        try:
            confidence = float(str(raw_conf))
        except ValueError:
            raise ValidationError("confidence", "must be a number in [0, 1] or empty") from None
        if not 0.0 <= confidence <= 1.0:
            raise ValidationError("confidence", "must be a number in [0, 1] or empty")
    comment = _optional_text(form, "comment", limit)
    better = _optional_text(form, "better", limit)
    try:
        await service.call(service.store.record_label, name, pair_id=pair_id, annotator=principal.name,
                           left_response_id=left, choice=str(choice), confidence=confidence, comment=comment,
                           better=better, source=service.settings.source_prefix + name)
    except NotFoundError as e:
        raise NotFound(str(e)) from None
    except InvalidRecordError as e:
        raise ValidationError("", str(e)) from None
    raise web.HTTPSeeOther(f"/label/{quote(name, safe='')}")
