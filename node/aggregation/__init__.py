"""Preference aggregation: strengths, soft labels, agreement, annotator reliability, ambiguity.

Pure numpy/scipy over columnar arrays; `aggregate` (pipeline.py) runs every stage. Methods:
Bradley-Terry + Plackett-Luce MAP strengths (strengths.py), soft labels and Krippendorff's alpha
(agreement.py), Dawid-Skene annotator reliability (reliability.py), the ambiguity queue
(ambiguity.py).
"""

from node.aggregation._arrays import (
    A_PREFERRED,
    B_PREFERRED,
    BOTH_BAD,
    TIE,
    AggregationInputError,
)
from node.aggregation.agreement import PairLabels, krippendorff_alpha_nominal, pair_labels
from node.aggregation.ambiguity import REASONS, AmbiguityQueue, AmbiguousItem, ambiguity_queue, three_cycles
from node.aggregation.pipeline import AggregationResult, aggregate
from node.aggregation.reliability import DawidSkeneResult, dawid_skene
from node.aggregation.strengths import StrengthFit, fit_strengths

__all__ = [
    "A_PREFERRED",
    "BOTH_BAD",
    "B_PREFERRED",
    "REASONS",
    "TIE",
    "AggregationInputError",
    "AggregationResult",
    "AmbiguityQueue",
    "AmbiguousItem",
    "DawidSkeneResult",
    "PairLabels",
    "StrengthFit",
    "aggregate",
    "ambiguity_queue",
    "dawid_skene",
    "fit_strengths",
    "krippendorff_alpha_nominal",
    "pair_labels",
    "three_cycles",
]
