"""Typed results of the study's stages (analysis, ablation, pooling, atlas): what metrics.json holds, field by field.

Every stage returns one of these dataclasses; `synthsae.serialize` writes them to JSON (and generates the JSON
schema from the same classes), `synthsae.verdicts` turns them into verdicts, `report.py` lays them out. Each
field carries its meaning (and unit) in `metadata["doc"]`; a number that has a chance level travels as a
`Chance` whose baseline comes from a null that went through the same procedure (named where it is used).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Optional


def doc(text: str, default=MISSING, factory=None, json: str | None = None, omit_none: bool = False):
    """A dataclass field with its documentation (shown in the JSON schema); no default = required. json: its JSON key
    when that is no Python name; omit_none: left out of the JSON when None (a key older files may lack)."""
    meta = {"doc": text, **({"json": json} if json else {}), **({"omit_none": True} if omit_none else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------- building blocks


@dataclass
class Chance:
    """A measured number beside its chance level (the same number under a null named by the enclosing result)."""

    value: Optional[float] = doc("the measured number (null in JSON when undefined)", None)
    baseline: Optional[float] = doc("the same number under the null (null when the null is undefined)", None)


@dataclass
class Spread:
    """One number per seed (or per pool) and its mean / std (ddof 0) over the finite ones."""

    mean: Optional[float] = doc("mean over the finite per-seed values", None)
    std: Optional[float] = doc("standard deviation (ddof 0) over the finite per-seed values", None)
    per_seed: list[Optional[float]] = doc("the values, one per seed (null where undefined, e.g. an empty group)", factory=list)


# ----------------------------------------------------------------------------------------------- analysis


@dataclass(kw_only=True)
class AnalysisSettings:
    """Every knob the analysis used, so a reader can redo it."""

    tau: float = doc("match threshold: a latent is matched in another seed at score >= tau")
    match: str = doc("match rule: maxcos, hungarian or strict (decoder and encoder agree)")
    stable_cutoff: float = doc("a latent is stable at stability >= this")
    unstable_cutoff: float = doc("a latent is unstable at stability <= this")
    tau_sweep: list[float] = doc("thresholds of the sweep", factory=list)
    seeds: int = doc("number of seeds S", 0)
    d_sae: int = doc("latents per seed m", 0)
    d_in: int = doc("input dimension d", 0)
    device: str = doc("device of the cross-seed work", "cpu")
    k_max: int = doc("largest neighbourhood of span reproducibility", 4)
    cluster_rho: float = doc("span projection norm that links two unstable latents in the clustering", 0.9)
    n_rotations: int = doc("random rotations per block in the rotation null", 64)
    null_seed: int = doc("generator seed of the rotated-seeds null", 0)
    atom_recovered_cos: float = doc("an atom is recovered when a latent has cos >= this with it", 0.9)
    block_assign_proj2: float = doc("a latent belongs to block b when ||U_b^T d_i||^2 >= this", 0.5)
    frequency_source: Optional[str] = doc("where firing frequencies came from (null: not measured)", None)
    variant: Optional[str] = doc("SAE variant of the run", None)
    run_dir: Optional[str] = doc("run directory analysed", None)
    folders: Optional[list[str]] = doc("SAE folders analysed (one per seed), when not a run directory", None)


@dataclass
class SweepRow:
    """Stability at one matching threshold."""

    tau: float = doc("match threshold")
    mean_stability: Optional[float] = doc("mean stability over the latents named by the enclosing `over`", None)
    frac_stable: Optional[float] = doc("fraction at stability >= stable_cutoff", None)
    frac_unstable: Optional[float] = doc("fraction at stability <= unstable_cutoff", None)


@dataclass(kw_only=True)
class StabilityResult:
    """Per-latent cross-seed stability, summarised. Baselines: the rotated-seeds null (every seed's dictionary
    rotated by its own Haar-random rotation of the whole space, then the same matching): it keeps each seed's
    geometry (norms, clumps, frequencies) and destroys only the agreement between seeds."""

    over: str = doc("which latents the numbers are over: 'live' (fired on held-out data) or 'all' (no frequencies)")
    n_latents: int = doc("number of latents (summed over seeds) the numbers are over")
    mean: Chance = doc("mean stability (fraction of the other S-1 seeds with a match)")
    soft_mean: Chance = doc("mean over latents of the mean best match score over the other seeds")
    frac_stable: Chance = doc("fraction of latents with stability >= stable_cutoff")
    frac_unstable: Chance = doc("fraction of latents with stability <= unstable_cutoff")
    per_seed_mean: list[Optional[float]] = doc("mean stability per seed (same latents)", factory=list)
    sweep: list[SweepRow] = doc("mean stability and fractions at every tau of the sweep (same latents)", factory=list)
    random_dictionary_mean: Optional[float] = doc("mean stability of Gaussian random dictionaries of the same shape (for reference only: about 0)", None)


@dataclass
class DecileRow:
    """Mean stability in one decile of log10 firing frequency (live latents)."""

    log10_freq_lo: float = doc("lower edge, log10 firing frequency")
    log10_freq_hi: float = doc("upper edge, log10 firing frequency")
    n: int = doc("latents in the decile")
    mean_stability: float = doc("their mean stability")


@dataclass(kw_only=True)
class FrequencyResult:
    """Firing frequency against stability. Baseline of the Spearman: the same correlation between the same
    frequencies and the rotated-seeds null's stability (what geometry alone gives)."""

    source: str = doc("where the frequencies came from")
    dead_rule: str = doc("what counts as dead")
    n_dead: int = doc("dead latents, summed over seeds")
    frac_dead: float = doc("dead fraction of all latents")
    n_live: int = doc("live latents, summed over seeds")
    spearman: Chance = doc("Spearman(log10 frequency, stability) over live latents")
    median_freq_stable: Optional[float] = doc("median firing frequency of stable live latents", None)
    median_freq_unstable: Optional[float] = doc("median firing frequency of unstable live latents", None)
    median_log10_freq: Optional[float] = doc("median log10 frequency of live latents", None)
    by_decile: list[DecileRow] = doc("mean stability per decile of log10 frequency (live latents)", factory=list)
    rarity: Optional[Chance] = doc(
        "median log10 frequency of unstable minus stable live latents; baseline: the 5% quantile of the same "
        "difference for random disjoint groups of the same sizes drawn from the live latents", None)
    rarity_null_draws: int = doc("random splits in the rarity null", 0)
    always_on_cutoff: float = doc("a latent firing on at least this share of tokens is always on", 0.99)
    always_on_per_seed: list[int] = doc("always-on latents per seed", factory=list)
    always_on_stable: int = doc("always-on latents that are stable, summed over seeds", 0)


