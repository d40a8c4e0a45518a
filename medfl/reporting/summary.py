"""``summary.json``: the machine-readable headline of a run."""

from __future__ import annotations

from typing import Any, cast

from medfl.config import RunConfig
from medfl.evaluation.stats import SiteEvalStats, pool_site_stats
from medfl.privacy.audit import AUDIT_SIGMA, AuditResult
from medfl.privacy.distributed import assumption, is_distributed, run_share
from medfl.privacy.dp import epsilon_from_history
from medfl.reporting.summary_schema import (
    Audit,
    Metrics,
    PersonalSummary,
    PooledSummary,
    PrivacySummary,
    SiteSummary,
    Summary,
)
from medfl.site.metrics import TrainMetrics
from medfl.site.releases import exact_moments
from medfl.tasks import task_for


def _site_privacy(cfg: RunConfig, t: TrainMetrics | None) -> dict[str, Any]:
    """The DP-SGD parameters a site reported, and every other accounted release, so that
    its ε can be recomputed from ``accountant_history`` with the named accountant."""
    if not cfg.privacy.enabled or t is None:
        return {"delta": None, "noise_multiplier": None, "sample_rate": None,
                "max_grad_norm": None, "accountant": None, "other_releases": [],
                "accountant_history": []}
    priors = list(t.prior_noise_multipliers)
    sgd = [t.noise_multiplier, t.sample_rate, t.steps]
    return {
        "delta": t.delta,
        "noise_multiplier": t.noise_multiplier,
        "sample_rate": t.sample_rate,
        "max_grad_norm": t.max_grad_norm,
        "accountant": cfg.privacy.accountant,
        "other_releases": [{"mechanism": "Gaussian, feature moments", "noise_multiplier": s,
                            "sample_rate": 1.0, "steps": 1} for s in priors],
        "accountant_history": [[s, 1.0, 1] for s in priors] + [sgd],
    }


#: how a site's two budgets combine for one patient (PRIVACY.md, "Two budgets")
COMPOSITION = ("parallel composition: a site's training rows and test rows are disjoint "
               "patients, so each patient's ε is the larger of the site's training ε and test "
               "ε, at the larger of their δs")


def site_test_epsilon(evaluation: SiteEvalStats | None,
                      report: dict[str, Any] | None) -> float | None:
    """A site's ε on its test rows this run, as its replies state it: the larger of its
    last monitoring reply's and its report release's ``test-epsilon`` (the report comes
    last); None when no reply stated one."""
    stated = [getattr(evaluation, "test_epsilon", None),
              (report or {}).get("test-epsilon")]
    values = [float(v) for v in stated if v is not None]
    return max(values) if values else None


def per_patient_epsilon(sites: list[SiteSummary]) -> dict[str, float | None]:
    """Each site's ε per patient this run: the larger of its training and test ε."""
    out: dict[str, float | None] = {}
    for s in sites:
        values = [v for v in (s.epsilon, s.test_epsilon) if v is not None]
        out[s.name] = max(values) if values else None
    return out


def non_dp_releases(cfg: RunConfig) -> list[str]:
    """What left the sites outside any DP mechanism in this run (see PRIVACY.md)."""
    out = ["training-set size per site (FedAvg weight)"]
    if cfg.privacy.test_epsilon == 0:
        out.append("exact test-set statistics (privacy.test-epsilon = 0, where the site's "
                   "policy allows it): the monitoring evaluations, the final report's cells "
                   "and explanation sums, without noise")
    if cfg.is_tabular and cfg.preprocessing.scaling == "federated" and exact_moments(cfg):
        out.insert(0, "clipped sums and sums of squares of the numeric features (once)")
    if cfg.evaluation.personal_epochs > 0:
        out.append("personalised evaluation: its test-set histogram is noised in the test "
                   "budget, but the copy of the global model it scores was fine-tuned on "
                   "the site's training rows without DP (the copy never leaves the site)")
    if not cfg.privacy.enabled:
        out.insert(0, "model updates (DP-SGD is off)")
    return out


