"""Cross-seed metrics as plain functions on tensors (definitions, nulls and rules: docs/metrics.md).

matching      unit_rows, maxcos, maxcos_both, topk_cos, hungarian (dense / sparse candidate graph), strict_match
stability     pair_scores [S,S,m], stability, soft_stability, classify, threshold_sweep, random_dictionary_baseline
recovery      atom_recovery, atom_latents, block_projection, block_members, subspace_recovery (+ baseline)
subspaces     subspace_overlap (+ baseline), span_projection, span_reproducibility, cluster_by_span,
              describe_clusters, effective_rank, rotation_null, random_points_null
frequency     firing_frequency, FrequencyCounter, spearman, frequency_vs_stability
analyze       analyze / analyze_with_latents: everything for S SAEs as one typed AnalysisResult (rotated-seeds null)
run_analysis  analyze_run (a run from disk), write_analysis (metrics.json key "analysis")
"""