@dataclass(kw_only=True)
class SpanResult:
    """Span reproducibility: the norm of a latent's projection on the span of its k nearest latents in another
    seed, averaged over the other seeds, k = 1..k_max. Baselines: the rotated-seeds null, same latents' roles."""

    over: str = doc("which latents: 'live' or 'all'")
    k: list[int] = doc("neighbourhood sizes", factory=list)
    all: list[Chance] = doc("mean over the latents, per k", factory=list)
    stable: list[Optional[float]] = doc("mean over stable latents, per k", factory=list)
    unstable: list[Chance] = doc("mean over unstable latents, per k (baseline: the null's unstable latents)", factory=list)
    random_dictionary: list[Optional[float]] = doc("mean for Gaussian random dictionaries of the same shape, per k", factory=list)


@dataclass(kw_only=True)
class ClusterRow:
    """One multi-seed cluster of unstable latents."""

    size: int = doc("latents in the cluster")
    n_seeds: int = doc("distinct seeds among them")
    effective_rank: float = doc("Roy-Vetterli effective rank of the members' unit decoder rows")
    energy_rank_95: int = doc("fewest singular directions holding 95% of the members' squared norm")
    cross_seed_overlap: float = doc("mean subspace overlap between the per-seed spans of the members")
    cross_seed_overlap_baseline: float = doc("max(p,q)/d: two random subspaces (descriptive only: the clustering selects overlap)")
    best_block: Optional[int] = doc("planted block with the largest overlap (synthetic runs)", None)
    best_block_rank: Optional[int] = doc("its rank", None)
    best_block_overlap: Optional[float] = doc("subspace overlap of the cluster's span with that block", None)


@dataclass(kw_only=True)
class ClusterResult:
    """Unstable live latents of all seeds clustered by span reproducibility. Baselines: the same clustering of
    the unstable latents of the rotated-seeds null."""

    n_unstable: int = doc("unstable live latents, summed over seeds")
    n_clusters_multi_seed: int = doc("clusters spanning >= 2 seeds")
    frac_in_multi_seed: Chance = doc("fraction of unstable live latents inside a multi-seed cluster")
    mean_cross_seed_overlap: Chance = doc("mean cross-seed overlap of the multi-seed clusters")
    null_n_unstable: int = doc("unstable latents in the null", 0)
    clusters: list[ClusterRow] = doc("every multi-seed cluster, largest first", factory=list)


@dataclass(kw_only=True)
class AtomResult:
    """Recovery of planted rank-1 atoms. Baselines: a Gaussian random dictionary of the same shape."""

    n_atoms: int = doc("planted atoms")
    mcc: Chance = doc("mean Hungarian-matched (signed) cosine between atoms and latents (unmatched count 0), mean over seeds")
    mcc_per_seed: list[float] = doc("MCC per seed", factory=list)
    mean_best_cos: Chance = doc("mean over atoms of the best cosine of any latent")
    frac_recovered: Chance = doc("fraction of atoms with a latent at cos >= atom_recovered_cos")
    frac_recovered_frequent_half: float = doc("same, over the more frequent half of the atoms", 0.0)
    frac_recovered_rare_half: float = doc("same, over the rarer half", 0.0)
    frac_recovered_in_some_not_all_seeds: float = doc("atoms recovered in some seeds but not all (rare atoms competing for latents)", 0.0)
    n_atom_latents_per_seed: list[int] = doc("latents recovering an atom and not in a block, per seed", factory=list)
    atom_latent_stability: Optional[float] = doc("mean stability of those latents", None)
    atom_latent_frac_stable: Optional[float] = doc("fraction of them stable", None)


@dataclass(kw_only=True)
class BlockResult:
    """One planted subspace: is it recovered, and are its latents identifiable? Baseline of recovery: r/d (a
    random r-dim span); the rotation null: stability of the block's latents against a random rotation of
    themselves inside the block (exact basis ambiguity)."""

    block: int = doc("block index")
    rank: int = doc("planted rank r")
    orthogonal: bool = doc("orthogonal to every other component (clean case) or in superposition")
    prob: float = doc("firing probability")
    n_assigned_per_seed: list[int] = doc("latents with ||U^T d||^2 >= block_assign_proj2, per seed", factory=list)
    recovery: Chance = doc("||U^T Q||_F^2 / r for the top-r span Q of the assigned latents, mean over seeds (0 for none)")
    recovery_per_seed: list[float] = doc("recovery per seed", factory=list)
    stability: Optional[float] = doc("mean cross-seed stability of the assigned latents (null: none assigned)", None)
    rotation_null: Optional[float] = doc("their stability under the rotation null (null: none assigned)", None)
    stability_minus_rotation_null: Optional[float] = doc("stability - rotation null", None)
    frac_unstable: Optional[float] = doc("fraction of assigned latents that are unstable", None)
    span_reproducibility: list[Optional[float]] = doc("mean span reproducibility of the assigned latents, k = 1..k_max", factory=list)


@dataclass(kw_only=True)
class GeometrySummary:
    """Blocks of one geometry (orthogonal / superposed) together; means over every block of that geometry."""

    geometry: str = doc("'orthogonal' or 'superposed'")
    n_blocks: int = doc("planted blocks of this geometry")
    n_blocks_with_latents: int = doc("of them, blocks with at least one assigned latent")
    mean_recovery: Optional[float] = doc("mean recovery over all of them (a block with no latents counts 0)", None)
    mean_stability: Optional[float] = doc("mean latent stability over the blocks with latents", None)
    mean_rotation_null: Optional[float] = doc("mean rotation null over the same blocks", None)