def mechanisms(cfg: RunConfig) -> list[str]:
    """The privacy mechanisms this run applies, in words."""
    out = []
    if is_distributed(cfg):
        m = cfg.strategy.min_round_nodes
        out.append(f"distributed DP-SGD: one DP-SGD step per round at each site (Opacus, "
                   f"Poisson sampling, per-sample clipping) adding 1/√{m} of the Gaussian "
                   "noise; the secure sum of at least that many sites carries all of it")
    elif cfg.privacy.enabled:
        out.append("DP-SGD at each site (Opacus, Poisson sampling, per-sample clipping, "
                   "Gaussian noise)")
    if cfg.is_tabular and cfg.preprocessing.scaling == "federated" and not exact_moments(cfg):
        out.append("Gaussian mechanism on the feature moments (accounted)")
    if cfg.privacy.central_noise_multiplier > 0:
        out.append("central DP: server-side clipping of site updates and Gaussian noise on "
                   "their uniform average (Flower)")
    if cfg.privacy.test_epsilon > 0:
        every = cfg.evaluation.monitor_every
        monitoring = (f"monitoring evaluations every {every} rounds and at the last" if every
                      else "no monitoring evaluations")
        out.append(f"Gaussian mechanism on every test-set statistic ({monitoring}, one final "
                   "report per site), accounted in each site's test budget: ε ≤ "
                   f"{cfg.privacy.test_epsilon:g} per site and run")
    if cfg.privacy.audit:
        out.append("membership audit as two Gaussian loss histograms (σ = 10 each): the "
                   "training rows' in the training budget (planned into DP-SGD), the test "
                   "rows' in the test budget")
    out.append(f"k = {cfg.privacy.k_threshold}: a utility floor on the figures the server "
               "reports from pooled cells (the guarantee is DP)")
    return out


def audit_section(audits: dict[str, AuditResult], order: list[str]) -> Audit:
    """Loss-threshold membership inference per site, and the mean attack AUC."""
    sites = {name: {"attack_auc": a.attack_auc, "tpr_at_fpr_0.1": a.tpr_at_low_fpr,
                    "members": a.members, "non_members": a.non_members}
             for name in order if (a := audits.get(name)) is not None}
    aucs = [s["attack_auc"] for s in sites.values() if s["attack_auc"] is not None]
    return Audit(attack="loss threshold (Yeom et al. 2018), site train rows vs test rows",
                 sites=sites, mean_attack_auc=(sum(aucs) / len(aucs)) if aucs else None)


def build_summary(
    cfg: RunConfig,
    *,
    site_order: list[str],
    train: dict[str, TrainMetrics],
    evaluation: dict[str, SiteEvalStats],
    rounds_trained: dict[str, list[int]],
    run_name: str,
    audits: dict[str, AuditResult] | None = None,
    central: dict[str, Any] | None = None,
    personal: dict[str, SiteEvalStats] | None = None,
    report_stats: dict[str, dict[str, Any]] | None = None,
    class_weight: dict[str, Any] | None = None,
) -> Summary:
    """Per-site privacy and metrics, pooled metrics, and FLamby's mean per-site accuracy
    (over the sites that share it: ``sites_reported``).

    ``train`` holds each site's last train metrics (ε etc. are cumulative); ``evaluation``
    each site's statistics for the final global model; ``rounds_trained`` the rounds in
    which each site's update was aggregated; ``personal`` each site's statistics for its
    locally fine-tuned copy (personalised evaluation), reported beside the global ones;
    ``report_stats`` each site's report release as received (its ``test-epsilon``);
    ``class_weight`` how the positive class was weighted (:func:`class_weight_record`).
    """
    last_round = max((max(r) for r in rounds_trained.values() if r), default=0)
    sites = [_site(cfg, name, train.get(name), evaluation.get(name),
                   rounds_trained.get(name, []), personal) for name in site_order]
    for site in sites:
        site.test_epsilon = site_test_epsilon(evaluation.get(site.name),
                                              (report_stats or {}).get(site.name))
        if site.name in (audits or {}):
            _compose_audit(cfg, site)
    pooled = pool_site_stats(list(evaluation.values()))  # its counts are always ints
    # Sampled evaluation (fraction-evaluate < 1): the mean over the sites that evaluated
    # the final model; every site otherwise.
    sampled = cfg.strategy.fraction_evaluate < 1.0
    evaluated = [s for s in sites if s.name in evaluation] if sampled else sites
    return Summary(
        run_name=run_name,
        task=cfg.task.value,
        dataset=task_for(cfg).dataset_id(),
        strategy=cfg.strategy.name,
        model=cfg.model.name,
        rounds=last_round,
        rounds_planned=cfg.num_server_rounds,
        seed=cfg.seed,
        privacy=_privacy(cfg, sites, site_order, audits=audits, central=central),
        sites=sites,
        pooled=_pooled_summary(pooled),
        mean_site_accuracy=_site_mean([s.metrics for s in evaluated], "accuracy"),
        mean_site_dice=_site_mean([s.metrics for s in evaluated], "dice"),
        sites_evaluated=len(evaluated) if sampled else None,
        sites_reported=_sites_reporting(cfg, evaluated),
        class_weight=class_weight,
        personal=_personal(cfg, evaluated, personal) if personal else None,
    )


