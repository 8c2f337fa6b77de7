"""Discrete-score causal discovery benchmarks (causal_discrete.md sec. 9): the registry's
plug-in score, leaf statistic, GSM loss, batched CI tests and SCORE's Stein Hessian diagonal,
and the full ordering (issue 6): ``order_by_leaf_removal`` driven by each backend's
``discrete_score_plugin`` + ``leaf_statistic`` (one host read of d statistics per step) on a
cyclic ANM over an ER graph (expected degree 2), K = 3 — CPU d = 20, n = 5,000; GPU d = 100,
n = 100,000."""

import numpy as np

from refimpl import causal_discrete as cd

from .common import BACKENDS, _backend_for, suite

globals().update(suite("causal_discrete"))

ORDER_SIZES = {"cpu": (20, 5_000), "gpu": (100, 100_000)}


class _FullOrdering:
    where = "cpu"
    param_names = ["backend"]
    timeout = 900

    def setup(self, backend):
        from refimpl import _harness as H

        bk = _backend_for(backend)
        if H.on_gpu(bk) != (self.where == "gpu"):
            raise NotImplementedError(f"{backend} runs on {bk.describe()}; this is a {self.where} size")
        if backend == "numba_cuda":
            raise NotImplementedError("Numba device arrays have no column gather (X[:, active])")
        d, n = ORDER_SIZES[self.where]
        rng = np.random.default_rng(0)
        A = cd.random_dag(d, 2.0, rng)
        cards = np.full(d, 3)
        X, _ = cd.sample_discrete_anm(A, cards, n, rng)
        Xd = bk.asarray(X)

        def stat_of(active):
            cols = bk.asarray(np.asarray(active))
            Xa, ca = Xd[:, cols], cards[active].tolist()
            return bk.to_numpy(bk.leaf_statistic(bk.discrete_score_plugin(Xa, ca), Xa, ca))

        self.call = lambda: cd.order_by_leaf_removal(d, stat_of)
        self.call()

    def time_discrete_score_order(self, backend):
        self.call()


class DiscreteScoreOrderCPU(_FullOrdering):
    params = [BACKENDS["cpu"]]


class DiscreteScoreOrderGPU(_FullOrdering):
    where = "gpu"
    params = [BACKENDS["gpu"]]


del _FullOrdering