@dataclass(kw_only=True)
class BlockAlignment:
    """The largest multi-seed unstable cluster lying in one planted block (overlap >= 0.8)."""

    block: int = doc("block index")
    rank: int = doc("planted rank")
    orthogonal: bool = doc("geometry")
    n_clusters: int = doc("aligned clusters in this block")
    largest_cluster_size: int = doc("latents in the largest")
    largest_cluster_energy_rank_95: Optional[int] = doc("its 95%-energy rank (null: no cluster)", None)
    rank_right: bool = doc("largest cluster's 95%-energy rank within 1 of the planted rank (False: no cluster)")


@dataclass(kw_only=True)
class ClusterAlignment:
    """Do the unstable-latent clusters line up with the planted blocks?"""

    frac_clustered_latents_aligned: float = doc("latents in clusters overlapping a planted block >= 0.8, over all clustered latents (0 when none)")
    frac_blocks_rank_right: float = doc("over ALL planted blocks: largest aligned cluster's 95% rank within 1 of the planted rank")
    per_block: list[BlockAlignment] = doc("per planted block", factory=list)


@dataclass(kw_only=True)
class TruthResult:
    """Recovery of the planted truth (synthetic runs only)."""

    atoms: Optional[AtomResult] = doc("planted atoms (null: none planted)", None)
    blocks: list[BlockResult] = doc("every planted block", factory=list)
    by_geometry: list[GeometrySummary] = doc("blocks summarised per geometry", factory=list)
    block_latent_stability_rank_ge_4: Optional[float] = doc("mean stability of latents assigned to blocks of rank >= 4", None)
    cluster_alignment: Optional[ClusterAlignment] = doc("clusters against planted blocks", None)


@dataclass(kw_only=True)
class TruthFilterResult:
    """Does stability mark true features? Live latents labelled true / not true against the planted truth; stability
    as a score for that label. Baselines: the rotated-seeds null's stability with the same labels (chance: AUROC 0.5)."""

    label_rule: str = doc("what makes a latent true")
    stable_cutoff: float = doc("'stable' (the detector) = stability >= this")
    n_live: int = doc("live latents, summed over seeds")
    n_true: int = doc("of them, true latents")
    n_true_atom: int = doc("live latents on a planted atom")
    n_true_block: int = doc("live latents in a planted block")
    base_rate: Optional[float] = doc("share of live latents that are true (the precision of keeping everything)", None)
    auroc: Chance = doc("AUROC of per-latent stability for the true label (ties count one half; null: no true or no other latents)")
    auroc_soft: Chance = doc("AUROC of soft stability (mean best match score) for the same label")
    precision: Chance = doc("share of stable live latents that are true (null: none stable)")
    recall: Chance = doc("share of true live latents that are stable")
    frac_stable: Optional[float] = doc("share of live latents that are stable", None)
    auroc_atoms: Optional[float] = doc("AUROC of stability, atom latents against not-true ones (block-only latents left out)", None)
    auroc_blocks: Optional[float] = doc("AUROC of stability, block latents against not-true ones (atom-only latents left out)", None)
    mean_stability_true: Optional[float] = doc("mean stability of true live latents", None)
    mean_stability_not_true: Optional[float] = doc("mean stability of the other live latents", None)


@dataclass(kw_only=True)
class SeedBudgetRow:
    """The stability numbers of subsets of n seeds against the all-S values (spread = the 95% quantile of |difference|)."""

    n: int = doc("seeds in a subset")
    n_subsets: int = doc("subsets compared")
    all_subsets: bool = doc("every n-subset (true) or a seeded random sample of them")
    stable_share_mean: Optional[float] = doc("mean over subsets of the stable share of their live latents", None)
    stable_share_std: Optional[float] = doc("its standard deviation over subsets", None)
    stable_share_within: Optional[float] = doc("95% of subsets have a stable share within +- this of the all-S value", None)
    mean_stability_mean: Optional[float] = doc("mean over subsets of the mean stability of their live latents", None)
    mean_stability_within: Optional[float] = doc("95% of subsets have a mean stability within +- this of the all-S value", None)
    latent_within: Optional[float] = doc("95% of (subset, latent) pairs have a stability within +- this of the latent's all-S stability", None)
    latent_mean_abs_dev: Optional[float] = doc("mean |stability among the subset - all-S stability| over (subset, latent) pairs", None)


@dataclass(kw_only=True)
class SeedBudgetResult:
    """How many seeds are enough? Stability recomputed among every subset of n < S seeds (same match table, same
    tau and cut-off) and compared with all S seeds. The all-S value shares seeds with every subset, so for n close
    to S the spread understates the error of n fresh seeds."""

    seeds: int = doc("S, the seeds of the run")
    tau: float = doc("match threshold")
    stable_cutoff: float = doc("stable at stability >= this")
    max_subsets: int = doc("at most this many subsets per n (all of them when there are fewer)")
    sample_seed: int = doc("seed of the subset sample")
    quantile: float = doc("quantile of the spreads (0.95)")
    target: float = doc("the spread of the stable share that smallest_n_within_target must reach")
    stable_share_all: Optional[float] = doc("stable share of the live latents with all S seeds", None)
    mean_stability_all: Optional[float] = doc("mean stability of the live latents with all S seeds", None)
    rows: list[SeedBudgetRow] = doc("n = 2 .. S-1", factory=list)
    smallest_n_within_target: Optional[int] = doc("smallest n < S such that it and every larger n < S give the stable share within +- target (95%); null: none", None)


@dataclass(kw_only=True)
class AnalysisResult:
    """Everything the analysis measured for S seeds (metrics.json key 'analysis')."""

    schema: str = doc("result format version")
    settings: AnalysisSettings = doc("knobs used")
    stability: StabilityResult = doc("stability distribution")
    span_reproducibility: SpanResult = doc("span reproducibility")
    unstable_clusters: ClusterResult = doc("clusters of unstable latents")
    frequency: Optional[FrequencyResult] = doc("frequency against stability (null: no frequencies)", None)
    truth: Optional[TruthResult] = doc("truth recovery (null: no planted truth)", None)
    seconds: float = doc("wall time of the analysis", 0.0)
    truth_filter: Optional[TruthFilterResult] = doc("does stability mark true features (null: no planted truth)", None)
    seed_budget: Optional[SeedBudgetResult] = doc("how many seeds are enough (null: fewer than 3 seeds)", None)