def _compose_audit(cfg: RunConfig, site: SiteSummary) -> None:
    """The audit's members' histogram (a Gaussian release of the training rows after
    training) joins the site's accounted releases and its training ε."""
    if not cfg.privacy.enabled or not site.accountant_history or site.delta is None:
        return
    site.other_releases.append({"mechanism": "Gaussian, audit members' loss histogram",
                                "noise_multiplier": AUDIT_SIGMA, "sample_rate": 1.0,
                                "steps": 1})
    site.accountant_history.append([AUDIT_SIGMA, 1.0, 1])
    history = [(float(a), float(b), int(c)) for a, b, c in site.accountant_history]
    site.epsilon = epsilon_from_history(history, delta=site.delta,
                                        accountant=cfg.privacy.accountant)
    if site.epsilon_local is not None:  # distributed DP: DP-SGD's steps at the site's share
        sgd, share = (site.noise_multiplier, site.sample_rate), run_share(cfg)
        site.epsilon_local = epsilon_from_history(
            [((s * share if (s, q) == sgd else s), q, n) for s, q, n in history],
            delta=site.delta, accountant=cfg.privacy.accountant)


def _site(cfg: RunConfig, name: str, t: TrainMetrics | None, e: SiteEvalStats | None,
          trained: list[int], personal: dict[str, SiteEvalStats] | None) -> SiteSummary:
    """One site's entry: sizes, privacy spent, rounds, metrics."""
    return SiteSummary(
        name=name,
        n_train=t.num_examples if t is not None else None,
        n_test=e.n if e else None,
        epsilon=t.epsilon if t is not None else None,
        epsilon_lifetime=t.epsilon_lifetime if t is not None else None,
        epsilon_local=t.epsilon_local if t is not None else None,
        steps=t.steps if t is not None else None,
        **_site_privacy(cfg, t),
        rounds_trained=len(trained),
        last_round_trained=max(trained) if trained else None,
        metrics=_metrics(e),
        personal_metrics=_metrics(personal.get(name)) if personal else None,
    )


def _guarantee(cfg: RunConfig) -> str:
    """The run's guarantee in one line: the training rows' and the test rows'."""
    train = ("sample-level (ε, δ)-DP per site for the model updates" if cfg.privacy.enabled
             else "none for the model updates (DP-SGD off)")
    if is_distributed(cfg):
        train += (" as the server sees them, in secure sums (privacy.distributed states the "
                  "assumption; each site's own update alone: epsilon_local)")
    test = ("(ε, δ)-DP per site for every test-set statistic" if cfg.privacy.test_epsilon > 0
            else "none for the test-set statistics (exact, privacy.test-epsilon = 0)")
    return f"{train}; {test}"


def _privacy(cfg: RunConfig, sites: list[SiteSummary], order: list[str], *,
             audits: dict[str, AuditResult] | None,
             central: dict[str, Any] | None) -> PrivacySummary:
    """The run's privacy block."""
    dp = cfg.privacy.enabled
    eps = [s.epsilon for s in sites if s.epsilon is not None]
    return PrivacySummary(
        dp_sgd=dp,
        guarantee=_guarantee(cfg),
        target_epsilon=cfg.privacy.target_epsilon if dp else None,
        target_delta=cfg.privacy.target_delta if dp else None,
        max_epsilon=max(eps) if eps else None,
        lifetime_epsilon_limit=cfg.privacy.lifetime_epsilon or None,
        secure_noise=cfg.privacy.secure_noise,
        k_threshold=cfg.privacy.k_threshold,
        feature_scaling=cfg.preprocessing.scaling if cfg.is_tabular else None,
        stats_noise_multiplier=cfg.preprocessing.stats_noise_multiplier,
        non_dp_releases=non_dp_releases(cfg),
        mechanisms=mechanisms(cfg),
        accountant=cfg.privacy.accountant if dp else None,
        central_dp=central,
        secure_aggregation=cfg.secure_aggregation.enabled,
        audit=audit_section(audits or {}, order),
        test_epsilon_target=cfg.privacy.test_epsilon,
        per_patient_epsilon=per_patient_epsilon(sites),
        composition=COMPOSITION,
        mode=cfg.privacy.mode,
        distributed=distributed_block(cfg),
    )


