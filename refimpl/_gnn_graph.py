"""A synthetic three-relation substation graph for the multilayer-GNN demo and benchmarks
(Kazim et al., arXiv 2507.07298; spec ``gnn_pdm.md`` sec. 7).

**Everything in this module is reconstructed.** The paper's graph was built from OG&E outage
and asset records that are not public, and the official repository
(``CEL-lab/Multilayer_GNN @6910437``) does not contain the graph-construction notebook; only
the sizes (347 substations; spatial 23,378 edges with 8 attributes, temporal 38,188 with 2,
causal 10,136 with 4 in the later build), the attribute names and the 12 node-feature columns
are known (spec sec. 1). The generator below produces a graph with those names and sizes and a
planted group structure, so that the demo's classifier has something to learn and the
clustering has a ground truth (``groups``) to be compared with. No number of the paper can be
reproduced on it.

Generative model (all times in days, ``[0, days)``; ``t0 = days - horizon`` by default)

1. **Map.** ``n_groups`` group centres uniform in a square of side ``extent_km`` around
   ``center`` (lat, lon in degrees); node ``i`` of group ``g_i`` (groups of near-equal size,
   randomly assigned) = centre + ``N(0, jitter_km^2)`` per axis, converted to lat/lon by the
   equirectangular map at ``center``. Distances are **haversine** (R = 6371.0088 km).
2. **Assets.** Each group has a voltage class drawn from ``voltages_kv``; a node takes its
   group's class, or with probability ``voltage_mix`` a uniformly drawn one. Lines: each node is
   joined to its ``line_k`` nearest nodes (symmetrised), ``line_voltage = min(V_i, V_j)``,
   ``line_length_km = distance * (1 + U(0.05, 0.35))`` (routing). With ``tie_lines``, the
   groups' hubs (the node nearest each group centre) are also joined by a minimum spanning tree
   of lines (Prim, haversine distances) — the long lines, most of them beyond ``r_km``.
   Cities: ``cities_per_group`` points per group drawn like nodes; a node serves every city
   within ``jitter_km`` and always its nearest one. Customers served
   ``~ round(exp(N(log 3000, 0.7^2)))``.
3. **Incidents** (one generation of triggering, a Hawkes-like cluster process cut at depth 1):

   * base: node ``i`` has rate ``lambda_i = rate_g exp(rate_spread N(0, 1))`` per day, the
     group rates ``rate_g`` log-spaced over ``base_rate = (low, high)`` and permuted over the
     groups; ``Poisson(lambda_i days)`` incidents at uniform times (cause 0, "equipment");
   * shocks: per group ``Poisson(shock_rate days)`` shock days, on each every node of the group
     has an incident with probability ``shock_p`` at a uniform time within that day (cause 1,
     "weather") — temporal co-occurrence;
   * triggering: every base or shock incident at ``i`` (time ``t``) causes, for each of ``i``'s
     ``trigger_k`` nearest nodes ``j`` independently with probability ``trigger_p``, an incident
     at ``j`` at ``t + U(0, lag_h) / 24`` (cause 2, "cascade") — the directed causal structure.
     Incidents at or after ``days`` are dropped.

   Each incident has ``duration_h = exp(N(log d_g, 0.8^2))`` (group median ``d_g`` log-spaced
   over ``duration_h = (low, high)``) and ``customers = round(served_i B)``,
   ``B ~ Beta(1.2, 6)`` (``Beta(2, 4)`` for shocks).
4. **Node features** (columns in ``FEATURE_NAMES``), from the incidents with ``time <= t0``
   only: lat, lon, Voltage (kV), num_connections (line degree), avg_line_voltage,
   total_line_length (km), incident_count, avg_downtime (mean duration, h), avg_cust_affected,
   mean_SAIDI = ``sum_e customers_e 60 duration_e / served_i / years`` (customer-minutes per
   customer served per year), mean_SAIFI = ``sum_e customers_e / served_i / years``
   (``years = t0 / 365.25``), maintenance_tier in {1, 2, 3} = tercile of
   ``log lambda_i + N(0, 0.5^2)`` (a noisy utility risk rating). Means over no incidents are 0.
5. **Label** ``y_i = 1[an incident at i with t0 < time <= t0 + horizon]`` (spec sec. 3, the
   paper's horizon form; the code's 180-day "severe cause / critical equipment" label needs
   cause and equipment statistics that the synthetic data do not model).

Relations (``edge_index`` (2, E) int64 in CSR order — sorted by (dst, src) — no self-loops,
messages ``edge_index[0] -> edge_index[1]``; ``edge_attr`` (E, D) float64):

* **spatial** (D = 8, ``SPATIAL_ATTRS``): the unordered pairs with a line or with haversine
  distance ``< r_km``, both directions. Attributes: has_line, is_nearby = ``1[d < r_km]``,
  line_voltage (kV, 0 without a line), line_length_km (0 without a line), shared_cities (number
  of cities both serve), shared_feeders (``has_line (1 + Binomial(2, 0.25))``, synthesised),
  distance_km, weight = ``has_line + is_nearby exp(-d / r_km)``.
  *Calibration*: with ``L`` the line pairs and ``k = round(spatial_degree n / 2) - |L|``, the
  radius is the midpoint between the k-th and (k+1)-th smallest distance among the non-line
  pairs, so the mean in-degree ``2 (|L| + k) / n`` equals the target up to rounding (exact
  because distances are continuous). ``r_km`` given -> used as is.
* **temporal** (D = 2, ``TEMPORAL_ATTRS``): with ``C[i, d]`` the number of incidents of ``i``
  on day ``d`` (``time <= t0``), ``count_ij = sum_d 1[C_id > 0] 1[C_jd > 0]`` (shared incident
  days) and ``total_weight_ij = sum_d C_id C_jd``. *Calibration*: the unordered pairs with
  ``count >= 1`` are ranked by ``(count, total_weight)`` descending (ties by pair index) and the
  first ``round(temporal_degree n / 2)`` kept, both directions: a threshold on the shared-day
  count whose boundary ties are broken by total_weight. The count of the last pair kept is
  returned as ``calibration["temporal_min_count"]``. If fewer pairs share a day, all are kept.
* **causal** (D = 4, ``CAUSAL_ATTRS``), directed: for each window ``w`` in ``windows_h``,
  ``obs_ij(w)`` = the number of (incident a of i, incident b of j) with
  ``0 < t_b - t_a <= w / 24`` (``time <= t0``), ``exp_ij(w) = n_i n_j w / (24 t0)`` (independent
  Poisson streams), ``z_ij(w) = (obs - exp) / sqrt(exp)``; per pair the window with the largest
  z among those with ``obs >= causal_min_count``. *Calibration*: the qualifying pairs are ranked
  by z (ties by pair index) and the first ``round(causal_degree n)`` kept; ``calibration["z0"]``
  is the midpoint between the last kept and the first dropped z (``z > z0`` selects the kept
  pairs up to ties). Attributes: z_score, cooccur_ratio = ``obs / n_i``, window_hrs,
  cooccur_count = obs.

Degree targets: ``None`` means the OG&E graph's density, i.e. the mean in-degrees
23,378 / 347 (spatial, ~67.4), 38,188 / 347 (temporal, ~110.1) and 10,136 / 347 (causal, ~29.2)
scaled by ``(n_nodes - 1) / 346``; a number is used as the mean in-degree itself and must be
``<= n_nodes - 1``. Cost: O(n_nodes^2) memory and time (dense pair matrices) — meant for
hundreds to a few thousand nodes (347 nodes: well under a second).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["synthetic_multilayer_graph"]

FEATURE_NAMES = ("lat", "lon", "Voltage", "num_connections", "avg_line_voltage",
                 "total_line_length", "incident_count", "avg_downtime", "avg_cust_affected",
                 "mean_SAIDI", "mean_SAIFI", "maintenance_tier")
SPATIAL_ATTRS = ("has_line", "is_nearby", "line_voltage", "line_length_km", "shared_cities",
                 "shared_feeders", "distance_km", "weight")
TEMPORAL_ATTRS = ("total_weight", "count")
CAUSAL_ATTRS = ("z_score", "cooccur_ratio", "window_hrs", "cooccur_count")
CAUSE_NAMES = ("equipment", "weather", "cascade")
RELATIONS = ("spatial", "temporal", "causal")

OGE_NODES = 347
OGE_EDGES = {"spatial": 23378, "temporal": 38188, "causal": 10136}
EARTH_RADIUS_KM = 6371.0088


# ------------------------------------------------------------------ argument checks

def _rng_of(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _int(v, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def _real(v, name: str, lo: float = 0.0, hi: float = math.inf, lo_open: bool = True,
          hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not math.isfinite(v) or not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo:g}, {hi:g}{rb}, got {v}")
    return v


def _range_pair(v, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high) of positive numbers, got {v!r}") \
            from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"{name} must satisfy 0 < low <= high, got ({lo}, {hi})")
    return lo, hi


def _degree(v, name: str, relation: str, n: int) -> float:
    if v is None:
        return OGE_EDGES[relation] / OGE_NODES * (n - 1) / (OGE_NODES - 1)
    return _real(v, name, 0.0, float(n - 1))


# ------------------------------------------------------------------ geometry

def _haversine(lat, lon) -> np.ndarray:
    """(n, n) great-circle distances in km between the points (degrees)."""
    phi, lam = np.radians(lat), np.radians(lon)
    dphi = phi[:, None] - phi[None, :]
    dlam = lam[:, None] - lam[None, :]
    h = np.sin(dphi / 2) ** 2 + np.cos(phi)[:, None] * np.cos(phi)[None, :] * np.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _to_latlon(xy_km, center) -> tuple[np.ndarray, np.ndarray]:
    lat0, lon0 = center
    km_per_deg = EARTH_RADIUS_KM * math.pi / 180
    lat = lat0 + xy_km[:, 1] / km_per_deg
    lon = lon0 + xy_km[:, 0] / (km_per_deg * math.cos(math.radians(lat0)))
    return lat, lon


def _nearest(D: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k nearest other points (stable ties)."""
    Dm = D.copy()
    np.fill_diagonal(Dm, np.inf)
    return np.argsort(Dm, axis=1, kind="stable")[:, :k]