# ----------------------------------------------------------------------------------------------- ablation


@dataclass(kw_only=True)
class GroupCost:
    """What zeroing a group costs under one metric ('fvu' or 'pred')."""

    delta: Spread = doc("cost with the group zeroed minus cost of the full reconstruction")
    share: Spread = doc("delta / delta of zeroing every latent")
    per_latent: Spread = doc("delta / group size")
    per_mass: Spread = doc("delta / the group's mean activation mass per token (sum of a_i * ||d_i||)")
    share_per_mass_share: Spread = doc("share of the cost / share of the activation mass (1 = cost in proportion to mass)")
    share_per_mass_share_draws: list[list[Optional[float]]] = doc(
        "share_per_mass_share per random draw and seed [draw][seed] (one draw for stable / unstable)", factory=list)


@dataclass(kw_only=True)
class GroupResult:
    """One ablated group: stable, unstable, or a random control drawn among live latents."""

    name: str = doc("group name")
    controls: Optional[str] = doc("the group this random group controls for (null: not a control)", None)
    matched_by: Optional[str] = doc("'size' or 'frequency' (deciles of log frequency), for controls", None)
    size: Spread = doc("latents in the group")
    mass_share: Spread = doc("group's activation mass / all latents' activation mass")
    costs: dict[str, GroupCost] = doc("per cost metric: 'fvu' and, when measured, 'pred'", factory=dict)


@dataclass(kw_only=True)
class AblationResult:
    """Functional asymmetry (metrics.json key 'ablation')."""

    eval_tokens: int = doc("held-out tokens")
    eval_seed: Optional[int] = doc("data seed of the held-out sample", None)
    tau: float = doc("match threshold of the stability used")
    match: str = doc("match rule of the stability used")
    stable_cutoff: float = doc("stable at stability >= this")
    unstable_cutoff: float = doc("unstable at stability <= this")
    live_threshold: float = doc("live: firing frequency > this on the eval sample")
    n_draws: int = doc("random draws per control group")
    prediction_cost: Optional[str] = doc("name of the prediction cost (null: none)", None)
    units: dict[str, str] = doc("unit of each cost metric", factory=dict)
    n_live: Spread = doc("live latents per seed")
    baseline: dict[str, Spread] = doc("cost of the full reconstruction, per metric", factory=dict)
    all_ablated: dict[str, Spread] = doc("cost with every latent zeroed (reconstruction = b_dec), per metric", factory=dict)
    groups: dict[str, GroupResult] = doc("per group", factory=dict)
    run_dir: Optional[str] = doc("run directory", None)
    variant: Optional[str] = doc("SAE variant", None)


# ----------------------------------------------------------------------------------------------- pooling


@dataclass(kw_only=True)
class PoolInfo:
    """One pooled SAE (built from one set of seeds)."""

    seeds: list[int] = doc("seed indices pooled", factory=list)
    width: int = doc("latents", 0)
    ev: Optional[float] = doc("explained variance 1 - FVU on the eval sample", None)
    l0: Optional[float] = doc("mean active latents per token on the eval sample", None)
    n_live: int = doc("latents firing on the eval sample", 0)
    kept_coverage_hist: list[int] = doc("kept clusters by number of seeds covered (1..n)", factory=list)
    folder: Optional[str] = doc("SAELens-layout folder it was saved to", None)


@dataclass(kw_only=True)
class PoolVariant:
    """One pooling rule at one width, built from all seeds and from each disjoint half."""

    name: str = doc("rule_wWIDTH, or union")
    rule: str = doc("coverage, coverage_freq or union")
    width: Optional[int] = doc("requested width (null: union keeps every cluster)", None)
    role: str = doc("'primary' (named in the config before the run, decides the verdict) or 'secondary'")
    pools: dict[str, PoolInfo] = doc("'all', 'A', 'B'", factory=dict)
    stability_pool_vs_pool: Optional[Spread] = doc("pool A's live latents matched in pool B and vice versa", None)
    stability_null: Optional[Spread] = doc("the same after a random rotation of the other pool (its own chance level)", None)
    stability_vs_heldout: Optional[Spread] = doc("per live latent, fraction of the other half's single seeds it is matched in", None)
    ev_halves: Optional[Spread] = doc("EV of pools A and B", None)
    l0_halves: Optional[Spread] = doc("L0 of pools A and B", None)


@dataclass(kw_only=True)
class SingleSeeds:
    """The run's own seeds, judged the same way (they are also the single SAE at the primary pool's width)."""

    ev: Spread = doc("EV per seed")
    l0: Spread = doc("L0 per seed")
    n_live: Spread = doc("live latents per seed")
    stability_between_halves: Optional[Spread] = doc("every (a in A, b in B), both directions: live latents of a matched in b", None)
    stability_null: Optional[Spread] = doc("the same after a random rotation of b", None)
    stability_vs_heldout: Optional[Spread] = doc("per live latent, fraction of the other half's seeds it is matched in", None)


@dataclass(kw_only=True)
class Bagging:
    """Bagging baseline: the seeds of each half concatenated into one dictionary (reconstructions averaged)."""

    width: int = doc("latents of one bag (seeds per half x d_sae)")
    ev_halves: Spread = doc("EV of the averaged reconstruction of each half")
    l0_halves: Spread = doc("summed L0 of each half")
    stability_between_halves: Spread = doc("bag A's live latents matched in bag B and vice versa")
    stability_null: Spread = doc("the same after a random rotation of the other bag")


@dataclass(kw_only=True)
class PoolClusters:
    """The cross-seed clusters one pool was built from."""

    pool: str = doc("'all', 'A' or 'B'")
    n_gathered: int = doc("live latents gathered")
    n_clusters: int = doc("clusters")
    coverage_hist: list[int] = doc("clusters by number of seeds covered (1..n)", factory=list)


