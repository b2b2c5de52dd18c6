r"""Record formats the importer reads and the exporter writes (one decoded JSON object -> typed records).

Formats (`--format`; "auto" detects each record from its "type" field, else from its keys):

- trl: {"prompt", "chosen", "rejected"} texts -> Comparison(response_a=chosen, response_b=rejected,
  outcome="A"). TRL's conversational variant (all three as [{"role", "content"}] lists) is accepted too.
  Optional: id, source, subset, campaign, annotator, confidence, comment, agreement, model_chosen,
  model_rejected, created_at (ISO-8601), idempotency_key. Unknown keys (e.g. "annotators") are ignored.
- comparison (typed, the lossless export form): {"type": "comparison", "prompt", "response_a",
  "response_b", "outcome": A|B|tie|both_bad, "model_a"?, "model_b"?, ...}; "type" may be left out.
- hh: {"chosen", "rejected"} full Anthropic transcripts without "prompt": each is cut after its LAST
  "\n\nAssistant:"; the prefix (marker included) is the prompt and must match, the replies are stripped.
- conversational: {"chosen": [msgs], "rejected": [msgs], "prompt"?: [msgs]}: the conversations must
  agree on everything but their final assistant message (the two responses). The shared messages
  become the prompt text in the HH convention: "\n\nHuman: " + content for role user,
  "\n\nAssistant: " + content for assistant, "\n\nSystem: " + content for system, then a final
  "\n\nAssistant:". Response texts are kept exactly.
- multi: {"prompt", "responses": [text | {"text", "model"}], "votes": [{"annotator"?, "a", "b",
  "outcome", "confidence"?, "comment"?, "agreement"?, "id"?, "idempotency_key"?, "created_at"?}],
  "rankings": [{"annotator"?, "order": [best, ..., worst], "id"?, "idempotency_key"?, "created_at"?}]}
  -> one Comparison per vote (A means responses[a] preferred) and one Ranking per ranking. A
  record-level "id"/"created_at" is the default of every vote and ranking; a record-level
  "idempotency_key" is refused (it would collapse the votes into one). Forced --format multi also
  reads typed lines of every type: `export-data --format multi` writes ratings, feedback and
  demonstrations (and nothing else) that way.
- ratings: {"prompt", "response", "rating", "scale": [min, max] | "min-max" | {"min", "max"}}
  (or "scale_min"/"scale_max"), "annotator"?, "model"?, "comment"? -> Rating.
- feedback: {"prompt", "response", "thumbs": "up"|"down"|true|false} (or "feedback": "up"|"down") -> Feedback.
- demonstrations: {"prompt", "demonstration", "author"?} or {"type": "demonstration", "prompt",
  "response", "author"?} -> Demonstration.
- ranking (typed only): {"type": "ranking", "prompt", "responses": [best, ..., worst], "models"?}.

Conventions: texts are kept exactly as given (only HH replies are stripped) and must not be blank;
the two responses of a comparison must differ; confidence and agreement lie in [0, 1]; "id",
"annotator" and "author" may be integers (kept as their decimal text); annotator and author names
follow fields.NAME_RULE (not blank, no control characters, at most 200 characters), like source
names; a Ranking whose models are all unknown has models=None. The source of a record is --source,
else its "source" field, else the file name without its extensions ("train.jsonl.gz" -> "train").
"""

from node.formats.dispatch import FORMATS, parser_for
from node.formats.fields import ParseContext, RecordError

__all__ = ["FORMATS", "ParseContext", "RecordError", "parser_for"]