def distributed_block(cfg: RunConfig) -> dict[str, Any] | None:
    """Distributed DP's terms (``privacy.distributed``), None in local mode: the noise
    share each site adds, the fewest sites in a sum, the binding guarantee's assumption and
    where the unconditional one is reported (:mod:`medfl.privacy.distributed`)."""
    if not is_distributed(cfg):
        return None
    m = cfg.strategy.min_round_nodes
    return {"noise_share": run_share(cfg), "min_sites": m, "assumes": assumption(m),
            "epsilon_unconditional": ("per site, epsilon_local: holds even against a "
                                      "coordinator that unmasks one site")}


def _personal(cfg: RunConfig, sites: list[SiteSummary],
              personal: dict[str, SiteEvalStats]) -> PersonalSummary:
    """The personalised evaluation's headline, in the global block's terms."""
    pooled = pool_site_stats(list(personal.values()))  # its counts are always ints
    blocks = [s.personal_metrics for s in sites if s.personal_metrics is not None]
    return PersonalSummary(
        method=(f"each site fine-tunes the final global model for "
                f"{cfg.evaluation.personal_epochs} epoch(s) on its own training rows "
                "(no DP; the copy stays at the site) and evaluates it on its test split"),
        epochs=cfg.evaluation.personal_epochs,
        mean_site_accuracy=_site_mean(blocks, "accuracy"),
        mean_site_dice=_site_mean(blocks, "dice"),
        metrics=_pooled_metrics(pooled),
        auroc_sites_excluded=cast(int, pooled["auroc_sites_excluded"]),
    )


def _pooled_summary(pooled: dict[str, Any]) -> PooledSummary:
    """The ``global`` block from the sites' pooled statistics."""
    return PooledSummary(
        metrics=_pooled_metrics(pooled),
        n_test=cast(int, pooled["n"]),
        auroc_method=(
            "from the sum of the sites' noisy class-wise score histograms on the public "
            "grid (pairs in one bin count one half)"),
        auroc_sites_excluded=cast(int, pooled["auroc_sites_excluded"]),
        sites_suppressed=cast(int, pooled["sites_suppressed"]))


def _sites_reporting(cfg: RunConfig, sites: list[SiteSummary]) -> int:
    """How many of ``sites`` share the headline figure (the sites its mean averages)."""
    name = "dice" if task_for(cfg).segmentation else "accuracy"
    return sum(1 for s in sites if s.metrics.value(name) is not None)


def _site_mean(blocks: list[Metrics], name: str) -> float | None:
    """FLamby's unweighted mean over sites of one metric, over the sites that share it
    (a site withholds its accuracy when its correct or incorrect count is under k, as
    Switzerland's single negative patient requires); None if no site shares it."""
    values = [v for v in (b.value(name) for b in blocks) if v is not None]
    if not values:
        return None
    return sum(values) / len(values)


def _pooled_metrics(pooled: dict[str, Any]) -> Metrics:
    values = {"accuracy": pooled["accuracy"], "auroc": pooled["auroc"], "loss": pooled["loss"]}
    if pooled["dice"] is not None:
        values |= {"dice": pooled["dice"], "iou": pooled["iou"]}
    return Metrics(values)


def _metrics(e: SiteEvalStats | None) -> Metrics:
    if e is None:
        return Metrics({"accuracy": None, "auroc": None, "loss": None})
    values = {"accuracy": e.accuracy, "auroc": e.auroc, "loss": e.loss}
    if e.dice_sum is not None:
        values |= {"dice": e.dice, "iou": e.iou}
    return Metrics(values)
