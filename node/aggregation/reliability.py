"""Annotator reliability by Dawid-Skene EM (Dawid & Skene 1979).

Each unit u has an unknown true class z_u in 0..K-1 with prior pi; annotator j labels it l with
probability theta_j[z_u, l] (j's confusion matrix). For pairwise votes the units are unordered pairs
(lo, hi) and the classes the canonical votes: 0 = lo preferred, 1 = hi preferred, 2 = tie (both_bad
says nothing about the order and is left out, as in the strengths).

E step, T_uk = P(z_u = k | labels):

    log T_uk = log pi_k + sum_{labels i on u} log theta_{j_i}[k, l_i]   - log normalizer

M step, with a Dirichlet prior on each confusion row centered on the pooled confusion matrix
(all annotators together), so an annotator with 3 labels gets the crowd's matrix, not a degenerate
0/1 one, and one with 3,000 labels gets their own:

    pi_k          = (sum_u T_uk + 1) / (U + K)
    c_j[k, l]     = sum_{labels i by j with l_i = l} T_{u_i k}
    pool[k, l]    = (sum_j c_j[k, l] + 1) / (sum_{j, l'} c_j[k, l'] + K)
    theta_j[k, l] = (c_j[k, l] + a pool[k, l]) / (sum_l' c_j[k, l'] + a)          a = `smoothing`

Reliability of an annotator = prior-weighted accuracy, the probability that j's label is the
true class of a random unit:

    rho_j = sum_k pi_k theta_j[k, k]

EM starts from the soft majority vote and stops when an iteration raises the log-likelihood of
the labels by less than `tol` nats per label (or after `max_iter`; `converged` says which). With
sparse labels (1-2 per unit) the likelihood has long flat ridges along which EM creeps for hundreds
of iterations, moving reliabilities by a few hundredths; the per-label tolerance stops there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from node.aggregation._arrays import AggregationInputError, FloatArray, IntArray, as_int_array, readonly

DEFAULT_SMOOTHING = 2.0


@dataclass(frozen=True)
class DawidSkeneResult:
    """Per-annotator reliability and confusion matrices, and the posterior class of every unit."""

    annotators: IntArray  # (J,) annotator ids, sorted
    reliability: FloatArray  # (J,) rho_j = sum_k pi_k theta_j[k, k]
    n_labels: IntArray  # (J,) labels each annotator gave
    confusion: FloatArray  # (J, K, K) theta_j[k, l] = P(j says l | true class k)
    class_prior: FloatArray  # (K,) pi
    posterior: FloatArray  # (U, K) T_uk; units without labels get pi
    unit_class: IntArray  # (U,) argmax_k T_uk
    log_likelihood: float  # sum_u log P(labels on u), at the last E step
    n_iter: int
    converged: bool


def dawid_skene(
    units: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    n_units: int | None = None,
    n_classes: int = 3,
    smoothing: float = DEFAULT_SMOOTHING,
    max_iter: int = 100,
    tol: float = 1e-5,
    symmetric_pair: bool = False,
) -> DawidSkeneResult:
    """Dawid-Skene EM: row i says annotator `annotators[i]` gave unit `units[i]` (0..U-1) class `labels[i]`.

    >>> ds = dawid_skene(units=[0, 0, 0, 1, 1, 1], annotators=[7, 8, 9, 7, 8, 9],
    ...                  labels=[0, 0, 1, 1, 1, 1], n_classes=2)
    >>> ds.unit_class.tolist(), ds.annotators.tolist(), ds.n_labels.tolist()
    ([0, 1], [7, 8, 9], [2, 2, 2])
    >>> bool(ds.reliability[2] < ds.reliability[0])
    True

    `symmetric_pair`: classes 0 and 1 are "lo preferred" and "hi preferred" of an unordered pair,
    and which response is lo is an accident of indexing. The prior and every confusion matrix are
    then kept invariant under swapping 0 and 1 (the M step pools the counts of both orientations):
    an annotator is modeled as right or wrong about the order, never as preferring a side by index.
    Without it, pairs whose better response happens to be lo almost always let EM drift to a
    degenerate fit (a "tie" class absorbing the majority of lo votes) that ranks labelers wrongly.
    """
    u = as_int_array(units, "units")
    a_raw = as_int_array(annotators, "annotators")
    lab = as_int_array(labels, "labels")
    m = u.size
    if a_raw.size != m or lab.size != m:
        raise AggregationInputError(
            f"units, annotators and labels have {m}, {a_raw.size}, {lab.size} rows; pass one value per label in each"
        )
    if n_classes < 2:
        raise AggregationInputError(f"n_classes = {n_classes}; Dawid-Skene needs at least 2 classes")
    if not (np.isfinite(smoothing) and smoothing >= 0.0):
        raise AggregationInputError(f"smoothing = {smoothing} must be >= 0; the default is {DEFAULT_SMOOTHING}")
    if m and (u.min() < 0 or (n_units is not None and u.max() >= n_units)):
        raise AggregationInputError(f"units must lie in 0..n_units-1 (n_units = {n_units}); index units densely")
    if m and (lab.min() < 0 or lab.max() >= n_classes):
        raise AggregationInputError(f"labels must lie in 0..{n_classes - 1}; map classes to these codes")
    n_u = int(n_units) if n_units is not None else (int(u.max()) + 1 if m else 0)
    k_ = n_classes
    swap = np.arange(k_)
    swap[:2] = [1, 0]  # the lo <-> hi permutation of the classes (used with symmetric_pair)
    ann_ids, ann = np.unique(a_raw, return_inverse=True)  # (J,), (M,) dense annotator ids
    ann = ann.ravel()
    n_ann = ann_ids.size
    n_labels = np.bincount(ann, minlength=n_ann).astype(np.int64)  # (J,)
    if m == 0:
        prior = np.full(k_, 1.0 / k_)
        post = np.tile(prior, (n_u, 1))
        return DawidSkeneResult(
            annotators=readonly(ann_ids),
            reliability=readonly(np.zeros(0)),
            n_labels=readonly(n_labels),
            confusion=readonly(np.zeros((0, k_, k_))),
            class_prior=readonly(prior),
            posterior=readonly(post),
            unit_class=readonly(np.zeros(n_u, dtype=np.int64)),
            log_likelihood=0.0,
            n_iter=0,
            converged=True,
        )

    # Work on the labeled units only; unlabeled ones get the prior at the end.
    labeled, uu = np.unique(u, return_inverse=True)  # (U',), (M,)
    uu = uu.ravel()
    n_l = labeled.size

    # Posteriors are stored class-major, t[k] = (T_uk)_u, so that every per-class pass is contiguous.
    cell = ann * (k_ * k_) + lab  # (M,) flat index of theta_{j_i}[0, l_i]; + k * K selects true class k

    def m_step(t: FloatArray) -> tuple[FloatArray, FloatArray]:
        """pi (K,) and the smoothed confusion matrices theta (J, K, K) given posteriors t (K, U')."""
        mass = t.sum(axis=1)  # (K,)
        c = np.zeros(n_ann * k_ * k_)
        for k in range(k_):
            c += np.bincount(cell + k * k_, weights=t[k][uu], minlength=c.size)  # c_j[k, l_i] += T_{u_i k}
        c3 = c.reshape(n_ann, k_, k_)  # (J, K, K)
        if symmetric_pair:  # pool each count with its lo <-> hi mirror image
            mass = (mass + mass[swap]) / 2.0
            c3 = (c3 + c3[:, swap][:, :, swap]) / 2.0
        prior = (mass + 1.0) / (n_l + k_)  # (K,)
        pooled = c3.sum(axis=0) + 1.0  # (K, K)
        pooled /= pooled.sum(axis=1, keepdims=True)
        theta = c3 + smoothing * pooled[None, :, :]  # (J, K, K)
        theta /= theta.sum(axis=2, keepdims=True)
        return prior, theta

    def e_step(prior: FloatArray, theta: FloatArray) -> tuple[FloatArray, float]:
        """Posteriors t (K, U'), log T_uk = log pi_k + sum_i log theta_{j_i}[k, l_i] - log Z_u,
        and the log-likelihood of the labels, sum_u log Z_u."""
        log_theta = np.log(theta).ravel()  # (J K K,)
        log_t = np.stack(
            [np.bincount(uu, weights=log_theta[cell + k * k_], minlength=n_l) for k in range(k_)]
        )  # (K, U')
        log_t += np.log(prior)[:, None]
        top = log_t.max(axis=0)  # (U',)
        t = np.exp(log_t - top[None, :])
        z = t.sum(axis=0)  # (U',)
        t /= z[None, :]
        return t, float(np.sum(top + np.log(z)))

    # ---- init: soft majority vote ------------------------------------------------------------
    votes = np.bincount(lab * n_l + uu, minlength=k_ * n_l).reshape(k_, n_l).astype(np.float64)  # (K, U')
    t = votes / votes.sum(axis=0, keepdims=True)
    prior, theta = m_step(t)

    # ---- EM: E step, M step, until the log-likelihood per label gains less than tol ---------
    converged = False
    n_iter = 0
    loglik = -np.inf
    while n_iter < max_iter:
        n_iter += 1
        t, new_loglik = e_step(prior, theta)
        prior, theta = m_step(t)
        gain, loglik = new_loglik - loglik, new_loglik
        if gain < tol * m:  # EM never lowers the likelihood (up to the smoothing prior)
            converged = True
            break

    post = np.tile(prior, (n_u, 1))  # (U, K)
    post[labeled] = t.T
    reliability = np.einsum("k,jkk->j", prior, theta)  # (J,) sum_k pi_k theta_j[k, k]
    return DawidSkeneResult(
        annotators=readonly(ann_ids),
        reliability=readonly(reliability),
        n_labels=readonly(n_labels),
        confusion=readonly(theta),
        class_prior=readonly(prior),
        posterior=readonly(post),
        unit_class=readonly(post.argmax(axis=1).astype(np.int64)),
        log_likelihood=float(loglik),
        n_iter=n_iter,
        converged=converged,
    )


__all__ = ["DEFAULT_SMOOTHING", "DawidSkeneResult", "dawid_skene"]