@dataclass(kw_only=True)
class PoolingResult:
    """Pooling seeds (metrics.json key 'pooling')."""

    tau: float = doc("link / match threshold")
    match: str = doc("match rule")
    live_threshold: float = doc("live: firing frequency > this on the eval sample")
    live_rule: str = doc("the live rule in words")
    refit_steps: int = doc("encoder refit steps with the decoder frozen")
    eval_tokens: int = doc("held-out tokens")
    base_width: int = doc("d_sae of the run")
    primary: str = doc("name of the primary pooled SAE (config analysis.pool_primary at the base width)")
    halves: Optional[dict[str, list[int]]] = doc("seed indices of halves A and B (null: fewer than 2 seeds)", None)
    single: SingleSeeds = doc("single seeds")
    bagging: Optional[Bagging] = doc("bagging baseline (null: fewer than 2 seeds)", None)
    clusters: list[PoolClusters] = doc("clusters per pool", factory=list)
    variants: dict[str, PoolVariant] = doc("every pooled SAE built, primary first", factory=dict)
    seconds: float = doc("wall time", 0.0)


# ----------------------------------------------------------------------------------------------- atlas


@dataclass(kw_only=True)
class AtlasSettings:
    """The atlas's cut-offs (synthsae.metrics.atlas.AtlasConfig, docs/atlas.md) and what they resolved to."""

    overlap: float = doc("principal-angle overlap (mean squared cosine) at which a seed holds a feature's span")
    rho: float = doc("span clustering: projection norm of a latent onto its neighbours' span that links them")
    k_max: int = doc("span clustering: at most this many neighbours per other seed")
    energy: float = doc("energy rule: a feature keeps the directions spanned by >= this share of its seeds")
    seed_energy: float = doc("energy rule: a seed spans the directions holding >= this share of its members' energy")
    member_share: float = doc("holding test: a latent counts when >= this share of its squared norm lies in the span")
    min_seeds: int = doc("seeds a feature must be found in and held by (0 = max(2, ceil(S / 2)))")
    max_rank: int = doc("highest rank of a feature; higher spans are chains (0 = d // 4)")
    min_seeds_resolved: int = doc("min_seeds as used")
    max_rank_resolved: int = doc("max_rank as used")
    n_chained_clusters_rejected: int = doc("clusters above max_rank that did not split at the strictest rho", 0)
    n_unheld_clusters_rejected: int = doc("clusters whose span fewer than min_seeds seeds hold (sent to the remainder)", 0)


@dataclass(kw_only=True)
class AtlasSource:
    """What the atlas was built from."""

    run_dir: Optional[str] = doc("run folder (null: SAE folders)", None)
    folders: Optional[list[str]] = doc("SAE folders, one per seed (null: a run folder)", None)
    variant: Optional[str] = doc("SAE variant", None)
    data: str = doc("where firing frequencies and EV shares came from", "none")


@dataclass(kw_only=True)
class AtlasKind:
    """One kind of place a latent can end in: 'stable' (rank-1 features), 'subspace' (rank > 1 features),
    'remainder' (live latents in no feature) or 'dead'."""

    kind: str = doc("stable, subspace, remainder or dead")
    n_features: int = doc("features of this kind (0 for remainder and dead)")
    n_latents: int = doc("latents of all seeds in them")
    ev_share: Optional[float] = doc("share of the seeds' explained variance they carry, mean over seeds (null: no data)", None)
    mean_stability: Optional[float] = doc("mean feature stability (null: no feature of this kind)", None)
    ev_weighted_stability: Optional[float] = doc("feature stability weighted by EV share (null: no data or feature)", None)


@dataclass(kw_only=True)
class AtlasLatentHeldout:
    """Latent-level stability of the build seeds against the held-out seeds (maxcos at the run's tau)."""

    mean: Optional[float] = doc("mean over live latents of the fraction of held-out seeds with a match", None)
    ev_weighted: Optional[float] = doc("the same weighted by each latent's EV share (null: no data)", None)


@dataclass(kw_only=True)
class AtlasHalf:
    """The atlas of one half of the seeds judged on the other half."""

    build_seeds: list[int] = doc("seed positions the atlas was built from", factory=list)
    judge_seeds: list[int] = doc("held-out seed positions it was judged on", factory=list)
    n_features: int = doc("features of the half's atlas")
    n_subspaces: int = doc("of them, rank > 1")
    feature_stability_heldout: Optional[float] = doc("mean over features of the fraction of held-out seeds holding it (null: no feature)", None)
    feature_stability_in_sample: Optional[float] = doc("mean in-sample feature stability (null: no feature)", None)
    latent_stability_heldout: AtlasLatentHeldout = doc("latent-level stability against the same held-out seeds")
    latent_stability_heldout_at_sqrt_overlap: Optional[float] = doc("latent-level stability at tau = sqrt(overlap)", None)
    ev_share_features: Optional[float] = doc("EV share of the half's features (null: no data; 0: no feature)", None)
    feature_stability_heldout_ev_weighted: Optional[float] = doc("held-out feature stability weighted by EV share (null: no data)", None)
    ev_share_features_heldout_ge_goal: Optional[float] = doc("EV share of features held by >= the goal share of held-out seeds (null: no data)", None)


@dataclass(kw_only=True)
class AtlasHeldoutMean:
    """Means over the two halves (null where not measured)."""

    feature_stability_heldout: Optional[float] = doc("held-out feature stability", None)
    feature_stability_heldout_ev_weighted: Optional[float] = doc("held-out feature stability weighted by EV share", None)
    ev_share_features: Optional[float] = doc("EV share of the features", None)
    ev_share_features_heldout_ge_goal: Optional[float] = doc("EV share of features held by >= the goal share of held-out seeds", None)
    latent_stability_heldout: Optional[float] = doc("held-out latent stability at the run's tau", None)
    latent_stability_heldout_ev_weighted: Optional[float] = doc("the same weighted by EV share", None)


@dataclass(kw_only=True)
class AtlasGoal:
    """Issue 15's goal: features held by >= 90% of held-out seeds (EV-weighted) carrying >= 95% of the EV."""

    feature_stability_goal: float = doc("goal for the EV-weighted held-out feature stability")
    ev_goal: float = doc("goal for the features' EV share")
    feature_stability_ev_weighted: float = doc("measured EV-weighted held-out feature stability")
    ev_share_features: float = doc("measured EV share of the features")
    held: bool = doc("both goals met")


