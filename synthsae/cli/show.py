"""What the commands print: rich tables and summary lines of the library's results (no computing here)."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from real.report import real_verdicts
from synthsae.cli.common import console
from synthsae.metrics.seed_budget import budget_sentence
from synthsae.report import verdicts


def num(x, nd: int = 3) -> str:
    """x to nd decimals ('-' when undefined)."""
    return "-" if x is None else f"{x:.{nd}f}"


def with_null(c) -> str:
    """'value (null baseline)' of a Compared number."""
    return "-" if c is None else f"{num(c.value)} (null {num(c.baseline)})"


def pm(stat, fmt: str = ".3f") -> str:
    """'mean ± std' of a Spread ('-' when undefined)."""
    if stat is None or stat.mean is None:
        return "-"
    return f"{stat.mean:{fmt}}±{stat.std:{fmt}}"


def print_truth_description(name: str, info: dict) -> None:
    table = Table(title=f"truth '{name}': d = {info['d']}, {info['n_components']} components")
    for col in ("rank", "atoms", "subspaces", "frames", "expected L0"):
        table.add_column(col, justify="right")
    for row in info["by_rank"]:
        table.add_row(str(row["rank"]), str(row["atoms"]), str(row["subspaces"]), str(row["frames"]), f"{row['expected_l0']:.3f}")
    console.print(table)
    console.print(
        f"expected L0 {info['expected_l0']:.2f} (target {info['target_l0']:g}); total rank {info['total_rank']}; "
        f"superposition ratio (total rank / d) {info['superposition_ratio']:.2f}"
    )
    if info["blocks"]:
        n_orth = sum(b["orthogonal"] for b in info["blocks"])
        console.print(
            f"{len(info['blocks'])} planted subspaces ({n_orth} orthogonal to all else, "
            f"{len(info['blocks']) - n_orth} in superposition); firing probabilities "
            f"{min(b['prob'] for b in info['blocks']):.3f}..{max(b['prob'] for b in info['blocks']):.3f}"
        )


def print_analysis(res) -> None:
    """Rich summary tables of an AnalysisResult."""
    s, st, sp, uc = res.settings, res.stability, res.span_reproducibility, res.unstable_clusters
    t = Table(title=f"{s.seeds} seeds x {s.d_sae} latents, d = {s.d_in}; match {s.match}, tau {s.tau}; over {st.over} latents")
    t.add_column("metric")
    t.add_column("value (null: rotated seeds)", justify="right")
    t.add_row("mean stability", with_null(st.mean))
    t.add_row("mean soft stability", with_null(st.soft_mean))
    t.add_row(f"stable (>= {s.stable_cutoff})", with_null(st.frac_stable))
    t.add_row(f"unstable (<= {s.unstable_cutoff})", with_null(st.frac_unstable))
    t.add_row("stability sweep (tau: mean)", "  ".join(f"{r.tau:g}: {num(r.mean_stability, 2)}" for r in st.sweep))
    t.add_row(f"span reproducibility k=1..{len(sp.k)}, unstable", "  ".join(num(v.value, 2) for v in sp.unstable)
              + f"  (null {'  '.join(num(v.baseline, 2) for v in sp.unstable)})")
    t.add_row("unstable latents in multi-seed clusters",
              f"{with_null(uc.frac_in_multi_seed)}; {uc.n_clusters_multi_seed} clusters, {uc.n_unstable} unstable latents")
    if res.frequency is not None:
        t.add_row("Spearman(log freq, stability)", with_null(res.frequency.spearman))
        t.add_row("dead latents", f"{res.frequency.n_dead} ({num(res.frequency.frac_dead, 3)})")
    tr = res.truth
    if tr is not None and tr.atoms is not None:
        t.add_row("atoms: MCC (null: random dictionary)", with_null(tr.atoms.mcc))
        t.add_row("atoms: recovered at cos >= 0.9", with_null(tr.atoms.frac_recovered))
        t.add_row("atom latents: stability", num(tr.atoms.atom_latent_stability))
        t.add_row("latents in rank >= 4 blocks: stability", num(tr.block_latent_stability_rank_ge_4))
    if res.truth_filter is not None:
        tf = res.truth_filter
        t.add_row("stability AUROC for true latents", f"{with_null(tf.auroc)}; 'stable': precision {num(tf.precision.value)} "
                  f"(base rate {num(tf.base_rate)}), recall {num(tf.recall.value)}")
    if res.seed_budget is not None:
        sb = res.seed_budget
        t.add_row("seed budget", budget_sentence(sb, sb.rows[0].n) + f"; within +-{sb.target} from n = "
                  f"{sb.smallest_n_within_target if sb.smallest_n_within_target is not None else '- (none < S)'}")
    console.print(t)
    if tr is not None and tr.blocks:
        align = {r.block: r for r in tr.cluster_alignment.per_block} if tr.cluster_alignment else {}
        bt = Table(title="planted subspaces: stability beside the rotation null (o = orthogonal, s = superposed)")
        for col in ("blk", "r", "geo", "p", "n/seed", "recov", "stab", "null", "span k1/k4", "cluster rank"):
            bt.add_column(col, justify="right")
        for b in tr.blocks:
            n, sr, al = b.n_assigned_per_seed, b.span_reproducibility, align.get(b.block)
            bt.add_row(str(b.block), str(b.rank), "o" if b.orthogonal else "s", f"{b.prob:.3f}", f"{sum(n) / len(n):.1f}",
                       num(b.recovery.value, 2), num(b.stability, 2), num(b.rotation_null, 2),
                       "/".join(num(sr[k], 2) for k in (0, len(sr) - 1)),
                       "-" if al is None or al.largest_cluster_energy_rank_95 is None else str(al.largest_cluster_energy_rank_95))
        console.print(bt)
        console.print(f"recov = subspace recovery (chance r/d = {tr.blocks[0].recovery.baseline:.3f} at r = {tr.blocks[0].rank}); "
                      "null = rotation null; cluster rank = 95%-energy rank of the block's largest unstable cluster")


def print_atlas(res) -> None:
    """A few lines of an AtlasResult: feature counts, ranks, EV split, CE split, held-out judgement, planted blocks,
    group stability."""
    console.print(f"{res.n_features} features from {res.n_seeds} seeds: {res.n_stable_rank1} stable rank-1, "
                  f"{res.n_subspaces} subspaces (ranks {res.rank_histogram}), {res.n_remainder_latents} latents "
                  f"left irreproducible; mean feature stability {num(res.mean_feature_stability)}", highlight=False)
    if res.ev_share_features is not None:
        console.print(f"EV share: features {num(res.ev_share_features)}, remainder {num(res.ev_share_remainder)}; "
                      f"EV-weighted feature stability {num(res.ev_weighted_feature_stability)}", highlight=False)
    if res.ce is not None:
        c = res.ce
        console.print(f"CE (nats): full {num(c.ce_full.mean)} (recovered {num(c.ce_recovered_full.mean)}), features only "
                      f"{num(c.ce_features_only.mean)}, remainder only {num(c.ce_remainder_only.mean)}; CE share of the "
                      f"features {num(c.ce_share_features.mean)}", highlight=False)
    h = res.heldout
    if h is not None:
        mn = h.mean
        console.print(f"held-out halves: feature stability {num(mn.feature_stability_heldout)} "
                      f"(EV-weighted {num(mn.feature_stability_heldout_ev_weighted)}) vs latent stability "
                      f"{num(mn.latent_stability_heldout)} (tau {h.latent_tau})", highlight=False)
        if h.goal is not None:
            g = h.goal
            console.print(f"goal (stability >= {g.feature_stability_goal} with >= {g.ev_goal} of EV): "
                          f"{'held' if g.held else 'did not hold'}", highlight=False)
    for b in res.planted_blocks:
        console.print(f"block {b.block} (rank {b.rank}, {'orthogonal' if b.orthogonal else 'superposed'}): "
                      f"best feature {b.best_feature} rank {b.feature_rank if b.feature_rank is not None else '-'} "
                      f"overlap {num(b.overlap)} stability {num(b.feature_stability)}", highlight=False)
    if res.group_stability is not None:
        console.print(f"group stability {num(res.group_stability.mean)} over {res.group_stability.n_live_groups} live groups",
                      highlight=False)


def print_ablation(run_dir: Path, res) -> None:
    """The ablation table (share of cost per group, per unit of activation mass) and its legend."""
    table = Table(title=f"ablation of {run_dir} (tau {res.tau}, {res.match}; mean±std over seeds)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("group", no_wrap=True)
    for col in ("n", "mass", "ΔFVU", "ΔKL", "FVU/m", "KL/m"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, row in res.groups.items():
        short = name.replace("random_size_", "rnd-size ").replace("random_freq_", "rnd-freq ").replace("unstable", "unst.")
        size = "-" if row.size.mean is None else f"{row.size.mean:.0f}"
        fv, pr = row.costs["fvu"], row.costs.get("pred")
        table.add_row(short, size, pm(row.mass_share, ".2f"), pm(fv.share, ".2f"), pm(pr.share if pr else None, ".2f"),
                      pm(fv.share_per_mass_share, ".2f"), pm(pr.share_per_mass_share if pr else None, ".2f"))
    console.print(table)
    console.print("mass: share of activation mass; ΔFVU, ΔKL: share of what zeroing every latent costs; "
                  "FVU/m, KL/m: that share over the mass share (1 = in proportion to mass); n: latents per seed")
    console.print(f"full reconstruction: FVU {pm(res.baseline['fvu'], '.4f')}, KL {pm(res.baseline.get('pred'), '.4f')}; "
                  f"every latent zeroed: FVU {pm(res.all_ablated['fvu'], '.4f')}")


def print_pooling(run_dir: Path, res) -> None:
    """The pooling table (single seeds, bagging, pools of seed halves) and its legend."""
    sing = res.single
    table = Table(title=f"pooling of {run_dir} (tau {res.tau}, {res.match}; mean±std)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("dictionary", no_wrap=True)
    for col in ("width", "EV", "L0", "stab. A-B", "null", "vs held-out"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row("single seeds", str(res.base_width), pm(sing.ev), pm(sing.l0, ".2f"),
                  pm(sing.stability_between_halves), pm(sing.stability_null), pm(sing.stability_vs_heldout))
    if res.bagging is not None:
        bg = res.bagging
        table.add_row("bagging", str(bg.width), pm(bg.ev_halves), pm(bg.l0_halves, ".1f"),
                      pm(bg.stability_between_halves), pm(bg.stability_null), "-")
    for name, row in res.variants.items():
        pa = row.pools
        w = "/".join(str(pa[k].width) for k in ("A", "B") if k in pa) or str(pa["all"].width)
        ev = pm(row.ev_halves) if row.ev_halves else f"{pa['all'].ev:.3f}"
        l0 = pm(row.l0_halves, ".2f") if row.l0_halves else f"{pa['all'].l0:.2f}"
        table.add_row(f"{name}{' (primary)' if row.role == 'primary' else ''}", w, ev, l0, pm(row.stability_pool_vs_pool),
                      pm(row.stability_null), pm(row.stability_vs_heldout))
    console.print(table)
    console.print("rows: single seeds, bagging (each half's dictionaries concatenated), then pools of disjoint seed halves "
                  "A and B (width A/B); stab. A-B: share of live latents matched in the other half's dictionary; null: the "
                  "same against a randomly rotated partner; vs held-out: mean fraction of the other half's single seeds a "
                  "latent is matched in")


def print_train_summary(cfg, summary: dict, out: Path) -> None:
    """One line of a finished training: seeds, steps, time, eval FVU / L0 / never-fired over seeds."""
    ev = summary["eval"]
    S = len(ev["fvu"])
    console.print(
        f"trained {S} seeds of {cfg.sae.variant} (d_sae {cfg.sae.d_sae}) for {summary['steps']} steps in "
        f"{summary['seconds']:.1f}s; eval FVU {sum(ev['fvu']) / S:.4f} (min {min(ev['fvu']):.4f}, max {max(ev['fvu']):.4f}), "
        f"L0 {sum(ev['l0']) / S:.2f}, never-fired {sum(ev['never_fired_fraction']) / S:.3f} -> {out}",
        highlight=False,
    )


def verdict_table(run_dir: Path, found: list) -> None:
    """The claims of a run and their verdicts, coloured."""
    table = Table(title=f"claims in {run_dir}")
    for col in ("claim", "verdict", "numbers"):
        table.add_column(col)
    colour = {"held": "green", "partly held": "yellow", "did not hold": "red", "not measured": "dim"}
    for v in found:
        table.add_row(v.title, f"[{colour[v.verdict]}]{v.verdict}[/]", v.why)
    console.print(table)


def print_verdicts(run_dir: Path) -> None:
    """The verdict table of a synthetic run (or an analysis folder)."""
    verdict_table(run_dir, verdicts(run_dir))


def print_real_verdicts(run_dir: Path) -> None:
    """The verdict table of a real run."""
    verdict_table(run_dir, real_verdicts(run_dir))