def _csr_sorted(src, dst, attr) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((src, dst))
    ei = np.stack([src[order], dst[order]]).astype(np.int64)
    return ei, np.ascontiguousarray(attr[order], dtype=np.float64)


# ------------------------------------------------------------------ the generator

def synthetic_multilayer_graph(n_nodes=347, n_groups=6, rng=None, days=2555, horizon=30, *,
                               t0=None, center=(35.5, -97.5), extent_km=300.0, jitter_km=25.0,
                               voltages_kv=(69.0, 138.0, 161.0, 345.0), voltage_mix=0.2,
                               line_k=3, tie_lines=True, cities_per_group=3,
                               base_rate=(0.001, 0.05), rate_spread=0.8, shock_rate=0.01,
                               shock_p=0.3, trigger_k=6, trigger_p=0.08, lag_h=24.0,
                               duration_h=(1.5, 6.0), windows_h=(6.0, 24.0, 72.0),
                               causal_min_count=3, r_km=None, spatial_degree=None,
                               temporal_degree=None, causal_degree=None):
    """A synthetic multilayer substation graph (reconstructed; module docstring has the model).

    Parameters (defaults in the signature): ``n_nodes`` substations in ``n_groups`` planted
    groups; ``rng`` a ``numpy.random.Generator``, an int seed or None; ``days`` simulated days
    (2555 = 7 years); ``horizon`` label window in days; ``t0`` feature cut-off (default
    ``days - horizon``; ``0 < t0 <= days - horizon``); map: ``center`` (lat, lon), ``extent_km``
    side of the square holding the group centres, ``jitter_km`` node scatter around its centre;
    assets: ``voltages_kv`` voltage classes, ``voltage_mix`` probability of a class other than
    the group's, ``line_k`` nearest nodes joined by a line, ``tie_lines`` whether the group hubs
    are joined by a spanning tree of lines, ``cities_per_group``; incidents:
    ``base_rate`` (low, high) group rates per day, ``rate_spread`` lognormal node spread,
    ``shock_rate`` group shock days per day, ``shock_p`` per-node shock probability,
    ``trigger_k`` / ``trigger_p`` / ``lag_h`` one-generation triggering to the nearest nodes
    within ``lag_h`` hours, ``duration_h`` (low, high) group median durations; relations:
    ``windows_h`` causal lag windows (hours), ``causal_min_count`` minimum co-occurrences,
    ``r_km`` fixed spatial radius (default: calibrated), ``spatial_degree`` /
    ``temporal_degree`` / ``causal_degree`` mean in-degree targets (default: OG&E density).

    Returns a dict: ``x`` (n, 12) float64 with ``feature_names``; ``spatial`` / ``temporal`` /
    ``causal`` each ``{"edge_index": (2, E) int64, "edge_attr": (E, D) float64,
    "edge_attr_names": tuple}``; ``relations`` (their order); ``y`` (n,) int64 in {0, 1};
    ``groups`` (n,) int64 in [0, n_groups); ``incidents`` a dict of (M,) arrays sorted by time
    (``node`` int64, ``time`` days float64, ``cause`` int64 indexing ``cause_names``,
    ``duration_h``, ``customers`` float64); ``t0`` and ``horizon`` (floats); ``calibration``
    (``r_km``, ``temporal_min_count``, ``z0``, the targets and the achieved mean in-degrees).
    Deterministic given the seed / generator state.
    """
    n = _int(n_nodes, "n_nodes", 4)
    n_groups = _int(n_groups, "n_groups", 1)
    if n_groups > n:
        raise ValueError(f"n_groups must be <= n_nodes = {n}, got {n_groups}")
    gen = _rng_of(rng)
    days = _real(days, "days")
    horizon = _real(horizon, "horizon", 0.0, days, hi_open=True)
    t0 = days - horizon if t0 is None else _real(t0, "t0", 0.0, days - horizon)
    try:
        lat0, lon0 = (float(c) for c in center)
    except (TypeError, ValueError):
        raise TypeError(f"center must be a pair (lat, lon) in degrees, got {center!r}") from None
    if not (-80 <= lat0 <= 80 and -180 <= lon0 <= 180):
        raise ValueError(f"center must have |lat| <= 80 and |lon| <= 180, got ({lat0}, {lon0})")
    extent_km = _real(extent_km, "extent_km")
    jitter_km = _real(jitter_km, "jitter_km")
    volts = np.asarray(voltages_kv, dtype=np.float64).ravel()
    if volts.size == 0 or not np.all(np.isfinite(volts)) or np.any(volts <= 0):
        raise ValueError(f"voltages_kv must be a non-empty list of positive numbers, got "
                         f"{voltages_kv!r}")
    voltage_mix = _real(voltage_mix, "voltage_mix", 0.0, 1.0, lo_open=False)
    line_k = _int(line_k, "line_k", 1)
    trigger_k = _int(trigger_k, "trigger_k", 0)
    for name, k in (("line_k", line_k), ("trigger_k", trigger_k)):
        if k > n - 1:
            raise ValueError(f"{name} must be <= n_nodes - 1 = {n - 1}, got {k}")
    cities_per_group = _int(cities_per_group, "cities_per_group", 1)
    rate_lo, rate_hi = _range_pair(base_rate, "base_rate")
    rate_spread = _real(rate_spread, "rate_spread", 0.0, lo_open=False)
    shock_rate = _real(shock_rate, "shock_rate", 0.0, lo_open=False)
    shock_p = _real(shock_p, "shock_p", 0.0, 1.0, lo_open=False)
    trigger_p = _real(trigger_p, "trigger_p", 0.0, 1.0, lo_open=False)
    lag_h = _real(lag_h, "lag_h")
    dur_lo, dur_hi = _range_pair(duration_h, "duration_h")
    windows = np.asarray(windows_h, dtype=np.float64).ravel()
    if windows.size == 0 or not np.all(np.isfinite(windows)) or np.any(windows <= 0):
        raise ValueError(f"windows_h must be a non-empty list of positive hours, got "
                         f"{windows_h!r}")
    causal_min_count = _int(causal_min_count, "causal_min_count", 1)
    if r_km is not None:
        r_km = _real(r_km, "r_km")
    deg_s = None if r_km is not None else _degree(spatial_degree, "spatial_degree", "spatial", n)
    deg_t = _degree(temporal_degree, "temporal_degree", "temporal", n)
    deg_c = _degree(causal_degree, "causal_degree", "causal", n)

    # ---- 1. map
    groups = gen.permutation(np.arange(n) % n_groups).astype(np.int64)
    centres = (gen.uniform(size=(n_groups, 2)) - 0.5) * extent_km
    xy = centres[groups] + jitter_km * gen.standard_normal((n, 2))
    lat, lon = _to_latlon(xy, (lat0, lon0))
    D = _haversine(lat, lon)

    # ---- 2. assets
    group_volt = volts[gen.integers(0, volts.size, n_groups)]
    V = np.where(gen.uniform(size=n) < voltage_mix, volts[gen.integers(0, volts.size, n)],
                 group_volt[groups])
    nn_line = _nearest(D, line_k)
    line = np.zeros((n, n), dtype=bool)
    line[np.repeat(np.arange(n), line_k), nn_line.ravel()] = True
    if tie_lines and n_groups > 1:
        # tie lines between the groups' hubs (the node nearest its group centre): a minimum
        # spanning tree over the hubs (Prim) — the long lines, most of them beyond r_km
        hubs = np.array([np.flatnonzero(groups == g)[np.argmin(np.linalg.norm(
            xy[groups == g] - centres[g], axis=1))] for g in range(n_groups)])
        Dh = D[np.ix_(hubs, hubs)]
        in_tree = [0]
        while len(in_tree) < n_groups:
            out = [b for b in range(n_groups) if b not in in_tree]
            k = int(np.argmin(Dh[np.ix_(in_tree, out)]))
            a, b = in_tree[k // len(out)], out[k % len(out)]
            line[hubs[a], hubs[b]] = True
            in_tree.append(b)
    line |= line.T
    route = 1.0 + gen.uniform(0.05, 0.35, size=(n, n))
    route = np.triu(route, 1) + np.triu(route, 1).T
    line_len = np.where(line, D * route, 0.0)
    line_volt = np.where(line, np.minimum(V[:, None], V[None, :]), 0.0)
    city_xy = np.repeat(centres, cities_per_group, 0) + jitter_km * gen.standard_normal(
        (n_groups * cities_per_group, 2))
    c_lat, c_lon = _to_latlon(city_xy, (lat0, lon0))
    Dc = _haversine(np.concatenate([lat, c_lat]), np.concatenate([lon, c_lon]))[:n, n:]
    serves = Dc < jitter_km
    serves[np.arange(n), np.argmin(Dc, axis=1)] = True
    shared_cities = serves.astype(np.float64) @ serves.T.astype(np.float64)
    feeders = 1.0 + gen.binomial(2, 0.25, size=(n, n))
    feeders = np.triu(feeders, 1) + np.triu(feeders, 1).T
    shared_feeders = np.where(line, feeders, 0.0)
    served = np.round(np.exp(gen.normal(math.log(3000.0), 0.7, size=n)))

    # ---- 3. incidents
    g_rate = np.exp(np.linspace(math.log(rate_lo), math.log(rate_hi), n_groups))[
        gen.permutation(n_groups)]
    lam = g_rate[groups] * np.exp(rate_spread * gen.standard_normal(n))
    g_dur = np.exp(np.linspace(math.log(dur_lo), math.log(dur_hi), n_groups))[
        gen.permutation(n_groups)]
    n_base = gen.poisson(lam * days)
    base_node = np.repeat(np.arange(n), n_base)
    base_time = gen.uniform(0.0, days, size=base_node.size)
    shock_node, shock_time = [], []
    for g in range(n_groups):
        members = np.flatnonzero(groups == g)
        sdays = gen.integers(0, math.ceil(days), size=gen.poisson(shock_rate * days))
        hit = gen.uniform(size=(sdays.size, members.size)) < shock_p
        si, mi = np.nonzero(hit)
        shock_node.append(members[mi])
        shock_time.append(sdays[si] + gen.uniform(size=si.size))
    shock_node = np.concatenate(shock_node).astype(np.int64)
    shock_time = np.concatenate(shock_time)
    prim_node = np.concatenate([base_node, shock_node])
    prim_time = np.concatenate([base_time, shock_time])
    prim_cause = np.concatenate([np.zeros(base_node.size, np.int64),
                                 np.ones(shock_node.size, np.int64)])
    if trigger_k > 0:
        nn_trig = _nearest(D, trigger_k)
        fire = gen.uniform(size=(prim_node.size, trigger_k)) < trigger_p
        pi, ki = np.nonzero(fire)
        trig_node = nn_trig[prim_node[pi], ki]
        trig_time = prim_time[pi] + gen.uniform(0.0, lag_h, size=pi.size) / 24.0
    else:
        trig_node = np.zeros(0, np.int64)
        trig_time = np.zeros(0)
    node = np.concatenate([prim_node, trig_node]).astype(np.int64)
    time = np.concatenate([prim_time, trig_time])
    cause = np.concatenate([prim_cause, np.full(trig_node.size, 2, np.int64)])
    keep = time < days
    node, time, cause = node[keep], time[keep], cause[keep]
    order = np.lexsort((node, time))
    node, time, cause = node[order], time[order], cause[order]
    dur = np.exp(gen.normal(np.log(g_dur[groups[node]]), 0.8))
    frac = np.where(cause == 1, gen.beta(2.0, 4.0, size=node.size),
                    gen.beta(1.2, 6.0, size=node.size))
    cust = np.round(served[node] * frac)

    # ---- 4. node features (incidents with time <= t0)
    past = time <= t0
    pn, pt = node[past], time[past]
    cnt = np.bincount(pn, minlength=n).astype(np.float64)
    safe = np.maximum(cnt, 1.0)
    years = t0 / 365.25
    n_lines = line.sum(1).astype(np.float64)
    risk = np.log(lam) + 0.5 * gen.standard_normal(n)
    x = np.column_stack([
        lat, lon, V, n_lines,
        line_volt.sum(1) / n_lines,
        line_len.sum(1),
        cnt,
        np.bincount(pn, dur[past], n) / safe,
        np.bincount(pn, cust[past], n) / safe,
        np.bincount(pn, cust[past] * 60.0 * dur[past], n) / served / years,
        np.bincount(pn, cust[past], n) / served / years,
        1.0 + np.searchsorted(np.quantile(risk, [1 / 3, 2 / 3]), risk, side="right"),
    ])

    # ---- 5. label
    fut = (time > t0) & (time <= t0 + horizon)
    y = (np.bincount(node[fut], minlength=n) > 0).astype(np.int64)

    # ---- relations
    iu, ju = np.triu_indices(n, 1)
    # spatial
    is_line_pair = line[iu, ju]
    if r_km is None:
        d_free = np.sort(D[iu, ju][~is_line_pair])
        k = round(deg_s * n / 2) - int(is_line_pair.sum())
        if k < 0:
            raise ValueError(f"spatial_degree = {deg_s:g} is below the line graph's mean degree "
                             f"{2 * is_line_pair.sum() / n:g}; lower line_k")
        if k >= d_free.size:
            r_km = float(d_free[-1]) + 1.0
        elif k == 0:
            r_km = float(d_free[0]) / 2
        else:
            r_km = float(0.5 * (d_free[k - 1] + d_free[k]))
    near = D < r_km
    sp = np.triu(line | near, 1)
    si, sj = np.nonzero(sp)
    has_line = line[si, sj].astype(np.float64)
    is_near = near[si, sj].astype(np.float64)
    dist = D[si, sj]
    sattr = np.column_stack([has_line, is_near, line_volt[si, sj], line_len[si, sj],
                             shared_cities[si, sj], shared_feeders[si, sj], dist,
                             has_line + is_near * np.exp(-dist / r_km)])
    spatial = _csr_sorted(np.concatenate([si, sj]), np.concatenate([sj, si]),
                          np.concatenate([sattr, sattr]))

    # temporal
    n_days = math.floor(t0) + 1
    C = np.bincount(pn * n_days + np.floor(pt).astype(np.int64), minlength=n * n_days
                    ).reshape(n, n_days).astype(np.float64)
    Bd = (C > 0).astype(np.float64)
    shared = (Bd @ Bd.T)[iu, ju]
    total = (C @ C.T)[iu, ju]
    cand = np.flatnonzero(shared >= 1)
    rank = cand[np.lexsort((cand, -total[cand], -shared[cand]))]
    kept = rank[:round(deg_t * n / 2)]
    ti, tj = iu[kept], ju[kept]
    tattr = np.column_stack([total[kept], shared[kept]])
    temporal = _csr_sorted(np.concatenate([ti, tj]), np.concatenate([tj, ti]),
                           np.concatenate([tattr, tattr]))
    t_min = float(shared[kept].min()) if kept.size else None

    # causal
    n_i = cnt
    best_z = np.full((n, n), -np.inf)
    best_obs = np.zeros((n, n))
    best_w = np.zeros((n, n))
    for w in windows:
        lo = np.searchsorted(pt, pt, side="right")          # pt is sorted (time order)
        hi = np.searchsorted(pt, pt + w / 24.0, side="right")
        reps = hi - lo
        a = np.repeat(np.arange(pt.size), reps)
        b = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps) + lo[a]
        obs = np.bincount(pn[a] * n + pn[b], minlength=n * n).reshape(n, n).astype(np.float64)
        expc = n_i[:, None] * n_i[None, :] * w / (24.0 * t0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(expc > 0, (obs - expc) / np.sqrt(expc), -np.inf)
        z[obs < causal_min_count] = -np.inf
        better = z > best_z
        best_z = np.where(better, z, best_z)
        best_obs = np.where(better, obs, best_obs)
        best_w = np.where(better, w, best_w)
    np.fill_diagonal(best_z, -np.inf)
    flat = np.flatnonzero(np.isfinite(best_z).ravel())
    zf = best_z.ravel()[flat]
    rank = flat[np.lexsort((flat, -zf))]
    k_c = round(deg_c * n)
    kept = rank[:k_c]
    ci, cj = np.divmod(kept, n)
    z_sorted = best_z.ravel()[rank]
    if kept.size == 0:
        z0 = None
    elif rank.size > k_c:
        z0 = float(0.5 * (z_sorted[k_c - 1] + z_sorted[k_c]))
    else:
        z0 = float(z_sorted[-1])
    cattr = np.column_stack([best_z[ci, cj], best_obs[ci, cj] / n_i[ci], best_w[ci, cj],
                             best_obs[ci, cj]])
    causal = _csr_sorted(ci, cj, cattr)

    rel = {}
    for name, (ei, ea), names in (("spatial", spatial, SPATIAL_ATTRS),
                                  ("temporal", temporal, TEMPORAL_ATTRS),
                                  ("causal", causal, CAUSAL_ATTRS)):
        rel[name] = {"edge_index": ei, "edge_attr": ea, "edge_attr_names": names}
    calibration = {
        "r_km": float(r_km), "temporal_min_count": t_min, "z0": z0,
        "target_in_degree": {"spatial": deg_s, "temporal": deg_t, "causal": deg_c},
        "mean_in_degree": {k: v["edge_index"].shape[1] / n for k, v in rel.items()},
    }
    return {
        "x": x, "feature_names": FEATURE_NAMES, "relations": RELATIONS, **rel,
        "y": y, "groups": groups,
        "incidents": {"node": node, "time": time, "cause": cause, "duration_h": dur,
                      "customers": cust},
        "cause_names": CAUSE_NAMES, "t0": float(t0), "horizon": float(horizon),
        "calibration": calibration,
    }