@dataclass(kw_only=True)
class AtlasPooled:
    """The pooled SAE's held-out stability from the run's pooling stage, for comparison."""

    variant: str = doc("pooled variant (coverage at the run's width)")
    stability_vs_heldout: Spread = doc("per live latent, fraction of the other half's single seeds it is matched in")
    ev_halves: Optional[Spread] = doc("EV of pools A and B", None)
    tau: Optional[float] = doc("the pooling's match threshold", None)


@dataclass(kw_only=True)
class AtlasResamples:
    """The atlas again on resamples of the seeds (leave one seed out): how much its headline numbers move when one
    seed is swapped out; an atlas that flips between resamples is not a result."""

    method: str = doc("how the seeds were resampled")
    left_out: list[int] = doc("seed position left out, per resample", factory=list)
    n_features: list[int] = doc("features per resample", factory=list)
    n_subspaces: list[int] = doc("reproducible subspaces (rank > 1) per resample", factory=list)
    n_remainder_latents: list[int] = doc("latents in the remainder per resample", factory=list)
    largest_feature_share: list[float] = doc("largest feature's share of the live latents, per resample", factory=list)
    ev_share_features: list[Optional[float]] = doc("EV share of the features per resample (null: no data)", factory=list)
    n_subspaces_spread: Optional[Spread] = doc("mean / std over resamples of n_subspaces", None)
    ev_share_features_spread: Optional[Spread] = doc("mean / std over resamples of the EV share (null: no data)", None)


@dataclass(kw_only=True)
class AtlasHeldout:
    """Judgement on held-out seeds (>= 4 seeds): the atlas of each half against the other half."""

    halves: list[AtlasHalf] = doc("both directions", factory=list)
    mean: AtlasHeldoutMean = doc("means over the halves")
    latent_tau: float = doc("tau of the latent-level comparison (the run's analysis tau)")
    goal: Optional[AtlasGoal] = doc("the goal (null: no data for EV shares)", None)
    pooled: Optional[AtlasPooled] = doc("the pooled SAE's held-out stability (null: no pooling stage)", None)


@dataclass(kw_only=True)
class AtlasBlockMatch:
    """One planted block against its best atlas feature (synthetic runs)."""

    block: int = doc("block index")
    rank: int = doc("planted rank")
    orthogonal: bool = doc("orthogonal to every other component", False)
    best_feature: int = doc("feature of largest overlap (-1: none)")
    overlap: float = doc("||B^T U||^2 / max(r_B, r_U) of that feature (1 only for the same span)")
    features_inside: int = doc("features lying inside the block (containment >= 0.9)")
    feature_rank: Optional[int] = doc("rank of the best feature", None)
    rank_right: Optional[bool] = doc("its rank equals the block's", None)
    feature_stability: Optional[float] = doc("its stability", None)
    feature_kind: Optional[str] = doc("its kind", None)


@dataclass(kw_only=True)
class AtlasGroupBlock:
    """blocktopk groups lying inside one planted block."""

    block: int = doc("block index")
    rank: int = doc("planted rank")
    n_groups_inside: int = doc("groups (all seeds) inside it at containment >= 0.9")
    mean_group_stability: Optional[float] = doc("their mean group stability (null: none)", None)


@dataclass(kw_only=True)
class AtlasGroupStability:
    """Group-level stability of a blocktopk run: per group, the fraction of other seeds with a group of overlapping span."""

    mean: Optional[float] = doc("mean over live groups", None)
    n_live_groups: int = doc("groups with a live latent, all seeds")
    overlap: float = doc("span overlap at which two groups match")
    per_seed_mean: list[float] = doc("mean group stability per seed", factory=list)
    per_block: list[AtlasGroupBlock] = doc("per planted block (synthetic runs)", factory=list)


@dataclass(kw_only=True)
class AtlasCE:
    """Next-token CE with the reconstruction spliced into the model (real runs, real.splice) when only the latents of
    the reproducible features are kept (the remainder's zeroed) and when only the remainder's are kept (dead latents
    count with the remainder). CE share: the two-player Shapley share of the CE gain over 'no latent' (b_dec only),
    the analogue of the EV share; per seed."""

    layer: int = doc("block after which the reconstruction is spliced")
    splice_windows: int = doc("held-out windows")
    splice_tokens: int = doc("predicted tokens the CE is averaged over")
    ce_clean: float = doc("CE of the clean model (nats per token)")
    ce_zero_ablation: float = doc("CE with zeros spliced in")
    ce_full: Spread = doc("CE with the full reconstruction spliced in")
    ce_features_only: Spread = doc("CE with the remainder's (and dead) latents zeroed")
    ce_remainder_only: Spread = doc("CE with the features' latents zeroed")
    ce_no_latents: Spread = doc("CE with every latent zeroed (the reconstruction is b_dec)")
    ce_recovered_full: Spread = doc("(CE_zero - CE_full) / (CE_zero - CE_clean)")
    ce_recovered_features_only: Spread = doc("the same with only the features' latents kept")
    ce_recovered_remainder_only: Spread = doc("the same with only the remainder's latents kept")
    ce_share_features: Spread = doc("Shapley share of the CE gain carried by the features: (g(F) + g(all) - g(R)) / (2 g(all)), "
                                    "g(T) = CE_no_latents - CE(only T kept) (null for a seed with g(all) <= 0)")
    ce_share_remainder: Spread = doc("1 - ce_share_features")
    kl_features_only: Spread = doc("KL(clean || spliced) with only the features' latents kept (nats per token)")
    kl_remainder_only: Spread = doc("the same with only the remainder's latents kept")
    definition: str = doc("the definitions in words", "")


