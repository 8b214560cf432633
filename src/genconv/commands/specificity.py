"""``genconv specificity RUN --data NAME``: class specificity of single CDBN features, per layer (000 §4.4).

Writes ``DIR/specificity.json`` (per layer: summaries and per-feature AUC-PR / conditional entropy),
``DIR/specificity_entropy.png`` (Fig. 5), ``DIR/specificity_aucpr.png`` and ``DIR/specificity.md``.
Everything is validated and computed before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import click

from genconv.cli import cli
from genconv.errors import check


def _pm(mean, std) -> str:
    return "n/a (never active)" if mean is None else f"{mean:.3f} ± {std:.3f}"


def markdown_table(results: list[dict]) -> str:
    rows = ["| layer | features | never > 0.95 | H(class \\| f > 0.95) mean ± std [bits] | max H | "
            "AUC-PR best class mean ± std | chance |", "|---|---|---|---|---|---|---|"]
    for l, r in enumerate(results):
        rows.append(f"| {l + 1} | {r['n_features']} | {r['n_never_active']} | "
                    f"{_pm(r['entropy_mean'], r['entropy_std'])} | {r['max_entropy_bits']:.3f} | "
                    f"{_pm(r['auc_pr_best_mean'], r['auc_pr_best_std'])} | {r['auc_pr_chance_mean']:.3f} |")
    return "\n".join(rows)


@cli.command("specificity")
@click.argument("run", type=click.Path())
@click.option("--data", "data_name", required=True, help="labelled data set (e.g. mnist, digits, faces)")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", default=0, show_default=True, help="use only the first N examples (0 = all)")
@click.option("--regions", default=1, show_default=True,
              help="L: quantile features over L x L regions per group (footnote 10); 0 = every pooling unit")
@click.option("--quantile", default=1.0, show_default=True, help="q: region summary quantile (1 = max)")
@click.option("--threshold", default=0.95, show_default=True, help="feature 'on' above this (footnote 12)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--device", default="auto", show_default=True)
def specificity_cmd(run, data_name, split, limit, regions, quantile, threshold, out, device):
    """Class specificity of single features per layer: AUC-PR and H(class | feature > 0.95)."""
    import torch

    from genconv.commands.cdbn import load_data
    from genconv.evaluation import specificity as S
    from genconv.io import write_json, write_text
    from genconv.models.cdbn import CDBN

    check(limit >= 0, f"--limit must be >= 0, got {limit}")
    model = CDBN.load(run, device=device)            # refuses other kinds, corrupt or mismatched files
    prep = model.meta_.get("preprocessing", {})
    X, y = load_data(data_name, split, limit, whiten=prep.get("whiten", False), highpass=prep.get("highpass", 0.0),
                     normalize=prep.get("normalize", False))
    check(y is not None, f"data set {data_name} has no labels; specificity needs a labelled data set")
    if prep.get("scale", 1.0) != 1.0:                # e.g. the natural-image recipe's sqrt(0.1)
        X = X * float(prep["scale"])
    if prep.get("center", False):
        X = X - X.mean(dim=(1, 2, 3), keepdim=True)
    check(X.shape[1] == model.image_shape_[0],
          f"the model was trained on {model.image_shape_[0]}-channel images, {data_name} has {X.shape[1]}")
    model.net_.shapes(*X.shape[-2:])                # filter larger than the images -> clear error
    feats = S.layer_features(model, X.to(torch.float32), regions=regions, quantile=quantile)
    results = [S.specificity(F, y.numpy(), threshold) for F in feats]
    table = markdown_table(results)

    out = Path(out)
    write_json(out / "specificity.json", {"run": str(run), "data": data_name, "split": split,
                                          "regions": regions, "quantile": quantile, "layers": results})
    S.histogram_figure(results, out / "specificity_entropy.png", "entropy")
    S.histogram_figure(results, out / "specificity_aucpr.png", "auc")
    write_text(out / "specificity.md", f"# Class specificity of single features ({data_name} {split}, "
               f"{len(X)} images, {regions}x{regions} regions, quantile {quantile})\n\n{table}\n\n"
               "Lower conditional entropy = more class-specific (000 §4.4, Fig. 5: it falls from layer 1 to "
               "layer 2).\n")
    click.echo(table)
    click.echo(f"wrote {out / 'specificity.json'}")