@dataclass(kw_only=True)
class AtlasResult:
    """The cross-seed feature atlas (metrics.json key 'atlas'; atlas.json = this plus one row per feature)."""

    schema: str = doc("result format version")
    settings: AtlasSettings = doc("cut-offs used")
    source: AtlasSource = doc("what the atlas was built from")
    n_seeds: int = doc("seeds S")
    d: int = doc("input dimension")
    d_sae: int = doc("latents per seed", 0)
    n_features: int = doc("features (stable rank-1 plus subspaces)")
    n_stable_rank1: int = doc("rank-1 features: stable latent directions")
    n_subspaces: int = doc("features of rank > 1: reproducible subspaces")
    rank_histogram: dict[str, int] = doc("features per rank", factory=dict)
    n_remainder_latents: int = doc("live latents of all seeds in no feature")
    n_dead_latents: int = doc("dead latents of all seeds")
    mean_feature_stability: Optional[float] = doc("mean feature stability (null: no feature)", None)
    ev_share_features: Optional[float] = doc("EV share of all features, mean over seeds (null: no data)", None)
    ev_share_remainder: Optional[float] = doc("EV share of the remainder (null: no data)", None)
    ev_share_dead: Optional[float] = doc("EV share of dead latents (about 0; null: no data)", None)
    ev_weighted_feature_stability: Optional[float] = doc("feature stability weighted by EV share (null: no data or no feature)", None)
    kinds: list[AtlasKind] = doc("stable, subspace, remainder, dead", factory=list)
    heldout: Optional[AtlasHeldout] = doc("held-out judgement (null: < 4 seeds or no data)", None)
    resamples: Optional[AtlasResamples] = doc("the atlas on leave-one-seed-out resamples (null: < 3 seeds)", None)
    planted_blocks: list[AtlasBlockMatch] = doc("planted blocks against the atlas (synthetic runs)", factory=list)
    group_stability: Optional[AtlasGroupStability] = doc("group-level stability (blocktopk runs)", None)
    ce: Optional[AtlasCE] = doc("spliced CE of features against the remainder (real runs; null elsewhere)", None)
    seconds: float = doc("wall time", 0.0)


@dataclass(kw_only=True)
class AtlasFeatureRow:
    """One atlas feature (a row of atlas.json's `features`; its basis is in atlas.safetensors)."""

    id: int = doc("feature index (row of atlas.safetensors)")
    kind: str = doc("stable (rank 1) or subspace (rank > 1)")
    rank: int = doc("rank of its span")
    seeds: list[int] = doc("seed positions of its latents", factory=list)
    n_latents: int = doc("latents merged into it (all seeds)")
    holders: int = doc("seeds holding its span")
    stability: Optional[float] = doc("mean over its seeds of the fraction of other seeds holding it", None)
    frequency: Optional[float] = doc("mean over its seeds of the fraction of tokens on which any of its latents fires", None)
    ev_share: Optional[float] = doc("mean over all seeds of the EV share of its latents", None)


# ----------------------------------------------------------------------------------------------- provenance


@dataclass(kw_only=True)
class SeedSource:
    """Where one seed came from: an SAE folder written by a library and loaded by synthsae.loaders."""

    path: str = doc("the folder")
    format: str = doc("file layout: saelens, sparsify or dictionary_learning")
    library: str = doc("library that wrote the files (synthsae for our own folders)")
    version: Optional[str] = doc("that library's version as recorded in the files (null: the files do not record it)", None)
    architecture: str = doc("architecture as the files name it")
    variant: str = doc("our variant it was loaded as (same encode / decode)")
    d_in: int = doc("input dimension")
    d_sae: int = doc("latents")
    details: dict[str, str] = doc("format-specific facts from the files (hook name, k, trainer seed ...)", factory=dict)


@dataclass(kw_only=True)
class GivenActivations:
    """Activations the user gave (--acts) and what the SAEs did on them."""

    path: str = doc("file or folder of safetensors shards")
    n_tokens: int = doc("activation vectors read")
    fvu_per_seed: list[Optional[float]] = doc("fraction of variance unexplained (pooled, mean-centred) per seed", factory=list)
    l0_per_seed: list[Optional[float]] = doc("mean active latents per vector, per seed", factory=list)


@dataclass(kw_only=True)
class SourcesResult:
    """Provenance of SAEs analysed from folders (metrics.json key 'sources'; absent for our own training runs)."""

    folders: list[SeedSource] = doc("one per seed, in seed order", factory=list)
    libraries: list[str] = doc("distinct 'library version' strings", factory=list)
    frequency_source: str = doc("where firing frequencies came from, or 'not measured ...'")
    activations: Optional[GivenActivations] = doc("activations given with --acts (null: weights-only analysis)", None)
    ablation_folders: Optional[list[str]] = doc("folders the stored ablation measured (null: no ablation of folders)", None)
    pooling_folders: Optional[list[str]] = doc("folders the stored pooling study pooled (null: none)", None)


# ----------------------------------------------------------------------------------------------- seed modes


@dataclass(kw_only=True)
class SeedModeRow:
    """One way of seeding (what the S seeds share) of the same config, analysed the same way."""

    mode: str = doc("independent (own init, own data), shared_init (one init, own data) or shared_data (own init, one data stream)")
    run_dir: str = doc("run folder of this mode (the run itself, or its companion under seed_modes/<mode>)")
    own: bool = doc("true for the run's own mode")
    stability: Chance = doc("mean stability of live latents (baseline: the rotated-seeds null)")
    frac_stable: Chance = doc("stable share of live latents (baseline: the rotated-seeds null)")
    truth_auroc: Optional[float] = doc("AUROC of stability for true latents (null: no planted truth)", None)
    ev: Optional[float] = doc("explained variance on held-out samples, mean over seeds", None)


@dataclass(kw_only=True)
class SeedModesResult:
    """The run's stability beside the same config trained under other seed modes (metrics.json key 'seed_modes')."""

    own_mode: str = doc("the run's seed mode")
    rows: list[SeedModeRow] = doc("the run's own mode first, then each companion", factory=list)


# ----------------------------------------------------------------------------------------------- real runs


@dataclass(kw_only=True)
class SpliceResult:
    """The SAEs' reconstruction spliced into the model after the layer (metrics.json key 'splice'; real runs)."""

    layer: Optional[int] = doc("block after which the reconstruction replaces the residual stream", None)
    splice_windows: Optional[int] = doc("held-out windows scored", None)
    splice_tokens: Optional[int] = doc("predicted tokens scored", None)
    ce_clean: Optional[float] = doc("next-token cross-entropy of the clean model (nats per token)", None)
    ce_zero_ablation: Optional[float] = doc("the same with zeros spliced in at the same positions (nats per token)", None)
    kl_zero_ablation: Optional[float] = doc("KL(clean || zero-ablated) per predicted token (nats)", None)
    ce_spliced: Optional[Spread] = doc("CE with each seed's reconstruction spliced in (nats per token)", None)
    kl_spliced: Optional[Spread] = doc("KL(clean || spliced) per predicted token, per seed (nats)", None)
    fvu_spliced: Optional[Spread] = doc("fraction of variance unexplained on the spliced tokens, per seed", None)
    ce_recovered: Optional[Spread] = doc("(CE_zero - CE_spliced) / (CE_zero - CE_clean) per seed (1: as good as clean)", None)
    forward: Optional[str] = doc("suffix: blocks after the layer run from the spliced stream; hook: the whole model", None)
    definition: Optional[str] = doc("the definitions in words", None)


@dataclass(kw_only=True)
class TriggerGroup:
    """Trigger statistics of one group of live latents (stable or unstable), over every seed."""

    n: Optional[int] = doc("live latents in the group", None)
    surface_score_mean: Optional[float] = doc("mean surface-form score (share of activation mass on the top token)", None)
    surface_score_median: Optional[float] = doc("median surface-form score", None)
    token_entropy_mean: Optional[float] = doc("mean entropy of the token ids a latent fires on (bits)", None)
    token_entropy_median: Optional[float] = doc("median token entropy (bits)", None)
    frequency_mean: Optional[float] = doc("mean firing frequency on the trigger sample", None)
    frequency_median: Optional[float] = doc("median firing frequency on the trigger sample", None)
    frac_surface_ge_05: Optional[float] = doc("share with surface-form score >= 0.5", None, json="frac_surface_ge_0.5")


@dataclass
class Quantiles:
    """5% / 50% / 95% quantiles of a difference over random draws."""

    q05: Optional[float] = doc("5% quantile", None)
    q50: Optional[float] = doc("median", None)
    q95: Optional[float] = doc("95% quantile", None)


@dataclass(kw_only=True)
class TriggerNull:
    """The stable / unstable comparison with both groups replaced by random disjoint groups of the same sizes drawn
    from the live latents (every seed pooled); the differences are absent when the groups cannot be drawn."""

    draws: Optional[int] = doc("random splits drawn", None)
    seed: Optional[int] = doc("numpy generator seed of the draws", None)
    n_pool: Optional[int] = doc("live latents with finite statistics, drawn from", None)
    n_stable: Optional[int] = doc("size of the random 'stable' group", None)
    n_unstable: Optional[int] = doc("size of the random 'unstable' group", None)
    what: Optional[str] = doc("the difference, in words", None)
    surface_score_median_diff: Optional[Quantiles] = doc("median surface score, random 'unstable' - 'stable'", None, omit_none=True)
    token_entropy_median_diff: Optional[Quantiles] = doc("median token entropy, random 'unstable' - 'stable' (bits)", None, omit_none=True)
    frequency_median_diff: Optional[Quantiles] = doc("median frequency, random 'unstable' - 'stable'", None, omit_none=True)


@dataclass(kw_only=True)
class TriggersResult:
    """What stable and unstable live latents fire on (metrics.json key 'triggers'; real runs)."""

    eval_tokens: Optional[int] = doc("held-out tokens encoded", None)
    definition: Optional[str] = doc("the statistics in words", None)
    stable: Optional[TriggerGroup] = doc("live latents at stability >= the stable cut-off", None)
    unstable: Optional[TriggerGroup] = doc("live latents at stability <= the unstable cut-off", None)
    null: Optional[TriggerNull] = doc("random splits of the live latents (absent in runs made before it was stored)",
                                      None, omit_none=True)


@dataclass(kw_only=True)
class ConvergencePoint:
    """The seeds at one checkpoint of training, on an eval sample (train.json's 'convergence' list; real runs)."""

    step: int = doc("optimizer step")
    tokens_per_seed: int = doc("training tokens each seed has seen")
    fvu: Optional[list[Optional[float]]] = doc("eval fraction of variance unexplained, per seed", None)
    l0: Optional[list[Optional[float]]] = doc("mean active latents per token, per seed", None)
    mean_stability_live: Optional[float] = doc("mean stability of live latents (maxcos at the analysis tau)", None)
    mean_stability_live_per_seed: Optional[list[Optional[float]]] = doc(
        "the same per seed (absent in runs made before it was stored)", None, omit_none=True)
    frac_stable_live: Optional[float] = doc("stable share of live latents", None)
    frac_unstable_live: Optional[float] = doc("unstable share of live latents", None)
    frac_live: Optional[float] = doc("share of latents live (frequency > 1e-5)", None)


@dataclass(kw_only=True)
class ConvergenceResult:
    """The convergence curve of a real run's training, read from train.json (other train.json keys ignored)."""

    steps: Optional[int] = doc("optimizer steps of the run", None)
    decay_start: Optional[float] = doc("share of the steps after which the learning rate decays", None)
    convergence: Optional[list[ConvergencePoint]] = doc("checkpoints in training order (null: none taken)", None)


# ----------------------------------------------------------------------------------------------- verdicts


@dataclass
class Check:
    """One test of a verdict rule, with the numbers it compared."""

    name: str = doc("what is tested")
    passed: bool = doc("whether it passed")
    core: bool = doc("core checks decide 'did not hold'; supporting ones only 'partly held'")
    detail: str = doc("the numbers compared")


@dataclass
class Verdict:
    """A claim, its rule, the checks and the verdict: held (every check), partly held (every core check, not
    every supporting one), did not hold (a core check failed), not measured (nothing to check)."""

    title: str = doc("section title")
    claim: str = doc("the claim tested")
    rule: str = doc("the rule in words")
    verdict: str = doc("held / partly held / did not hold / not measured")
    why: str = doc("one line: the numbers that decided")
    checks: list[Check] = doc("every check", factory=list)
